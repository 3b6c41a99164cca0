r"""Training-step throughput of the config presets on the present backend.

    python bench/train_throughput.py                      # smoke and default presets
    python bench/train_throughput.py --runs=default:xla,default:pallas,transformer --steps=20

Each run is PRESET or PRESET:ATTENTION, where ATTENTION sets the gravity op's implementation
(`model.attention_options.implementation`): xla, pallas (the kernel's default options), or
pallas_fused / pallas_two_kernel (the kernel with `Options.fused_backward` on / off, whatever
the default). Times the jitted train step alone (compile excluded, median of --steps after
--warmup) on random tokens of the preset's shape, so the input pipeline does not enter the
figure; prints a table and writes bench/results/train_throughput_<backend>.json, after every
run.

On a lent GPU, beside another benchmark: every step is traced first, all of them compile in
parallel threads (compiling is host work), then `--wait_file` holds the timing back until the
other benchmark has written that file (or `--deadline_s` is near), so the two never share the GPU
while timing.
"""

import concurrent.futures
import contextlib
import json
import os
import platform
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ban_jax.ops.gravity import pallas as gravity_pallas  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.training import setup  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import wiki  # pylint: disable=g-import-not-at-top,wrong-import-position

_RUNS = flags.DEFINE_list("runs", ["smoke", "default"],
                          "PRESET or PRESET:ATTENTION (xla | pallas | pallas_fused | "
                          "pallas_two_kernel) of configs/wiki.py.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per run.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_OUT = flags.DEFINE_string("out", "", "JSON path (default bench/results/train_throughput_<backend>.json).")
_WAIT_FILE = flags.DEFINE_string("wait_file", "", "Time nothing before this file exists.")
_DEADLINE_S = flags.DEFINE_float("deadline_s", 1e9, "Seconds from start after which no run "
                                 "starts timing; the wait for --wait_file ends 60 s before.")
_THREADS = flags.DEFINE_integer("compile_threads", 4, "Steps compiled at once.")

VOCAB = 259
ATTENTION = ("xla", "pallas", "pallas_fused", "pallas_two_kernel")
T0 = time.time()


def log(msg):
  print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


@contextlib.contextmanager
def kernel_backward(fused):
  """Traces with the Pallas kernel's default options set to a fused (or two-kernel) backward."""
  if fused is None:
    yield
    return
  original = gravity_pallas.default_options

  def patched(*args, **kwargs):
    return original(*args, **kwargs)._replace(fused_backward=fused)
  gravity_pallas.default_options = patched
  try:
    yield
  finally:
    gravity_pallas.default_options = original


def trace(run: str) -> dict:
  """Builds, initialises and lowers one run's train step (no compile)."""
  preset, _, attention = run.partition(":")
  if attention and attention not in ATTENTION:
    raise ValueError(f"{run!r}: attention {attention!r} is not one of {ATTENTION}")
  c = wiki.get_config(preset)
  if attention:
    impl = "pallas" if attention.startswith("pallas") else attention
    c.model.attention_options = ml_collections.ConfigDict({"implementation": impl})
  fused = {"pallas_fused": True, "pallas_two_kernel": False}.get(attention)
  plan = setup.build(c, VOCAB, mesh_lib.make_mesh(c.mesh),
                     token_bytes=jnp.ones([VOCAB], jnp.float32))
  state = plan.init(jax.random.PRNGKey(0))
  step = plan.jit_step(steps_lib.train_step)
  b, t = c.train.batch_size, c.data.seq_len
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, VOCAB, size=(b, t + 1)).astype(np.int32)
  batch = mesh_lib.global_batch({
      "inputs": tokens[:, :-1], "targets": tokens[:, 1:],
      "segment_ids": np.ones((b, t), np.int32),
      "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
      "weights": np.ones((b, t), np.float32), "index": np.arange(b, dtype=np.int32)},
      plan.batch_sharding)
  t0 = time.perf_counter()
  with kernel_backward(fused):
    lowered = step.lower(state, batch)
  return dict(run=run, preset=preset, attention=attention or "preset's", config=c, plan=plan,
              state=state, batch=batch, lowered=lowered, trace_s=time.perf_counter() - t0)


def compile_one(r: dict) -> dict:
  t0 = time.perf_counter()
  r["compiled"] = r["lowered"].compile()
  r["compile_s"] = time.perf_counter() - t0
  return r


