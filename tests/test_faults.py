"""The fault matrix: kills, preemption, corrupt checkpoints, divergence and bad input.

"Identical" compares the final parameters bitwise and every metric record except wall-clock
timings (perf/*). The fast rows run by default; `pytest -m slow` adds the rest.
"""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ban_jax import formats
from ban_jax.errors import UserError
from ban_jax.training import checkpoints
from ban_jax.training import steps
from ban_jax.training import train
from ban_jax.training import writers
from configs import wiki

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# log_every does not divide every_steps, so checkpoints carry unlogged metrics.
SETTINGS = {"train.steps": 30, "train.log_every": 4, "checkpoint.every_steps": 5,
            "checkpoint.keep": 10, "eval.every_steps": 10}


def _config(tfds_dir, cache_dir, **extra):
  c = wiki.get_config("tiny")
  c.data.tfds_data_dir, c.data.cache_dir = tfds_dir, cache_dir
  for dotted, value in {**SETTINGS, **extra}.items():
    block, field = dotted.split(".")
    c[block][field] = value
  return c


def _cli(workdir, tfds_dir, cache_dir, *overrides):
  flags = [f"--config.{k}={v}" for k, v in SETTINGS.items()]
  return [sys.executable, "-m", "ban_jax.main", "--config=configs/wiki.py:tiny",
          f"--workdir={workdir}", f"--config.data.tfds_data_dir={tfds_dir}",
          f"--config.data.cache_dir={cache_dir}", *flags, *overrides]


ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _metrics(workdir):
  """Every record of metrics.jsonl in file order, wall-clock timings dropped."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")}
            for line in f]


def assert_identical(workdir, reference):
  want, got = _metrics(reference), _metrics(workdir)
  assert [r["step"] for r in got] == [r["step"] for r in want]   # one record per logged step
  assert got == want
  ckpt = lambda w: os.path.join(w, "checkpoints")
  (p_want, s_want), (p_got, s_got) = (checkpoints.read_params(ckpt(w)) for w in (reference,
                                                                              workdir))
  assert s_got == s_want
  for a, b in zip(jax.tree.leaves(p_want), jax.tree.leaves(p_got), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def reference(tfds_dir, cache_dir, tmp_path_factory):
  """The uninterrupted run, every step saved by the schedule (5, 10, ..., 30)."""
  workdir = str(tmp_path_factory.mktemp("faults") / "straight")
  train.train_and_evaluate(_config(tfds_dir, cache_dir), workdir)
  return workdir


def _array_file(step_dir):
  files = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, "state"))
           for n in ns if os.sep + "d" + os.sep in os.path.join(r, n) + os.sep]
  return max(files, key=os.path.getsize)


def _truncate_array(step_dir):
  path = _array_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def _truncate_iterator(step_dir):
  (name,) = [n for n in os.listdir(os.path.join(step_dir, "data")) if n.endswith(".json")]
  path = os.path.join(step_dir, "data", name)
  os.truncate(path, os.path.getsize(path) // 2)


def _garble_array(step_dir):
  path = _array_file(step_dir)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(random.Random(0).randrange(256) for _ in range(64)))


@pytest.mark.parametrize("corrupt", [
    _truncate_array,
    pytest.param(_truncate_iterator, marks=pytest.mark.slow),
    pytest.param(_garble_array, marks=pytest.mark.slow),
], ids=["truncated_array", "truncated_iterator_json", "random_bytes"])
def test_corrupt_newest_checkpoint_falls_back_and_continues_identically(
    reference, tfds_dir, cache_dir, tmp_path, caplog, corrupt):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  for step in (25, 30):                      # as if killed after saving step 20
    shutil.rmtree(os.path.join(ckpt_dir, str(step)))
  assert os.path.exists(os.path.join(ckpt_dir, "20", "ban_jax_manifest.json"))
  corrupt(os.path.join(ckpt_dir, "20"))
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(_config(tfds_dir, cache_dir), workdir)
  warnings = [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]
  assert len(warnings) == 1 and "step 20" in warnings[0], warnings
  assert os.listdir(os.path.join(ckpt_dir, "corrupt")) == ["20"]   # kept, not deleted
  assert_identical(workdir, reference)


@pytest.mark.slow
def test_checkpoint_without_manifest_restores(reference, tfds_dir, cache_dir, tmp_path):
  """An older run's checkpoints (or a crash between commit and manifest) still resume."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  for step in (25, 30):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  os.remove(os.path.join(workdir, "checkpoints", "20", "ban_jax_manifest.json"))
  train.train_and_evaluate(_config(tfds_dir, cache_dir), workdir)
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "corrupt"))
  assert_identical(workdir, reference)


