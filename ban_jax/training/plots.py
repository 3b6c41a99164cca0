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
