r"""Time to first step: how long each preset's train step takes to compile, on this backend.

    python bench/compile_time.py                       # default (Wells and plain), ban, transformer
    python bench/compile_time.py --cases=smoke:off,smoke:off:scan --repeats=3
    python bench/compile_time.py --topology=v5e-1 --cases=default:off:remat,default:off:scan:remat

Each configuration is compiled in its own process with the persistent compilation cache off
(`train.compilation_cache_dir=""`), so every figure is a cold compile: trace + lower + XLA
compile of the step `train_and_evaluate` runs (the selection strategy's step under Wells).
Ratios are measured side by side in one run: the plain BAN step against the transformer
preset's (equal parameters), the Wells step against the plain step, and each preset with its
layers scanned (`model.scan_layers`) against the per-layer model. `--topology` compiles for a
TPU slice through libtpu (no TPU needed) and adds the compiled step's temporaries. Writes
bench/results/compile_time_<backend or tpu_topology>.json.
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
from ban_jax.parallel import tpu
from ban_jax.training import aot
preset, wells, scan, remat, topology = json.loads(sys.argv[2])
config = wiki.get_config(preset)
config.train.compilation_cache_dir = ""
config.wells.mode = wells
config.model.scan_layers = scan
config.model.remat = remat
devices = tpu.topology_devices(tpu.parse_slice(topology)) if topology else jax.devices()
plan, strategy, _ = aot.build(config, devices)
fn, n = plan.train_step_jit(strategy)
batch = aot.abstract_batch(config.train.batch_size, config.data.seq_len, plan.batch_sharding)
t1 = time.perf_counter()
lowered = fn.lower(plan.abstract, *[batch] * n)
t2 = time.perf_counter()
compiled = lowered.compile()
t3 = time.perf_counter()
memory = compiled.memory_analysis()
print(json.dumps(dict(setup_s=t1 - t0, lower_s=t2 - t1, compile_s=t3 - t2, total_s=t3 - t1,
                      hlo_chars=len(lowered.as_text()),
                      temp_gib=memory.temp_size_in_bytes / 2**30 if memory else None)))
"""


def run(preset, wells, scan, remat, topology):
  res = subprocess.run([sys.executable, "-c", _CHILD, REPO,
                        json.dumps([preset, wells, scan, remat, topology])], cwd=REPO,
                       capture_output=True, text=True, timeout=3600)
  if res.returncode:
    raise RuntimeError(res.stderr[-2000:])
  return json.loads(res.stdout.strip().splitlines()[-1])


def parse_case(case: str) -> dict:
  """"default:wells:scan:remat" -> {preset, wells, scan, remat}; the last two optional."""
  preset, wells, *flags = case.split(":")
  unknown = set(flags) - {"scan", "remat"}
  if unknown:
    raise SystemExit(f"--cases: {case!r} has {sorted(unknown)}; flags are scan and remat")
  return dict(preset=preset, wells=wells, scan="scan" in flags, remat="remat" in flags)