def _start_and_signal(cmd, sig, delay):
  """Starts `cmd`, sends `sig` `delay` s after its metrics file appears (the loop has begun)."""
  workdir = cmd[4].split("=", 1)[1]
  proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not os.path.exists(os.path.join(workdir, "metrics.jsonl")) and proc.poll() is None:
    assert time.time() < deadline
    time.sleep(0.01)
  time.sleep(delay)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=300)
  return proc.returncode, stderr


def test_sigterm_saves_exits_zero_and_resumes_identically(reference, tfds_dir, cache_dir,
                                                          tmp_path):
  workdir = str(tmp_path / "run")
  cmd = _cli(workdir, tfds_dir, cache_dir)
  code, stderr = _start_and_signal(cmd, signal.SIGTERM, 0.3)
  assert code == 0, stderr[-3000:]
  assert "stopped by SIGTERM at step" in stderr, stderr[-3000:]
  stopped = int(stderr.split("stopped by SIGTERM at step ")[1].split(";")[0])
  assert stopped < 30 and str(stopped) in os.listdir(os.path.join(workdir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "final_metrics.json"))
  subprocess.run(cmd, cwd=REPO, env=ENV, check=True, capture_output=True)
  assert_identical(workdir, reference)


@pytest.mark.slow
def test_three_kills_at_random_times_then_finish(reference, tfds_dir, cache_dir, tmp_path):
  workdir = str(tmp_path / "run")
  cmd = _cli(workdir, tfds_dir, cache_dir)
  rng = random.Random(1)
  for _ in range(3):
    if os.path.exists(os.path.join(workdir, "final_metrics.json")):
      break
    code, _ = _start_and_signal(cmd, signal.SIGKILL, rng.uniform(0.5, 3.0))
    assert code in (-signal.SIGKILL, 0)
  subprocess.run(cmd, cwd=REPO, env=ENV, check=True, capture_output=True)
  assert_identical(workdir, reference)


def _unshare_works():
  try:
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
  except OSError:
    return False


FULL_DISK = """
set -u
mount -t tmpfs -o size=1000k tmpfs "$MNT"
"$@" > "$OUT/first.log" 2>&1; echo $? > "$OUT/first.rc"
ls "$MNT/run/checkpoints" > "$OUT/left.txt"
mount -o remount,size=16m "$MNT"
"$@" > "$OUT/second.log" 2>&1; echo $? > "$OUT/second.rc"
cp -r "$MNT/run" "$OUT/run"
"""


@pytest.mark.parametrize("save", ["async", pytest.param("sync", marks=pytest.mark.slow)])
def test_full_disk_stops_in_one_line_and_a_rerun_resumes_exactly(reference, tfds_dir, cache_dir,
                                                                 tmp_path, save):
  """A real full disk: the workdir on a 1000 KiB tmpfs, mounted in a private user and mount
  namespace (no root needed), fills at the fourth checkpoint; then it grows and the same
  command runs again. Without user namespaces the injected rows below cover the same paths."""
  if not _unshare_works():
    pytest.skip("no user namespaces here (unshare -rm): the injected full-disk rows stand in")
  mnt, out = tmp_path / "mnt", tmp_path / "out"
  mnt.mkdir(), out.mkdir()
  cmd = _cli(str(mnt / "run"), tfds_dir, cache_dir,
             f"--config.checkpoint.async_save={save == 'async'}")
  subprocess.run(["unshare", "-rm", "bash", "-c", FULL_DISK, "full_disk", *cmd], cwd=REPO,
                 env=dict(ENV, MNT=str(mnt), OUT=str(out)), check=True, timeout=600)
  first = (out / "first.log").read_text()
  errors = [line for line in first.splitlines() if line.startswith("error:")]
  assert (out / "first.rc").read_text().strip() == "2", first[-3000:]
  assert len(errors) == 1 and "no space left on device while saving checkpoint step" in errors[0]
  # orbax's own error logs of the failure are dropped (main.py); what may remain are
  # tensorstore callbacks that race orbax's closing event loop ("Event loop is closed"),
  # printed by the library, never a traceback through ban_jax.
  assert "ban_jax/" not in first.split("error:")[0].split("Traceback", 1)[-1], first[-3000:]
  failed = int(errors[0].split("checkpoint step ")[1].split(" ")[0])
  newest = int(errors[0].split("the newest checkpoint is step ")[1].split(" ")[0])
  left = (out / "left.txt").read_text().split()
  # The failed save is no step a resume could trust: only orbax's temporary folder is left.
  assert max(int(d) for d in left if d.isdigit()) == newest < failed, left
  assert (out / "second.rc").read_text().strip() == "0", (out / "second.log").read_text()[-3000:]
  assert f"resuming from its checkpoint at step {newest}" in (out / "second.log").read_text()
  assert_identical(str(out / "run"), reference)
  assert not os.path.exists(out / "run" / "ban_jax.lock")


