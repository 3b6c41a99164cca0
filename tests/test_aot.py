"""`python -m ban_jax.aot`: a run compiled for a TPU slice on this CPU machine (libtpu).

The tiny preset keeps each compile to seconds; what is checked is the real TPU compiler's
output (memory per device, FLOPs counted without loops), the fit verdict and its exit status,
and the one-line errors.
"""

import json
import os
import subprocess
import sys

import pytest

from ban_jax import aot
from ban_jax.training import aot as aot_lib
from configs import wiki

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "ban_jax.aot", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def _errors(stderr):
  return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_tiny_preset_on_v5e_1_compiles_fits_and_reports(tmp_path):
  pytest.importorskip("libtpu")
  out = tmp_path / "report.json"
  res = _cli("--config=configs/wiki.py:tiny", "--topology=v5e-1", f"--out={out}")
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["device_kind"] == "TPU v5 lite" and report["devices_compiled"] == 1
  assert report["fits"] is True
  for name in ("train", "eval", "decode"):
    p = report["programs"][name]
    assert 0 < p["total"] < report["hbm_per_device_bytes"]
    assert p["compile_s"] > 0
  # The train step holds the state twice (in and out, donated) and more than eval's params.
  assert report["programs"]["train"]["total"] > report["programs"]["eval"]["total"]
  flops = report["flops"]
  # Counted without loops, so within a small factor of 6·N·tokens + attention.
  assert 0.8 < flops["per_step"] / flops["analytic_per_step"] < 1.6
  roof = report["roofline"]
  assert roof["step_s"] == max(roof["compute_s"], roof["memory_s"]) > 0
  assert 0 < roof["mfu_bound"] <= 1
  assert "fits: yes" in res.stdout


def test_a_step_that_does_not_fit_exits_2_naming_the_largest_batch(tmp_path):
  pytest.importorskip("libtpu")
  config = wiki.get_config("tiny")
  first = aot.check(config, "v5e-1", programs=("train",))
  hbm = first["hbm_per_device_bytes"]
  need = first["programs"]["train"]["total"]
  # Allow a little under what batch 8 needs: a smaller batch must be found and verified.
  fraction = 0.9 * need / hbm
  out = tmp_path / "r.json"
  res = _cli("--config=configs/wiki.py:tiny", "--topology=v5e-1", "--programs=train",
             f"--hbm_fraction={fraction}", f"--out={out}")
  assert res.returncode == 2, res.stderr[-3000:]
  errors = _errors(res.stderr)
  assert len(errors) == 1 and "does not fit v5e-1" in errors[0], res.stderr[-2000:]
  report = json.loads(out.read_text())
  batch = report["largest_batch"]
  assert 0 < batch < 8 and f"--config.train.batch_size={batch}" in errors[0]
  verified = [c for c in report["largest_batch_compiles"] if c["batch"] == batch]
  assert verified and verified[-1]["total"] <= fraction * hbm


def test_multi_device_slice_lays_the_batch_over_every_device():
  pytest.importorskip("libtpu")
  config = wiki.get_config("tiny")
  report = aot.check(config, "v5e-4", programs=("train",))
  assert report["devices_compiled"] == 4 and report["fits"]
  # Per device: the batch is split four ways, so FLOPs per device are a quarter of the step's.
  assert report["flops"]["per_step"] == pytest.approx(4 * report["flops"]["per_device"])


@pytest.mark.parametrize("args,match", [
    (["--topology=v7-8"], "unknown TPU generation 'v7'"),
    (["--topology=v5e-3"], "no v5e slice of that size"),
    ([], "--topology is required"),
    (["--topology=v5e-4", "--config.train.batch_size=6"], "must be a multiple of the 4"),
    (["--topology=v5e-1", "--programs=train,sample"], "'sample' is not one of"),
])
def test_bad_input_is_one_error_line(args, match, tmp_path):
  if any("batch_size" in a for a in args):
    pytest.importorskip("libtpu")
  out = tmp_path / "r.json"
  res = _cli("--config=configs/wiki.py:tiny", f"--out={out}", *args)
  assert res.returncode == 2
  errors = _errors(res.stderr)
  assert len(errors) == 1 and match in errors[0], res.stderr[-2000:]
  assert not out.exists()


def test_no_libtpu_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)
  with pytest.raises(aot.UserError, match=r'pip install -e "\.\[tpu\]"'):
    aot.check(wiki.get_config("tiny"), "v5e-1")


def test_the_wikipedia_preset_builds_without_its_data():
  # Its TFDS data does not exist here: the plan (model, wells table, shardings) must not need it.
  pytest.importorskip("libtpu")
  from ban_jax.parallel import tpu  # pylint: disable=g-import-not-at-top
  config = wiki.get_config("wikipedia")
  assert aot_lib.vocab_size(config) == 259
  plan, strategy, mesh = aot_lib.build(config, tpu.topology_devices(tpu.parse_slice("v5e-4")))
  assert mesh.size == 4 and strategy.draws
  assert plan.batch_sharding.mesh.devices.flat[0].platform == "tpu"


