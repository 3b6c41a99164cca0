"""PNG plots of a run, drawn from `metrics.jsonl`."""

import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def _atomic_save(fig, path: str):
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=120, bbox_inches="tight")
  plt.close(fig)
  os.replace(tmp, path)


def loss_curve(records: list[dict], path: str, *, steps_per_epoch: int | None = None,
               title: str = ""):
  """Train and eval bits/byte against step, epoch boundaries dashed."""
  fig, ax = plt.subplots(figsize=(7, 4))
  for key, label, style in (("train/bits_per_byte", "train", "-"),
                            ("eval/bits_per_byte", "validation", "o-"),
                            ("heldout/bits_per_byte", "held-out text", "s--")):
    pts = [(r["step"], r[key]) for r in records if key in r]
    if pts:
      ax.plot(*zip(*pts), style, label=label, ms=3, lw=1)
  if steps_per_epoch:
    last = max((r["step"] for r in records), default=0)
    for b in range(steps_per_epoch, last + 1, steps_per_epoch):
      ax.axvline(b, color="gray", ls=":", lw=0.8)
  ax.set_xlabel("step")
  ax.set_ylabel("bits per byte")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  _atomic_save(fig, path)


def well_strengths(steps: list[int], snapshots: list[dict[int, float]], path: str, *,
                   top: int = 12, steps_per_epoch: int | None = None):
  """Left: the strongest wells' strength over training; right: how many wells are alive."""
  peak = {}
  for snap in snapshots:
    for i, s in snap.items():
      peak[i] = max(peak.get(i, 0.0), s)
  strongest = sorted(peak, key=peak.get, reverse=True)[:top]
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for i in strongest:
    ax.plot(steps, [snap.get(i, 0.0) for snap in snapshots], lw=1, label=f"example {i}")
  ax2.plot(steps, [len(s) for s in snapshots], color="k", lw=1)
  for a in (ax, ax2):
    if steps_per_epoch and steps:
      for b in range(steps_per_epoch, steps[-1] + 1, steps_per_epoch):
        a.axvline(b, color="gray", ls=":", lw=0.8)
    a.set_xlabel("step")
    a.grid(alpha=0.3)
  ax.set_ylabel("well strength")
  ax.set_title(f"the {len(strongest)} strongest wells (epoch ends dotted)")
  if strongest:
    ax.legend(fontsize=6, ncol=2)
  ax2.set_ylabel("active wells")
  ax2.set_title("wells alive")
  _atomic_save(fig, path)
