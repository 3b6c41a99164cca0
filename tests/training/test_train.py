"""train_and_evaluate end to end: outputs, learning, exact resume, and bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ban_jax.errors import UserError
from ban_jax.training import train
from ban_jax.training import writers
from configs import wiki

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flat(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flat(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def _cli(config, workdir):
  """The command line that runs `config` (given as overrides of its preset)."""
  base = dict(_flat(wiki.get_config(config.preset).to_dict()))
  flags = [f"--config.{k}={v}" for k, v in _flat(config.to_dict()) if base.get(k) != v]
  return [sys.executable, "-m", "ban_jax.main", f"--config=configs/wiki.py:{config.preset}",
          f"--workdir={workdir}", *flags]


def _losses(workdir):
  return {r["step"]: r["train/loss"] for r in writers.read_metrics(workdir) if "train/loss" in r}


def test_run_writes_everything_and_learns(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  final = train.train_and_evaluate(
      tiny_config(train__steps=40, eval__every_steps=20, checkpoint__every_steps=20,
                  optimizer__learning_rate=1e-2), workdir)
  files = set(os.listdir(workdir))
  assert {"checkpoints", "tensorboard", "metrics.jsonl", "loss_curve.png", "sample.txt",
          "config.json", "final_metrics.json"} <= files
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(f"{workdir}/tensorboard"))
  assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["20", "40"]
  with open(f"{workdir}/loss_curve.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(f"{workdir}/sample.txt") as f:
    assert f.read().startswith("The history of ")
  losses = _losses(workdir)
  assert losses[40] < losses[5] - 0.5          # from ~ln(259) = 5.6 nats towards byte statistics
  assert 0 < final["eval/bits_per_byte"] < 8
  records = writers.read_metrics(workdir)
  assert [r["step"] for r in records if "eval/bits_per_byte" in r] == [20, 40]
  assert all("perf/tokens_per_sec" in r for r in records if "train/loss" in r)


# "wells" resumes everything "off" does plus the selection state; "off" runs with the slow
# tests to keep the default suite near 15 minutes on 2 cores.
@pytest.mark.parametrize("wells_mode", [pytest.param("off", marks=pytest.mark.slow), "wells"])
def test_kill_and_resume_reproduces_the_uninterrupted_run_bitwise(tiny_config, tmp_path,
                                                                  wells_mode):
  # With wells on, the wells, the loss EMA and the two pending well draws must all come back.
  config = tiny_config(train__steps=60, train__log_every=1, checkpoint__every_steps=10,
                       eval__every_steps=100, wells__mode=wells_mode, wells__warmup_steps=2,
                       wells__threshold=0.0)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  straight = str(tmp_path / "straight")
  subprocess.run(_cli(config, straight), cwd=REPO, env=env, check=True, capture_output=True)

  broken = str(tmp_path / "broken")
  proc = subprocess.Popen(_cli(config, broken), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt_dir = os.path.join(broken, "checkpoints")
  deadline = time.time() + 300
  while not os.path.isdir(os.path.join(ckpt_dir, "10")) and proc.poll() is None:
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL      # killed mid-run, not finished
  # A checkpoint written after step 10 before the kill landed is dropped: resume from 10.
  for name in os.listdir(ckpt_dir):
    if name.isdigit() and int(name) > 10:
      shutil.rmtree(os.path.join(ckpt_dir, name))

  resumed = subprocess.run(_cli(config, broken), cwd=REPO, env=env, check=True,
                           capture_output=True, text=True)
  assert "at step 10" in resumed.stderr
  want, got = _losses(straight), _losses(broken)
  assert sorted(want) == list(range(1, 61))
  for step in range(1, 61):
    assert got[step] == want[step], step     # bitwise: same data order, keys and arithmetic
  if wells_mode == "wells":
    injected = {r["step"]: r["train/injected"] for r in writers.read_metrics(straight)
                if "train/injected" in r}
    assert sum(injected[s] for s in range(11, 61)) > 0   # wells were really re-injected


def test_unwritable_workdir(tiny_config, tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir()
  os.chmod(locked, 0o500)
  try:
    if os.access(locked, os.W_OK):
      pytest.skip("running as a user who can write anywhere")
    with pytest.raises(UserError, match="not writable"):
      train.train_and_evaluate(tiny_config(), str(locked / "run"))
  finally:
    os.chmod(locked, 0o700)


def test_workdir_under_a_file(tiny_config, tmp_path):
  (tmp_path / "afile").write_text("x")
  with pytest.raises(UserError, match="not writable"):
    train.train_and_evaluate(tiny_config(), str(tmp_path / "afile" / "run"))


def test_missing_dump_leaves_no_workdir(tiny_config, tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match="no MediaWiki dump matches"):
    train.train_and_evaluate(
        tiny_config(data__source="dump", data__dump_dir=str(tmp_path),
                    data__tfds_data_dir=str(tmp_path / "tfds")), str(workdir))
  assert not workdir.exists()


def test_unreachable_tfds_dataset_is_one_clear_error(tiny_config, tmp_path):
  with pytest.raises(UserError, match="cannot be read.*source=bundled"):
    train.train_and_evaluate(
        tiny_config(data__source="tfds", data__tfds_name="wikipedia/20231101.en",
                    data__tfds_data_dir=str(tmp_path / "empty")), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_resuming_with_another_model_is_refused(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(train__steps=10), workdir)
  before = sorted(os.listdir(workdir))
  with pytest.raises(UserError, match=r"model\.d_model=32.*model\.d_model=48"):
    train.train_and_evaluate(tiny_config(train__steps=20, model__d_model=48), workdir)
  # Without config.json the checkpoint's own shapes still catch it.
  os.remove(os.path.join(workdir, "config.json"))
  with pytest.raises(UserError, match="different model"):
    train.train_and_evaluate(tiny_config(train__steps=20, model__d_model=48), workdir)
  assert sorted(os.listdir(workdir)) == sorted(set(before) - {"config.json"})
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10"]


def test_the_attention_implementation_may_change_on_resume(tiny_config, tmp_path):
  # It chooses how attention is computed, not what; a run saved before the field existed
  # (its config.json without model.attention_options) resumes too.
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(train__steps=10), workdir)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    saved = json.load(f)
  del saved["model"]["attention_options"]
  with open(path, "w") as f:
    json.dump(saved, f)
  config = tiny_config(train__steps=12)
  config.model.attention_options.implementation = "xla"
  train.train_and_evaluate(config, workdir)
  assert "12" in os.listdir(os.path.join(workdir, "checkpoints"))


@pytest.mark.parametrize("field,value,match", [
    ("model__attention", "cosine", "model.attention"),
    ("train__steps", 0, "train.steps"),
    ("model__num_kv_heads", 3, "multiple of"),
    ("model__name", "rnn", "model.name"),
    ("mesh__data", 3, "does not fit"),
])
def test_bad_config_values(tiny_config, tmp_path, field, value, match):
  with pytest.raises(UserError, match=match):
    train.train_and_evaluate(tiny_config(**{field: value}), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_presets_validate():
  for preset in wiki.PRESETS:
    from ban_jax import config_validation  # pylint: disable=g-import-not-at-top
    config_validation.validate(wiki.get_config(preset))
  with pytest.raises(ValueError, match="unknown preset"):
    wiki.get_config("no_such_preset")


def test_ban_trains_through_the_system_and_draws_its_plots(tiny_config, tmp_path):
  config = tiny_config(train__steps=30, eval__every_steps=30, optimizer__learning_rate=1e-2)
  config.model = wiki.get_config("ban").model
  config.model.update(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                      num_branches=3, attractor_steps=3, dtype="float32", attention="gravity")
  workdir = str(tmp_path / "ban")
  train.train_and_evaluate(config, workdir)
  records = writers.read_metrics(workdir)
  assert any("focus_usage_2" in k for r in records for k in r)
  assert os.path.exists(os.path.join(workdir, "focus_usage.png"))
  assert os.path.exists(os.path.join(workdir, "mass_heatmap.png"))
  losses = _losses(workdir)
  assert losses[30] < losses[5]


@pytest.mark.slow
def test_quickstart_smoke_preset_end_to_end(tfds_dir, cache_dir, tmp_path):
  """The README's first command (with this session's dataset dir)."""
  workdir = tmp_path / "smoke"
  subprocess.run([sys.executable, "-m", "ban_jax.main", "--config=configs/wiki.py:smoke",
                  f"--workdir={workdir}", f"--config.data.tfds_data_dir={tfds_dir}",
                  f"--config.data.cache_dir={cache_dir}"], cwd=REPO, check=True,
                 capture_output=True)
  with open(workdir / "final_metrics.json") as f:
    final = json.load(f)
  assert final["eval/bits_per_byte"] < 4.0      # from 8 bits/byte at chance
  for name in ("loss_curve.png", "sample.txt", "metrics.jsonl", "focus_usage.png"):
    assert (workdir / name).exists()