_REUSE = r"""
import json, sys, jax
from ban_jax.training import aot, setup, train
from configs import wiki
config = wiki.get_config("smoke")
config.data.tfds_data_dir, config.data.cache_dir, cache, workdir = sys.argv[1:5]
config.train.compilation_cache_dir = cache
config.train.steps, config.optimizer.warmup_steps = 2, 0
config.eval.max_batches = config.eval.heldout_max_batches = 1
config.eval.sample_length = 4
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
setup.enable_compilation_cache(config)
checked = aot.compile_train(config, jax.devices(), setup.build_data(config))
before = events.count("/jax/compilation_cache/cache_hits")
train.train_and_evaluate(config, workdir)
print(json.dumps(dict(check_compile_s=checked.compile_s,
                      hits=events.count("/jax/compilation_cache/cache_hits") - before)))
"""


def test_training_loads_the_train_step_the_check_compiled(tfds_dir, cache_dir, tmp_path):
  # What the Colab notebook relies on: the check compiles the run's own program (its data's
  # vocabulary, token bytes and Wells slots), so training finds it in the persistent cache.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", _REUSE, tfds_dir, cache_dir,
                        str(tmp_path / "cache"), str(tmp_path / "run")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  out = json.loads(res.stdout.strip().splitlines()[-1])
  assert out["check_compile_s"] > 1.0       # long enough to be cached at all
  assert out["hits"] >= 1, out


def test_gravity_attention_compiles_as_the_mosaic_kernel_per_batch_shard(tmp_path):
  # The smoke preset (gravity attention) on 4 chips: "auto" follows the target (TPU), not this
  # CPU host, and the kernel runs per batch shard under the mesh the train step is traced in.
  pytest.importorskip("libtpu")
  config = wiki.get_config("smoke")
  config.train.batch_size = config.eval.batch_size = 32
  report = aot.check(config, "v5e-4", programs=("train",))
  assert report["devices_compiled"] == 4 and report["fits"]
  assert report["programs"]["train"]["kernel_calls"] > 0


def test_the_largest_batch_search_bisects_past_a_compiler_out_of_memory(monkeypatch):
  """A tiny model's line predicts a batch so large that the compiler itself runs out of HBM
  (seen for smoke on a v5e: 60,446 rows); the search bisects back to a batch that fits."""
  def fake(batch):
    if batch > 300:
      raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM")
    return aot_lib.Compiled(name="train", compile_s=1.0, arguments=0, outputs=0,
                            temporaries=1000 * batch, code=0, aliased=0)
  compiled = []
  monkeypatch.setattr(aot_lib, "compile_train", lambda config, devices, data=None: (
      compiled.append(config.train.batch_size) or fake(config.train.batch_size)))
  config = wiki.get_config("smoke")
  config.train.batch_size = 16
  batch, tried = aot_lib.largest_batch(config, [object()] * 4, 10 ** 6, fake(16))
  assert 16 <= batch <= 300 and batch % 4 == 0
  assert any(t["total"] is None for t in tried)                  # the out-of-memory compile
  assert [t["batch"] for t in tried] == compiled
  assert len(compiled) <= 1 + aot_lib.MAX_FIT_COMPILES
  assert any(t["batch"] == batch and t["total"] <= 10 ** 6 for t in tried)   # verified
  monkeypatch.setattr(aot_lib, "compile_train", lambda *a, **k: (_ for _ in ()).throw(
      RuntimeError("INTERNAL: something else")))
  with pytest.raises(RuntimeError, match="something else"):     # other errors are not hidden
    aot_lib.largest_batch(config, [object()] * 4, 10 ** 6, fake(16))


def test_the_largest_batch_search_stops_at_its_cap(monkeypatch):
  """A line reaching far past the cap, or memory flat between the first two batches (seen for
  smoke on a v4: the half batch took more), compiles the cap itself and reports it as a floor."""
  def fake(batch, flat=False):
    temporaries = 5000 if flat else 1000 * batch
    return aot_lib.Compiled(name="train", compile_s=1.0, arguments=0, outputs=0,
                            temporaries=temporaries, code=0, aliased=0)
  config = wiki.get_config("smoke")
  config.train.batch_size = 16
  cap = aot_lib.search_cap(config, 4)
  assert cap == 16 * aot_lib.MAX_SEARCH_FACTOR
  for flat in (False, True):
    compiled = []
    monkeypatch.setattr(aot_lib, "compile_train", lambda config, devices, data=None: (
        compiled.append(config.train.batch_size) or fake(config.train.batch_size, flat)))
    batch, tried = aot_lib.largest_batch(config, [object()] * 4, 10 ** 9, fake(16, flat))
    assert batch == cap and max(compiled) == cap and len(compiled) == 2
    assert tried[-1] == dict(batch=cap, total=fake(cap, flat).total, compile_s=1.0)
  # Below the cap the search is unchanged: it finds the largest batch that fits.
  compiled.clear()
  monkeypatch.setattr(aot_lib, "compile_train", lambda config, devices, data=None: (
      compiled.append(config.train.batch_size) or fake(config.train.batch_size)))
  batch, _ = aot_lib.largest_batch(config, [object()] * 4, 200_000, fake(16))
  assert batch == 200 and max(compiled) < cap
