r"""Time from process start to the end of the first train step, cold and warm.

    python bench/warm_start.py --preset=smoke

Runs `python -m ban_jax.main` for one step twice (fresh workdirs) with one fresh persistent
compilation cache: the first process compiles and fills the cache, the second loads from it.
The end of the first step is the progress line's log timestamp; data loading is timed up to the
model's parameter count line (the pipeline is built before the model). Writes
bench/results/warm_start_<preset>.json.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STAMP = re.compile(r"^I(\d{4}) (\d\d:\d\d:\d\d\.\d+)")


def _when(line, start_wall):
  m = _STAMP.match(line)
  if not m:
    return None
  today = datetime.datetime.fromtimestamp(start_wall)
  t = datetime.datetime.strptime(f"{today.year}{m.group(1)} {m.group(2)}", "%Y%m%d %H:%M:%S.%f")
  return t.timestamp() - start_wall


def one_run(preset, cache, workdir, extra):
  args = [sys.executable, "-m", "ban_jax.main", f"--config=configs/wiki.py:{preset}",
          f"--workdir={workdir}", "--config.train.steps=1", "--config.optimizer.warmup_steps=0",
          f"--config.train.compilation_cache_dir={cache}", "--config.eval.max_batches=1",
          "--config.eval.heldout_max_batches=1", "--config.eval.sample_length=4", *extra]
  start = time.time()
  res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=3600)
  if res.returncode:
    raise RuntimeError(res.stderr[-3000:])
  marks = {}
  for line in res.stderr.splitlines():
    if "parameters" in line and "model " in line and "params" not in marks:
      marks["model_built_s"] = _when(line, start)
    if re.search(r"step 1/1 ", line) and "first_step_end_s" not in marks:
      marks["first_step_end_s"] = _when(line, start)
  marks["process_s"] = time.time() - start
  return marks


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="smoke")
  ap.add_argument("--out", default="")
  ap.add_argument("overrides", nargs="*", help="more --config.x=y flags")
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "cache")
    cold = one_run(args.preset, cache, os.path.join(tmp, "cold"), args.overrides)
    warm = one_run(args.preset, cache, os.path.join(tmp, "warm"), args.overrides)
  rec = dict(preset=args.preset, cold=cold, warm=warm, cpu_count=os.cpu_count(),
             note="seconds from process start; first_step_end_s: the step-1 progress line; "
                  "model_built_s: the parameter-count line, after the data pipeline is built")
  for name, r in (("cold", cold), ("warm", warm)):
    print(f"{name}: model built {r.get('model_built_s', float('nan')):.1f} s, first step done "
          f"{r.get('first_step_end_s', float('nan')):.1f} s, process {r['process_s']:.1f} s")
  out = args.out or os.path.join(REPO, "bench", "results", f"warm_start_{args.preset}.json")
  with open(out, "w") as f:
    json.dump(rec, f, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
