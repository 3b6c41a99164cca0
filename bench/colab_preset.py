r"""Size the BAN for one Colab TPU v5e-1 on Wikipedia, by compiling candidates for it.

    python bench/colab_preset.py                      # resumable; --deadline_s

Criteria (issue 25): the wikipedia preset's full system at >= 64 x 512 tokens a step, its train
step within 80% of the chip's HBM, and a roofline time for 20 training tokens per parameter of
at most 12 hours. Each candidate (width, depth, heads, remat) is one `ban_jax.aot` process on
v5e-1 with --hbm_fraction=0.8; the hours are steps (20 N / tokens a step) x the roofline step
time. Writes bench/results/colab_preset.json; the largest candidate meeting all three is the
one to name.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "bench", "results", "colab_preset.json")
# (d_model, num_layers, num_heads, head_dim, remat), smallest first.
CANDIDATES = [(256, 6, 8, 32, False), (384, 8, 6, 64, True), (512, 8, 8, 64, True),
              (640, 10, 10, 64, True), (768, 12, 12, 64, True), (1024, 12, 16, 64, True),
              (1024, 14, 16, 64, True), (1280, 16, 20, 64, True)]
HOURS = 12.0
TOKENS_PER_PARAM = 20


def run(d, layers, heads, head_dim, remat, timeout_s):
  args = ["--config=configs/wiki.py:wikipedia", "--topology=v5e-1", "--programs=train",
          "--hbm_fraction=0.8", f"--config.model.d_model={d}",
          f"--config.model.num_layers={layers}", f"--config.model.num_heads={heads}",
          f"--config.model.num_kv_heads={heads}", f"--config.model.head_dim={head_dim}",
          f"--config.model.remat={remat}"]
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "r.json")
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "ban_jax.aot", *args, f"--out={out}"],
                         cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=timeout_s)
    row = dict(d_model=d, num_layers=layers, num_heads=heads, head_dim=head_dim, remat=remat,
               exit=res.returncode, wall_s=round(time.time() - t0, 1), args=args)
    if os.path.exists(out):
      with open(out) as f:
        r = json.load(f)
      tokens = r["global_batch"] * r["seq_len"]
      params = r["flops"]["params"]
      steps = TOKENS_PER_PARAM * params / tokens
      row.update(params=params, fits_80=r["fits"], hbm_total=r["programs"]["train"]["total"],
                 hbm=r["hbm_per_device_bytes"], step_s=r["roofline"]["step_s"],
                 bound=r["roofline"]["bound"], steps_for_20_tokens_per_param=steps,
                 hours=steps * r["roofline"]["step_s"] / 3600,
                 compile_s=r["programs"]["train"]["compile_s"])
      row["meets_all"] = bool(row["fits_80"] and row["hours"] <= HOURS)
    else:
      row["error"] = "\n".join(l for l in res.stderr.splitlines() if l.startswith("error:"))
  return row


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--deadline_s", type=float, default=1e9)
  args = ap.parse_args()
  rec = {"rows": []}
  if os.path.exists(OUT):
    with open(OUT) as f:
      rec = json.load(f)
  done = {(r["d_model"], r["num_layers"], r["remat"]) for r in rec["rows"]}
  t0 = time.time()
  for d, layers, heads, head_dim, remat in CANDIDATES:
    if (d, layers, remat) in done:
      continue
    if time.time() - t0 > args.deadline_s:
      print("stopped at --deadline_s; rerun to finish")
      break
    row = run(d, layers, heads, head_dim, remat, timeout_s=1800)
    rec["rows"].append(row)
    best = [r for r in rec["rows"] if r.get("meets_all")]
    rec["chosen"] = max(best, key=lambda r: r["params"]) if best else None
    with open(OUT + ".tmp", "w") as f:
      json.dump(rec, f, indent=1)
    os.replace(OUT + ".tmp", OUT)
    print(f"d{d} L{layers} remat={remat}: {row.get('params', 0):,} params, "
          f"{row.get('hbm_total', 0) / 2**30:.2f} GiB (fits 80%: {row.get('fits_80')}), "
          f"{row.get('hours', float('nan')):.1f} h for 20 tokens/param "
          f"({row.get('bound')}-bound), compile {row.get('compile_s', 0):.0f} s "
          f"{row.get('error', '')}", flush=True)


if __name__ == "__main__":
  main()
