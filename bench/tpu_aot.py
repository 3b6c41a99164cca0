r"""The TPU table: every preset compiled for Colab's TPUs, v4-8, v5p-8 and a v5e-256 pod slice.

    pip install -e ".[tpu]"
    python bench/tpu_aot.py --deadline_s=3600          # resumable: rerun to fill the rest
    python bench/tpu_aot.py --report_only              # the docs/results.md section from the JSON

Each cell is one `python -m ban_jax.aot` process (its own memory, its own timeout), written to
bench/results/tpu_aot.json as soon as it ends; a rerun skips finished cells. Batches: a v5e-1 /
v6e-1 row uses the preset's batch; a slice row's global batch is its chips x that per-chip batch
(so every device holds the same rows as the single-chip row), and the v5e-256 row shards the
state with FSDP over all 256 chips. Every row states its batch.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "bench", "results", "tpu_aot.json")
RESULTS_MD = os.path.join(REPO, "docs", "results.md")
PRESETS = ("smoke", "transformer", "default", "wikipedia")
# (slice, mesh overrides); the mesh spreads the batch over every device unless said.
SLICES = (("v5e-1", {}), ("v6e-1", {}), ("v2-8", {}), ("v4-8", {}), ("v5p-8", {}),
          ("v5e-256", {"mesh.data": 1, "mesh.fsdp": 256}))
PRESET_BATCH = {"smoke": 16, "transformer": 64, "default": 64, "wikipedia": 64}


def chips(slice_name):
  sys.path.insert(0, REPO)
  from ban_jax.parallel import tpu  # pylint: disable=g-import-not-at-top
  return tpu.parse_slice(slice_name).chips


def cell_args(preset, slice_name, mesh):
  batch = PRESET_BATCH[preset] * chips(slice_name)
  args = [f"--config=configs/wiki.py:{preset}", f"--topology={slice_name}",
          f"--config.train.batch_size={batch}", f"--config.eval.batch_size={batch}"]
  args += [f"--config.{k}={v}" for k, v in mesh.items()]
  return args, batch


def run_cell(preset, slice_name, mesh, timeout_s, largest):
  args, batch = cell_args(preset, slice_name, mesh)
  if largest:
    args.append("--largest_batch")
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "cell.json")
    t0 = time.time()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    try:
      res = subprocess.run([sys.executable, "-m", "ban_jax.aot", *args, f"--out={out}"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
      status = {0: "fits", 2: "does not fit"}.get(res.returncode, f"exit {res.returncode}")
      tail = "\n".join(l for l in res.stderr.splitlines() if l.startswith("error:"))
    except subprocess.TimeoutExpired:
      status, tail = f"timeout ({timeout_s} s)", ""
    cell = dict(preset=preset, topology=slice_name, global_batch=batch, mesh=mesh,
                status=status, wall_s=round(time.time() - t0, 1), args=args)
    if os.path.exists(out):
      with open(out) as f:
        cell["report"] = json.load(f)
    elif tail:
      cell["error"] = tail
    return cell


def load():
  if os.path.exists(OUT):
    with open(OUT) as f:
      return json.load(f)
  return dict(cells=[], note="python bench/tpu_aot.py; one ban_jax.aot process per cell")


def save(rec):
  with open(OUT + ".tmp", "w") as f:
    json.dump(rec, f, indent=1)
  os.replace(OUT + ".tmp", OUT)


def gib(x):
  return f"{x / 2 ** 30:.2f}"


def _largest(cell) -> str:
  r = cell["report"]
  if "largest_batch" not in r:
    return cell.get("largest_batch_status", "–")     # e.g. a search that timed out
  return ("≥ " if r.get("largest_batch_capped") else "") + str(r["largest_batch"])


def report_md(rec) -> str:
  lines = ["<!-- begin tpu_aot -->", "## Compiled for TPUs, without a TPU (`ban_jax.aot`)", "",
           "Each row: the preset's train step (with its selection strategy), eval step and a "
           "cached decoding step compiled for the slice by libtpu on a 2-core CPU machine, "
           "`python bench/tpu_aot.py` (raw: `bench/results/tpu_aot.json`). HBM is per device, "
           "the largest of the three programs (the train step); FLOPs from the loop-free "
           "lowering; the roofline is a lower bound on the step time (peak FLOP/s and HBM "
           "bandwidth from Cloud TPU's documentation).", "",
           "| preset | slice | global batch | fits | HBM / device | of HBM | FLOPs / step | "
           "roofline step | MFU bound | train compile | largest batch |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for c in rec["cells"]:
    r = c.get("report")
    if not r:
      lines.append(f"| {c['preset']} | {c['topology']} | {c['global_batch']} | {c['status']} "
                   "| | | | | | | |")
      continue
    t = r["programs"].get("train", {})
    roof = r.get("roofline", {})
    lines.append(
        f"| {c['preset']} | {c['topology']} | {c['global_batch']} | "
        f"{'yes' if r['fits'] else 'no'} | {gib(t.get('total', 0))} GiB | "
        f"{100 * t.get('total', 0) / r['hbm_per_device_bytes']:.0f}% | "
        f"{r.get('flops', {}).get('per_step', float('nan')):.2e} | "
        f"{1e3 * roof.get('step_s', float('nan')):.1f} ms ({roof.get('bound', '?')}) | "
        f"{100 * roof.get('mfu_bound', float('nan')):.0f}% | {t.get('compile_s', 0):.0f} s | "
        f"{_largest(c)} |")
  done = [c for c in rec["cells"] if c.get("report")]
  lines += ["", f"{len(done)} of {len(PRESETS) * len(SLICES)} cells; "
            f"{sum(c['wall_s'] for c in rec['cells']) / 60:.0f} minutes of compiling in all.",
            "<!-- end tpu_aot -->"]
  return "\n".join(lines) + "\n"


def write_section(text):
  with open(RESULTS_MD) as f:
    doc = f.read()
  begin, end = "<!-- begin tpu_aot -->", "<!-- end tpu_aot -->\n"
  if begin in doc:
    a, b = doc.index(begin), doc.index(end) + len(end)
    doc = doc[:a] + text + doc[b:]
  else:
    doc = doc.rstrip("\n") + "\n\n" + text
  with open(RESULTS_MD + ".tmp", "w") as f:
    f.write(doc)
  os.replace(RESULTS_MD + ".tmp", RESULTS_MD)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--deadline_s", type=float, default=1e9)
  ap.add_argument("--cell_timeout_s", type=int, default=1800)
  ap.add_argument("--presets", default=",".join(PRESETS))
  ap.add_argument("--slices", default=",".join(s for s, _ in SLICES))
  ap.add_argument("--largest_batch", action="store_true",
                  help="find each row's largest batch too (two more train compiles a row)")
  ap.add_argument("--report_only", action="store_true")
  args = ap.parse_args()
  rec = load()
  t0 = time.time()
  if not args.report_only:
    # With --largest_batch, a row measured without it is done again.
    done = {(c["preset"], c["topology"]) for c in rec["cells"] if c.get("report")
            and (not args.largest_batch or "largest_batch" in c["report"]
                 or c["status"] != "fits" or "largest_batch_status" in c)}
    # Slice by slice, so that a deadline leaves whole columns (the pod slice last).
    todo = [(p, s, m) for s, m in SLICES for p in args.presets.split(",")
            if s in args.slices.split(",") and (p, s) not in done]
    for i, (preset, slice_name, mesh) in enumerate(todo):
      if time.time() - t0 > args.deadline_s:
        print(f"stopped at --deadline_s: {len(todo) - i} cells left; rerun to finish",
              flush=True)
        break
      left = max(60, int(args.deadline_s - (time.time() - t0))) if args.deadline_s < 1e9 else None
      cell = run_cell(preset, slice_name, mesh, min(args.cell_timeout_s, left or 10 ** 9),
                      args.largest_batch)
      same = lambda c: (c["preset"], c["topology"]) == (preset, slice_name)
      old = next((c for c in rec["cells"] if same(c) and c.get("report")), None)
      if old and not cell.get("report"):
        # A rerun for the largest batch that fails (a timeout) never erases a row that fit.
        cell = dict(old, largest_batch_status=cell["status"])
      rec["cells"] = [c for c in rec["cells"] if not same(c)] + [cell]
      save(rec)
      elapsed = time.time() - t0
      print(f"[{elapsed / 60:5.1f} min] {preset} on {slice_name} (batch {cell['global_batch']}):"
            f" {cell['status']} in {cell['wall_s']:.0f} s; {len(todo) - i - 1} left, "
            f"ETA {elapsed / (i + 1) * (len(todo) - i - 1) / 60:.0f} min", flush=True)
  order = {(p, s): (PRESETS.index(p), [x for x, _ in SLICES].index(s)) for p in PRESETS
           for s, _ in SLICES}
  rec["cells"].sort(key=lambda c: order.get((c["preset"], c["topology"]), (99, 99)))
  save(rec)
  write_section(report_md(rec))
  print(report_md(rec))


if __name__ == "__main__":
  main()
