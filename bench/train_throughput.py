r"""Training-step throughput of the config presets on the present backend.

    python bench/train_throughput.py                      # smoke and default presets
    python bench/train_throughput.py --presets=smoke,default,baseline --steps=20

Times the jitted train step alone (compile excluded, median of --steps after --warmup) on
random tokens of the preset's shape, so the input pipeline does not enter the figure; prints a
table and writes bench/results/train_throughput_<backend>.json.
"""

import json
import os
import platform
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ban_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.training import setup  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import wiki  # pylint: disable=g-import-not-at-top,wrong-import-position

_PRESETS = flags.DEFINE_list("presets", ["smoke", "default"], "Presets of configs/wiki.py.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per preset.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_OUT = flags.DEFINE_string("out", "", "JSON path (default bench/results/train_throughput_<backend>.json).")

VOCAB = 259


def measure(preset: str) -> dict:
  c = wiki.get_config(preset)
  plan = setup.build(c, VOCAB, mesh_lib.make_mesh(c.mesh),
                     token_bytes=jnp.ones([VOCAB], jnp.float32))
  state = plan.init(jax.random.PRNGKey(0))
  step = plan.jit_step(steps_lib.train_step)
  bsh = plan.batch_sharding
  b, t = c.train.batch_size, c.data.seq_len
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, VOCAB, size=(b, t + 1)).astype(np.int32)
  batch = mesh_lib.global_batch({
      "inputs": tokens[:, :-1], "targets": tokens[:, 1:],
      "segment_ids": np.ones((b, t), np.int32),
      "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
      "weights": np.ones((b, t), np.float32), "index": np.arange(b, dtype=np.int32)}, bsh)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  for _ in range(_WARMUP.value):
    state, m = step(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  median = float(np.median(times))
  return {
      "preset": preset, "model": c.model.name, "dtype": c.model.dtype,
      "params": setup.count_params(plan.abstract.params), "batch": b, "seq_len": t,
      "compile_s": compile_s, "step_ms_median": 1e3 * median,
      "step_ms_min": 1e3 * float(np.min(times)), "tokens_per_s": b * t / median,
      "xla_flops_per_step": flops, "achieved_tflops": flops / median / 1e12,
  }


def main(argv):
  del argv
  backend = jax.default_backend()
  rows = [measure(p) for p in _PRESETS.value]
  device = jax.devices()[0].device_kind
  print(f"\ntrain-step throughput on {backend} ({jax.device_count()} x {device}), "
        f"jax {jax.__version__}")
  print(f"{'preset':<9}{'model':<12}{'params':>11}{'batch×len':>11}{'step ms':>10}"
        f"{'tokens/s':>12}{'TFLOP/s':>9}{'compile s':>10}")
  for r in rows:
    print(f"{r['preset']:<9}{r['model']:<12}{r['params']:>11,}"
          f"{str(r['batch']) + '×' + str(r['seq_len']):>11}{r['step_ms_median']:>10.1f}"
          f"{r['tokens_per_s']:>12,.0f}{r['achieved_tflops']:>9.3f}{r['compile_s']:>10.1f}")
  out = _OUT.value or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"train_throughput_{backend}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump({"backend": backend, "device": device, "device_count": jax.device_count(),
               "jax": jax.__version__, "host": platform.node(), "cpu_count": os.cpu_count(),
               "results": rows}, f, indent=2)
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