def _failing_checkpoint_save(monkeypatch, step):
  """Fails orbax's save of `step` as tensorstore does on a full disk (the layer below ours)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  honest = ocp.CheckpointManager.save

  def save(self, at, *args, **kw):
    if at == step:
      raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "params" in OCDBT database: Failed '
                       f"to write 5 bytes: No space left on device [os_error_code='28']")
    return honest(self, at, *args, **kw)
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def _failing_metrics_write(monkeypatch, step):
  """Fails the metrics file's write of `step`'s record with ENOSPC after half the line."""
  import builtins  # pylint: disable=g-import-not-at-top
  import errno  # pylint: disable=g-import-not-at-top
  honest_open = builtins.open

  class Full:
    def __init__(self, f):
      self._f = f

    def write(self, text):
      if text.startswith(f'{{"step": {step},'):
        self._f.write(text[:len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
      return self._f.write(text)

    def __getattr__(self, name):
      return getattr(self._f, name)

  def fake_open(path, mode="r", *args, **kw):
    f = honest_open(path, mode, *args, **kw)
    return Full(f) if str(path).endswith("metrics.jsonl") and "a" in mode else f
  monkeypatch.setattr(writers, "open", fake_open, raising=False)


@pytest.mark.parametrize("fail,where,newest", [
    (_failing_checkpoint_save, "saving checkpoint step 20", 15),
    (_failing_metrics_write, "writing the metrics of step 24", 20),
], ids=["checkpoint_save", "metrics_write"])
def test_full_disk_injected_stops_with_the_newest_checkpoint(reference, tfds_dir, cache_dir,
                                                             tmp_path, monkeypatch, fail,
                                                             where, newest):
  """The same rows without a small filesystem: the write fails at the lowest layer the code
  owns (the call into orbax, the metrics file object)."""
  workdir = str(tmp_path / "run")
  with monkeypatch.context() as m:
    fail(m, 20 if fail is _failing_checkpoint_save else 24)
    with pytest.raises(UserError) as e:
      train.train_and_evaluate(_config(tfds_dir, cache_dir), workdir)
  message = str(e.value)
  assert message.startswith(f"no space left on device while {where}"), message
  assert f"the newest checkpoint is step {newest} " in message, message
  assert not os.path.exists(os.path.join(workdir, "ban_jax.lock"))
  train.train_and_evaluate(_config(tfds_dir, cache_dir), workdir)
  assert_identical(workdir, reference)


HOLDER = """
import sys, time
from ban_jax.training import lock
lock.WorkdirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_run_in_a_held_workdir_stops_until_the_holder_is_gone(reference, tfds_dir,
                                                                      cache_dir, tmp_path):
  """Two real processes: a holder of the lock, then the command line run in its workdir."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    cmd = _cli(str(workdir), tfds_dir, cache_dir)
    out = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
    assert f"in use by another run (pid {holder.pid} on host" in errors[0], errors
    assert os.listdir(workdir) == ["ban_jax.lock"]      # nothing written beside it
  finally:
    holder.kill()
    holder.wait()
  out = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"its holder (pid {holder.pid} on host" in out.stderr and "no longer running" in (
      out.stderr)
  assert not os.path.exists(workdir / "ban_jax.lock")
  assert_identical(str(workdir), reference)


def test_preemption_sync_point_stops_all_hosts_at_its_step(monkeypatch):
  """The multi-host path (no TPU here): JAX's sync point, replaced, decides the step."""
  from ban_jax.training import preemption  # pylint: disable=g-import-not-at-top
  asked = []
  monkeypatch.setattr(preemption.multihost_utils, "reached_preemption_sync_point",
                      lambda step: asked.append(step) or step == 7)
  with preemption.Preemption(use_sync_point=True) as stop:
    assert [stop.should_stop(s) for s in range(5, 9)] == [False, False, True, True]
  assert asked == [5, 6, 7] and stop.signal_name == "preemption notice"


