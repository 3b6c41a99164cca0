r"""Time to first step: how long each preset's train step takes to compile, on this backend.

    python bench/compile_time.py                       # default (Wells and plain), ban, transformer
    python bench/compile_time.py --presets=smoke --repeats=3

Each configuration is compiled in its own process with the persistent compilation cache off
(`train.compilation_cache_dir=""`), so every figure is a cold compile: trace + lower + XLA
compile of the step `train_and_evaluate` runs (the selection strategy's step under Wells).
Ratios are measured side by side in one run: the plain BAN step against the transformer
preset's (equal parameters), and the Wells step against the plain step. Writes
bench/results/compile_time_<backend>.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import jax, jax.numpy as jnp
sys.path.insert(0, sys.argv[1])
from configs import wiki
from ban_jax.training import aot
preset, wells = sys.argv[2], sys.argv[3]
config = wiki.get_config(preset)
config.train.compilation_cache_dir = ""
config.wells.mode = wells
plan, strategy, _ = aot.build(config, jax.devices())
fn, n = plan.train_step_jit(strategy)
batch = aot.abstract_batch(config.train.batch_size, config.data.seq_len, plan.batch_sharding)
t1 = time.perf_counter()
lowered = fn.lower(plan.abstract, *[batch] * n)
t2 = time.perf_counter()
lowered.compile()
t3 = time.perf_counter()
print(json.dumps(dict(setup_s=t1 - t0, lower_s=t2 - t1, compile_s=t3 - t2, total_s=t3 - t1,
                      hlo_chars=len(lowered.as_text()))))
"""


def run(preset, wells):
  res = subprocess.run([sys.executable, "-c", _CHILD, REPO, preset, wells], cwd=REPO,
                       capture_output=True, text=True, timeout=1800)
  if res.returncode:
    raise RuntimeError(res.stderr[-2000:])
  return json.loads(res.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--cases", default="default:off,default:wells,transformer:off,ban:off")
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  rows = []
  t0 = time.time()
  for _ in range(args.repeats):        # interleaved, so load changes hit every case alike
    for case in args.cases.split(","):
      preset, wells = case.split(":")
      r = run(preset, wells)
      r.update(preset=preset, wells=wells)
      rows.append(r)
      print(f"[{time.time() - t0:6.0f}s] {preset:12s} wells={wells:6s} lower {r['lower_s']:6.1f}s "
            f"compile {r['compile_s']:6.1f}s (HLO {r['hlo_chars'] / 1e6:.1f}M chars)", flush=True)

  def median(preset, wells, key="total_s"):
    xs = [r[key] for r in rows if r["preset"] == preset and r["wells"] == wells]
    return statistics.median(xs) if xs else float("nan")
  ratios = dict(
      ban_plain_over_transformer=median("default", "off") / median("transformer", "off"),
      wells_over_plain=median("default", "wells") / median("default", "off"))
  out = args.out or os.path.join(REPO, "bench", "results", f"compile_time_{backend}.json")
  with open(out, "w") as f:
    json.dump(dict(backend=backend, jax=jax.__version__, cpu_count=os.cpu_count(), rows=rows,
                   ratios=ratios, note="lower + compile of the train step, cold (no "
                   "persistent cache), one process per configuration"), f, indent=1)
  print(json.dumps(ratios, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
