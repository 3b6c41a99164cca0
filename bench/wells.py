r"""Does Gravity Wells do what "Information Gravity" claims? Five arms, one command.

    python bench/wells.py                        # all arms, seed 0
    python bench/wells.py --seeds=0,1,2 --epochs=6

Arms (same model, data, seed and data order):
  plain        plain training
  wells        Gravity Wells as the paper describes (batch loss drop → wells → extra update)
  uniform      plain training + extra updates on uniformly random batches, in exactly the steps
               where the wells arm injected (the control for wells' extra compute)
  loss_rank    online batch selection by loss rank (Loshchilov & Hutter, 2015)
  wells_ex     per-example wells (each example's own loss drop since it was last seen)

The paper's claims: (1) wells remove the loss rise right after epoch boundaries ("drift");
(2) wells converge faster. Reported: validation bits/byte against gradient evaluations and
against training wall-clock, and the epoch-boundary drift: the mean train loss of the K steps
after a boundary minus that of the K steps before it, next to the same difference taken
mid-epoch (what the downward trend alone gives). Writes bench/results/wells.json and PNGs.
"""

import json
import os
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ban_jax.training import setup  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.training import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.training import writers  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import wiki  # pylint: disable=g-import-not-at-top,wrong-import-position

ARMS = ("plain", "wells", "uniform", "loss_rank", "wells_ex")
_ARMS = flags.DEFINE_list("arms", list(ARMS), "Arms to run (uniform needs wells).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds; each runs every arm.")
_EPOCHS = flags.DEFINE_integer("epochs", 6, "Epochs over the training subset.")
_TRAIN_SPLIT = flags.DEFINE_string("train_split", "train[:25%]",
                                   "A subset keeps epochs short enough for several on a CPU.")
_WINDOW = flags.DEFINE_integer("window", 25, "K: steps each side of a boundary for the drift.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where runs go (default: a temporary folder).")
_OUT = flags.DEFINE_string("out", "", "Results folder (default bench/results).")


def arm_config(arm: str, seed: int, inject_path: str = ""):
  c = wiki.get_config("smoke")
  c.seed = seed
  c.data.train_split = _TRAIN_SPLIT.value
  c.train.log_every = 1                 # per-step losses, for the drift
  c.eval.max_batches = 0                # the whole validation split: arms differ by ~0.05 bpb
  c.eval.heldout_path = ""
  c.eval.sample_length = 64
  c.checkpoint.every_steps = 1_000_000  # only the final one
  c.checkpoint.keep = 1
  c.wells.mode = {"plain": "off", "wells": "wells", "uniform": "uniform",
                  "loss_rank": "loss_rank", "wells_ex": "wells"}[arm]
  c.wells.per_example = arm == "wells_ex"
  c.wells.inject_steps = inject_path
  return c


def steps_per_epoch(c) -> int:
  data = setup.build_data(c)
  return data.train.steps_per_epoch