def _median_rows(rows) -> list[dict]:
  """One row per case, in first-seen order: the median of its repeats (by total time)."""
  cases = {}
  for r in rows:
    cases.setdefault((r["preset"], r["wells"], r["scan"], r["remat"]), []).append(r)
  out = []
  for reps in cases.values():
    mid = sorted(reps, key=lambda r: r["total_s"])[(len(reps) - 1) // 2]
    out.append(dict(mid, repeats=len(reps)))
  return out


def report(paths: list[str]) -> list[str]:
  """The docs/results.md section: one table per target (median of repeats), with ratios."""
  lines = ["## Time to first step: compiling the train step\n",
           "Written by `python bench/compile_time.py --report_only` from "
           + ", ".join(f"`bench/results/{os.path.basename(p)}`" for p in paths)
           + ". Cold compiles (no persistent cache), one process per row; ratios within one "
           "run, of medians over the repeats (interleaved, so load changes hit every case "
           "alike). `default` is the shipped system, `ban` the BAN with the transformer's "
           "attention and positions. `scan` = `model.scan_layers` (one block under `nn.scan`), "
           "`remat` = rematerialised blocks. Temporaries are the compiled step's, per device.\n"]
  for path in paths:
    with open(path) as f:
      res = json.load(f)
    # Runs from before the machine's load was recorded shared the cores with bench/recall.py.
    machine = res.get("machine", "shared the cores with a training job (bench/recall.py): "
                      "seconds inflated alike, ratios less so")
    lines += [f"**{res['target']}** (jax {res['jax']}, {res['cpu_count']} host cores; "
              f"{machine}):\n",
              "| preset | wells | scan | remat | repeats | lower s | compile s | HLO chars | "
              "temporaries GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in _median_rows(res["rows"]):
      temp = "–" if r.get("temp_gib") is None else f"{r['temp_gib']:.2f}"
      lines.append(f"| {r['preset']} | {r['wells']} | {'yes' if r['scan'] else 'no'} | "
                   f"{'yes' if r['remat'] else 'no'} | {r['repeats']} | {r['lower_s']:.1f} | "
                   f"{r['compile_s']:.1f} | {r['hlo_chars'] / 1e6:.2f}M | {temp} |")
    lines.append("\nRatios (lower + compile): " + "; ".join(
        f"{k.replace('_', ' ')} {v:.2f}×" for k, v in sorted(res["ratios"].items())) + ".\n")
  return lines


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--report_only", action="store_true",
                  help="write the docs/results.md section from the committed JSONs")
  ap.add_argument("--cases", default="default:off,default:wells,transformer:off,ban:off,"
                  "default:off:scan,transformer:off:scan,ban:off:scan")
  ap.add_argument("--topology", default="",
                  help="compile for this TPU slice (e.g. v5e-1; needs libtpu), not the host")
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  if args.report_only:
    sys.path.insert(0, REPO)
    from bench import cli_runs  # pylint: disable=g-import-not-at-top
    paths = [os.path.join(REPO, "bench", "results", f"compile_time_{t}.json")
             for t in ("cpu", "tpu_v5e-1")]
    cli_runs.publish("compile_time", report([p for p in paths if os.path.exists(p)]),
                     "(no plot)")
    return
  import jax  # pylint: disable=g-import-not-at-top
  load = os.getloadavg()[0]        # another job on the cores inflates every second measured
  target = f"tpu_{args.topology}" if args.topology else jax.default_backend()
  cases = [parse_case(c) for c in args.cases.split(",")]
  rows = []
  t0 = time.time()
  for _ in range(args.repeats):        # interleaved, so load changes hit every case alike
    for case in cases:
      r = run(**case, topology=args.topology)
      r.update(case)
      rows.append(r)
      temp = f", temporaries {r['temp_gib']:.2f} GiB" if r.get("temp_gib") is not None else ""
      print(f"[{time.time() - t0:6.0f}s] {case['preset']:12s} wells={case['wells']:6s} "
            f"scan={case['scan']!s:5s} remat={case['remat']!s:5s} lower {r['lower_s']:6.1f}s "
            f"compile {r['compile_s']:6.1f}s (HLO {r['hlo_chars'] / 1e6:.2f}M chars{temp})",
            flush=True)

  def median(preset, wells, scan=False, remat=False):
    xs = [r["total_s"] for r in rows if (r["preset"], r["wells"], r["scan"], r["remat"])
          == (preset, wells, scan, remat)]
    return statistics.median(xs) if xs else float("nan")
  ratios = {}
  for scan in (False, True):   # the plain BAN preset at the transformer's parameters, too
    ratios["ban_preset_over_transformer" + ("_scanned" if scan else "")] = (
        median("ban", "off", scan) / median("transformer", "off", scan))
    tag = "_scanned" if scan else ""
    ratios[f"default_plain_over_transformer{tag}"] = (median("default", "off", scan)
                                                  / median("transformer", "off", scan))
    ratios[f"wells_over_plain{tag}"] = (median("default", "wells", scan)
                                        / median("default", "off", scan))
  for preset in {c["preset"] for c in cases}:
    for remat in (False, True):
      ratios[f"{preset}{'_remat' if remat else ''}_scanned_over_unscanned"] = (
          median(preset, "off", True, remat) / median(preset, "off", False, remat))
  ratios = {k: v for k, v in ratios.items() if v == v}        # pairs measured in this run
  out = args.out or os.path.join(REPO, "bench", "results", f"compile_time_{target}.json")
  with open(out, "w") as f:
    json.dump(dict(target=target, jax=jax.__version__, cpu_count=os.cpu_count(), rows=rows,
                   ratios=ratios, wall_s=time.time() - t0,
                   machine=f"load average {load:.1f} at the start" + (
                       " (another job on the cores: seconds inflated alike, ratios less so)"
                       if load > 0.5 * os.cpu_count() else ""),
                   note="lower + compile of the train step, cold (no persistent cache), one "
                   "process per configuration; ratios within this run"), f, indent=1)
  print(json.dumps(ratios, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