def measure(r: dict) -> dict:
  c, compiled, state, batch = r["config"], r["compiled"], r["state"], r["batch"]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  for _ in range(_WARMUP.value):
    state, m = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  loss = float(m["loss"]) if "loss" in m else float("nan")
  median = float(np.median(times))
  b, t = c.train.batch_size, c.data.seq_len
  return {
      "run": r["run"], "preset": r["preset"], "attention": r["attention"],
      "model": c.model.name, "score": c.model.attention, "dtype": c.model.dtype,
      "params": setup.count_params(r["plan"].abstract.params), "batch": b, "seq_len": t,
      "trace_s": r["trace_s"], "compile_s": r["compile_s"], "step_ms_median": 1e3 * median,
      "step_ms_min": 1e3 * float(np.min(times)), "steps_per_s": 1.0 / median,
      "tokens_per_s": b * t / median, "last_loss": loss,
      "xla_flops_per_step": flops, "achieved_tflops": flops / median / 1e12,
  }


def main(argv):
  del argv
  backend = jax.default_backend()
  device = jax.devices()[0].device_kind
  out = _OUT.value or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"train_throughput_{backend}.json")
  rec = {"backend": backend, "device": device, "device_count": jax.device_count(),
         "jax": jax.__version__, "host": platform.node(), "cpu_count": os.cpu_count(),
         "timing": "jitted train step alone, median of --steps after --warmup, random tokens",
         "steps": _STEPS.value, "results": [], "errors": []}

  def save():
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
      json.dump(rec, f, indent=2)
    os.replace(out + ".tmp", out)

  traced = []
  for run in _RUNS.value:
    try:
      traced.append(trace(run))
      log(f"traced {run} in {traced[-1]['trace_s']:.1f}s")
    except Exception as e:  # pylint: disable=broad-except
      rec["errors"].append(dict(run=run, stage="trace", error=f"{type(e).__name__}: {e}"[:2000]))
      log(f"{run}: trace failed: {type(e).__name__}: {str(e)[:400]}")
  with concurrent.futures.ThreadPoolExecutor(_THREADS.value) as pool:
    futures = {pool.submit(compile_one, r): r for r in traced}
    compiled = []
    for fut in concurrent.futures.as_completed(futures):
      r = futures[fut]
      try:
        compiled.append(fut.result())
        log(f"compiled {r['run']} in {r['compile_s']:.1f}s")
      except Exception as e:  # pylint: disable=broad-except
        rec["errors"].append(dict(run=r["run"], stage="compile",
                                  error=f"{type(e).__name__}: {e}"[:2000]))
        log(f"{r['run']}: compile failed: {type(e).__name__}: {str(e)[:400]}")
  save()
  if _WAIT_FILE.value:
    t_wait = time.time()
    while (not os.path.exists(_WAIT_FILE.value)
           and time.time() - T0 < _DEADLINE_S.value - 60):
      time.sleep(0.5)
    rec["waited_s"] = round(time.time() - t_wait, 1)
    rec["wait_file_seen"] = os.path.exists(_WAIT_FILE.value)
    log(f"waited {rec['waited_s']}s for {_WAIT_FILE.value} (seen: {rec['wait_file_seen']})")
  order = {run: i for i, run in enumerate(_RUNS.value)}
  for r in sorted(compiled, key=lambda r: order[r["run"]]):
    if time.time() - T0 > _DEADLINE_S.value:
      rec["errors"].append(dict(run=r["run"], stage="time", error="skipped (deadline)"))
      continue
    try:
      rec["results"].append(measure(r))
    except Exception as e:  # pylint: disable=broad-except
      rec["errors"].append(dict(run=r["run"], stage="time", error=f"{type(e).__name__}: {e}"[:2000]))
      log(f"{r['run']}: timing failed: {type(e).__name__}: {str(e)[:400]}")
    save()

  print(f"\ntrain-step throughput on {backend} ({jax.device_count()} x {device}), "
        f"jax {jax.__version__}")
  print(f"{'run':<26}{'model':<12}{'params':>11}{'batch×len':>11}{'step ms':>10}"
        f"{'steps/s':>9}{'tokens/s':>12}{'TFLOP/s':>9}{'compile s':>10}")
  for r in rec["results"]:
    print(f"{r['run']:<26}{r['model']:<12}{r['params']:>11,}"
          f"{str(r['batch']) + '×' + str(r['seq_len']):>11}{r['step_ms_median']:>10.2f}"
          f"{r['steps_per_s']:>9.2f}{r['tokens_per_s']:>12,.0f}{r['achieved_tflops']:>9.3f}"
          f"{r['compile_s']:>10.1f}")
  for e in rec["errors"]:
    print(f"{e['run']}: {e['stage']}: {e['error'][:300]}")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