def drift(losses: dict[int, float], spe: int, total: int, k: int):
  """(mean rise across epoch boundaries, mean rise at mid-epoch points, per-boundary rises)."""
  def rise(b):
    before = [losses[s] for s in range(b - k + 1, b + 1) if s in losses]
    after = [losses[s] for s in range(b + 1, b + k + 1) if s in losses]
    return float(np.mean(after) - np.mean(before))
  bounds = [b for b in range(spe, total - k + 1, spe)]
  mids = [b + spe // 2 for b in range(0, total - spe // 2 - k + 1, spe) if b + spe // 2 >= k]
  per = [rise(b) for b in bounds]
  return float(np.mean(per)), float(np.mean([rise(m) for m in mids])), per


def summarize(workdir: str, spe: int, total: int, k: int) -> dict:
  recs = writers.read_metrics(workdir)
  train_recs = [r for r in recs if "train/loss" in r]
  losses = {r["step"]: r["train/loss"] for r in train_recs}
  grad_evals = np.cumsum([r.get("train/grad_evals", 1.0) for r in train_recs])
  evals_at = dict(zip([r["step"] for r in train_recs], grad_evals.tolist()))
  secs_at = {r["step"]: r["perf/train_sec"] for r in train_recs}
  curve = [{"step": r["step"], "grad_evals": evals_at[r["step"]], "train_sec": secs_at[r["step"]],
            "val_bpb": r["eval/bits_per_byte"]} for r in recs if "eval/bits_per_byte" in r]
  injected = np.array([r.get("train/injected", 0.0) for r in train_recs])
  boundary, mid, per = drift(losses, spe, total, k)
  return {
      "final_val_bpb": curve[-1]["val_bpb"], "curve": curve,
      "grad_evals": float(grad_evals[-1]), "train_sec": secs_at[total],
      "drift_boundary": boundary, "drift_mid_epoch": mid, "drift_per_boundary": per,
      "injection_fraction": float(injected.mean()),
      "injections_per_epoch": [float(injected[e * spe:(e + 1) * spe].sum())
                               for e in range(total // spe)],
      "losses": [losses[s] for s in range(1, total + 1)],
  }


def plot(results: dict, spe: int, path: str, k: int):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  for arm, runs in results.items():
    for i, run in enumerate(runs):
      kw = dict(label=arm if i == 0 else None, color=f"C{ARMS.index(arm)}", lw=1, ms=3)
      c = run["curve"]
      axes[0].plot([p["grad_evals"] for p in c], [p["val_bpb"] for p in c], "o-", **kw)
      axes[1].plot([p["train_sec"] for p in c], [p["val_bpb"] for p in c], "o-", **kw)
      loss = np.asarray(run["losses"])
      smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
      axes[2].plot(np.arange(k, len(loss) + 1), smooth, **kw)
  for b in range(spe, len(next(iter(results.values()))[0]["losses"]) + 1, spe):
    axes[2].axvline(b, color="gray", ls=":", lw=0.8)
  axes[0].set(xlabel="gradient evaluations (batches)", ylabel="validation bits/byte",
              title="vs compute")
  axes[1].set(xlabel="training wall-clock (s)", ylabel="validation bits/byte",
              title="vs time")
  axes[2].set(xlabel="step", ylabel=f"train loss (nats), {k}-step mean",
              title="epoch boundaries dotted")
  for a in axes:
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  out = _OUT.value or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
  os.makedirs(out, exist_ok=True)
  root = _WORKDIR.value or tempfile.mkdtemp(prefix="ban_wells_")
  arms = [a for a in ARMS if a in _ARMS.value]
  spe = steps_per_epoch(arm_config("plain", 0))
  total = spe * _EPOCHS.value
  k = _WINDOW.value
  results = {a: [] for a in arms}
  for seed in map(int, _SEEDS.value):
    for arm in arms:
      inject = ""
      if arm == "uniform":
        inject = os.path.join(root, f"wells-s{seed}", "injected_steps_from_0.json")
        if not os.path.exists(inject):
          raise SystemExit("the uniform arm replays the wells arm's injections: run wells too.")
      c = arm_config(arm, seed, inject)
      c.train.steps = total
      c.eval.every_steps = max(spe // 2, 1)
      workdir = os.path.join(root, f"{arm}-s{seed}")
      print(f"[wells bench] seed {seed} arm {arm}: {total} steps ({spe}/epoch) in {workdir}",
            flush=True)
      train.train_and_evaluate(c, workdir)
      results[arm].append(summarize(workdir, spe, total, k))
      r = results[arm][-1]
      print(f"[wells bench]   val bpb {r['final_val_bpb']:.4f}  grad evals {r['grad_evals']:.0f}"
            f"  train {r['train_sec']:.0f}s  drift {r['drift_boundary']:+.4f} "
            f"(mid-epoch {r['drift_mid_epoch']:+.4f})", flush=True)
  plot(results, spe, os.path.join(out, "wells.png"), k)
  if "wells" in arms:
    src = os.path.join(root, f"wells-s{_SEEDS.value[0]}", "well_strengths.png")
    if os.path.exists(src):
      with open(src, "rb") as f, open(os.path.join(out, "wells_strengths.png"), "wb") as g:
        g.write(f.read())
  table = {a: {
      "final_val_bpb_mean": float(np.mean([r["final_val_bpb"] for r in rs])),
      "final_val_bpb_std": float(np.std([r["final_val_bpb"] for r in rs], ddof=1))
                           if len(rs) > 1 else None,
      "final_val_bpb_per_seed": [r["final_val_bpb"] for r in rs],
      # Paired by seed (same init and data order), so seed-to-seed spread cancels.
      "minus_plain_per_seed": [r["final_val_bpb"] - p["final_val_bpb"]
                               for r, p in zip(rs, results.get("plain", []))],
      "grad_evals": float(np.mean([r["grad_evals"] for r in rs])),
      "train_sec": float(np.mean([r["train_sec"] for r in rs])),
      "drift_boundary": float(np.mean([r["drift_boundary"] for r in rs])),
      "drift_mid_epoch": float(np.mean([r["drift_mid_epoch"] for r in rs])),
      "injection_fraction": float(np.mean([r["injection_fraction"] for r in rs])),
  } for a, rs in results.items()}
  with open(os.path.join(out, "wells.json"), "w") as f:
    json.dump({"steps_per_epoch": spe, "epochs": _EPOCHS.value, "window": k,
               "train_split": _TRAIN_SPLIT.value, "seeds": _SEEDS.value, "summary": table,
               "runs": {a: [{kk: vv for kk, vv in r.items() if kk != "losses"} for r in rs]
                        for a, rs in results.items()}}, f, indent=2)
  print(f"\n{'arm':<10}{'val bpb':>9}{'grad evals':>12}{'train s':>9}{'drift@bound':>13}"
        f"{'drift@mid':>11}{'inject %':>10}")
  for a, t in table.items():
    print(f"{a:<10}{t['final_val_bpb_mean']:>9.4f}{t['grad_evals']:>12.0f}{t['train_sec']:>9.0f}"
          f"{t['drift_boundary']:>+13.4f}{t['drift_mid_epoch']:>+11.4f}"
          f"{100 * t['injection_fraction']:>10.1f}"
          + (f"   vs plain per seed {' '.join(f'{d:+.4f}' for d in t['minus_plain_per_seed'])}"
             if t["minus_plain_per_seed"] else ""))
  print(f"wrote {out}/wells.json, wells.png")


if __name__ == "__main__":
  app.run(main)