def _poison_window(tfds_dir, cache_dir, step):
  """The first window index of the batch that step `step` (1-based) trains on."""
  from ban_jax.training import setup  # pylint: disable=g-import-not-at-top
  data = setup.build_data(_config(tfds_dir, cache_dir))
  it = data.train.iterator()
  for _ in range(step):
    batch = next(it)
  return int(batch["index"][0])


@pytest.fixture
def poisoned(monkeypatch, tfds_dir, cache_dir):
  """A train step that turns non-finite on one window: what a bad batch or an exploding update
  does to the parameters. It tests the loop's response, not what makes real training diverge."""
  window = _poison_window(tfds_dir, cache_dir, 13)
  honest = steps.train_step

  def train_step(state, batch, **kw):
    state, metrics = honest(state, batch, **kw)
    scale = jax.numpy.where(jax.numpy.any(batch["index"] == window), jax.numpy.nan, 1.0)
    params = jax.tree.map(lambda p: p * scale, state.params)
    return state.replace(params=params), dict(metrics, loss=metrics["loss"] * scale,
                                              finite=metrics["finite"] & (scale == 1.0))

  monkeypatch.setattr(steps, "train_step", train_step)


def test_nan_stop_names_the_step_and_a_finite_checkpoint(poisoned, tfds_dir, cache_dir,
                                                         tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(UserError, match=r"diverged at step 13 .*finite parameters: "
                                      r".*checkpoints/10\. "):
    train.train_and_evaluate(_config(tfds_dir, cache_dir), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "5"]
  params, _ = checkpoints.read_params(os.path.join(workdir, "checkpoints"))
  assert checkpoints.all_finite(params)
  assert max(r["step"] for r in writers.read_metrics(workdir)) == 12   # NaN never logged


def test_nan_rollback_skips_the_batch_and_finishes(poisoned, tfds_dir, cache_dir, tmp_path,
                                                   caplog):
  workdir = str(tmp_path / "run")
  with caplog.at_level(logging.WARNING):
    final = train.train_and_evaluate(
        _config(tfds_dir, cache_dir, **{"train.nan_policy": "rollback"}), workdir)
  messages = [r.getMessage() for r in caplog.records]
  assert sum("rolled back to step 10" in m and "step 13" in m for m in messages) == 1, messages
  assert any("skipped the batch of step 13" in m for m in messages)
  assert np.isfinite(final["train/loss"])
  params, step = checkpoints.read_params(os.path.join(workdir, "checkpoints"))
  assert step == 30 and checkpoints.all_finite(params)
  steps_logged = [r["step"] for r in _metrics(workdir) if "train/loss" in r]
  assert steps_logged == sorted(set(steps_logged))          # no duplicates after the rewind
  with pytest.raises(UserError, match="after 0 rollbacks"):
    train.train_and_evaluate(_config(tfds_dir, cache_dir, **{
        "train.nan_policy": "rollback", "train.max_rollbacks": 0}), str(tmp_path / "run2"))


def _tree(path):
  """{relative path: (size, mtime)} of everything under `path`, or None if it does not exist."""
  if not os.path.exists(path):
    return None
  return {os.path.relpath(os.path.join(r, n), path): (os.path.getsize(os.path.join(r, n)),
                                                      os.path.getmtime(os.path.join(r, n)))
          for r, _, ns in os.walk(path) for n in ns}


def _all_corrupt(workdir):
  for step in os.listdir(os.path.join(workdir, "checkpoints")):
    if step.isdigit():
      _truncate_array(os.path.join(workdir, "checkpoints", step))


def _bad_config_json(workdir):
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write('{"model": ')


def _newer_checkpoint(workdir):
  path = os.path.join(workdir, "checkpoints", "30", "ban_jax_manifest.json")
  with open(path) as f:
    manifest = json.load(f)
  with open(path, "w") as f:
    json.dump(dict(manifest, version=formats.CHECKPOINT + 1), f)


def _newer_workdir(workdir):
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    config = json.load(f)
  with open(path, "w") as f:
    json.dump(dict(config, format_version=formats.WORKDIR + 1), f)


def _file(tmp, text):
  path = os.path.join(tmp, "heldout.txt")
  with open(path, "w") as f:
    f.write(text)
  return path


slow = pytest.mark.slow
# (id, overrides (tmp -> list), prepare the workdir from the reference run?, message part)
BAD_INPUTS = [
    ("unknown_field", lambda t: ["--config.train.stepz=3"], None, "did you mean 'steps'"),
    ("unknown_block", lambda t: ["--config.foo.bar=3"], None, "config has no field 'foo'"),
    ("field_of_a_value", lambda t: ["--config.train.steps.x=1"], None, "no field 'x'"),
    ("not_an_int", lambda t: ["--config.train.steps=many"], None, "takes an integer"),
    ("not_a_number", lambda t: ["--config.optimizer.learning_rate=fast"], None, "a number"),
    ("not_a_bool", lambda t: ["--config.model.tagging=maybe"], None, "true or false"),
    ("missing_config_file", lambda t: ["--config=configs/none.py"], None, "no such file"),
    ("unknown_preset", lambda t: ["--config=configs/wiki.py:tinyy"], None, "unknown preset"),
    ("nan_policy", lambda t: ["--config.train.nan_policy=maybe"], None, "train.nan_policy"),
    pytest.param("max_rollbacks", lambda t: ["--config.train.max_rollbacks=-1"], None,
                 "non-negative", marks=slow),
    pytest.param("zero_steps", lambda t: ["--config.train.steps=0"], None, "train.steps",
                 marks=slow),
    pytest.param("attention_kind", lambda t: ["--config.model.attention=cosine"], None,
                 "model.attention", marks=slow),
    pytest.param("warmup_past_end", lambda t: ["--config.optimizer.warmup_steps=99"], None,
                 "warmup_steps", marks=slow),
    pytest.param("workdir_under_file", lambda t: [f"--workdir={_file(t, 'x')}/run"], None,
                 "not writable", marks=slow),
    pytest.param("heldout_missing", lambda t: [f"--config.eval.heldout_path={t}/none.txt"],
                 None, "heldout_path", marks=slow),
    ("heldout_empty", lambda t: [f"--config.eval.heldout_path={_file(t, '')}"], None,
     "fewer than data.seq_len"),
    pytest.param("heldout_short", lambda t: [f"--config.eval.heldout_path={_file(t, 'hi')}"],
                 None, "fewer than data.seq_len", marks=slow),
    pytest.param("empty_split", lambda t: ["--config.data.train_split=train[:0]"], None,
                 "train", marks=slow),
    pytest.param("missing_tfds", lambda t: ["--config.data.source=tfds",
                                            "--config.data.tfds_name=nosuch_dataset"],
                 None, "cannot be read", marks=slow),
    pytest.param("no_dumps", lambda t: ["--config.data.source=dump",
                                        f"--config.data.dump_dir={t}"],
                 None, "no MediaWiki dump", marks=slow),
    ("all_checkpoints_corrupt", lambda t: [], _all_corrupt, "no checkpoint in"),
    pytest.param("other_model", lambda t: ["--config.model.d_model=48"], lambda w: None,
                 "model.d_model", marks=slow),
    pytest.param("bad_config_json", lambda t: [], _bad_config_json, "config.json is unreadable",
                 marks=slow),
    ("checkpoint_from_newer", lambda t: [], _newer_checkpoint,
     f"newer than this ban_jax reads (version {formats.CHECKPOINT}): upgrade ban_jax"),
    pytest.param("workdir_from_newer", lambda t: [], _newer_workdir,
                 f"newer than this ban_jax reads (version {formats.WORKDIR}): upgrade ban_jax",
                 marks=slow),
]


@pytest.mark.parametrize("name,overrides,prepare,match", BAD_INPUTS,
                         ids=[getattr(p, "values", p)[0]
                              for p in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_changes_nothing(request, tfds_dir, cache_dir,
                                                         tmp_path, name, overrides, prepare,
                                                         match):
  workdir = str(tmp_path / "run")
  if prepare is not None:
    shutil.copytree(request.getfixturevalue("reference"), workdir)
    prepare(workdir)
  extra = overrides(str(tmp_path))
  cmd = _cli(workdir, tfds_dir, cache_dir)
  for arg in extra:   # a replacement --config or --workdir takes the place of the default
    key = arg.split("=", 1)[0]
    if key in ("--config", "--workdir"):
      cmd = [arg if c.split("=", 1)[0] == key else c for c in cmd]
    else:
      cmd.append(arg)
  before = _tree(workdir)
  out = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert out.returncode == 2, out.stderr[-3000:]
  assert len(errors) == 1 and match in errors[0], (errors, out.stderr[-3000:])
  assert "Traceback" not in out.stderr
  assert _tree(workdir) == before, name
