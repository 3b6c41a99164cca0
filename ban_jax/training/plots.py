"""PNG plots of a run, drawn from `metrics.jsonl`."""

import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def save_png(fig, path: str, dpi: int = 120):
  """Writes `fig` to `path` whole (through a temporary file) and closes it."""
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
  plt.close(fig)
  os.replace(tmp, path)


def loss_curve(records: list[dict], path: str, *, steps_per_epoch: int | None = None,
               title: str = ""):
  """Train and eval bits/byte against step, gzip's level on the same bytes, epochs dotted."""
  fig, ax = plt.subplots(figsize=(7, 4))
  for key, label, style in (("train/bits_per_byte", "train", "-"),
                            ("eval/bits_per_byte", "validation", "o-"),
                            ("heldout/bits_per_byte", "held-out text", "s--")):
    pts = [(r["step"], r[key]) for r in records if key in r]
    if pts:
      line, = ax.plot(*zip(*pts), style, label=label, ms=3, lw=1)
      # The compressor yardstick is the same at every eval: one line at its level.
      gzip = [r[key.replace("/bits", "/gzip_bits")] for r in records
              if key.replace("/bits", "/gzip_bits") in r]
      if gzip:
        ax.axhline(gzip[-1], color=line.get_color(), ls=(0, (1, 3)), lw=1,
                   label=f"gzip -9, {label} bytes")
  if steps_per_epoch:
    last = max((r["step"] for r in records), default=0)
    for b in range(steps_per_epoch, last + 1, steps_per_epoch):
      ax.axvline(b, color="gray", ls=":", lw=0.8)
  ax.set_xlabel("step")
  ax.set_ylabel("bits per byte")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  save_png(fig, path)


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
  save_png(fig, path)


def focus_usage(records: list[dict], path: str) -> bool:
  """Heatmap of how often each branch is the focus, per layer (last logged values)."""
  import re  # pylint: disable=g-import-not-at-top
  last = {}
  for r in records:
    for k, v in r.items():
      m = re.match(r"train/diagnostics/layer_(\d+)/.*focus_usage_(\d+)$", k)
      if m:
        last[(int(m.group(1)), int(m.group(2)))] = v
  if not last:
    return False
  layers = 1 + max(l for l, _ in last)
  branches = 1 + max(b for _, b in last)
  grid = [[last.get((l, b), float("nan")) for b in range(branches)] for l in range(layers)]
  fig, ax = plt.subplots(figsize=(1.2 + 0.7 * branches, 1.2 + 0.5 * layers))
  im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
  for l in range(layers):
    for b in range(branches):
      ax.text(b, l, f"{grid[l][b]:.2f}", ha="center", va="center", fontsize=7,
              color="k" if grid[l][b] > 0.6 else "w")
  ax.set(xlabel="branch", ylabel="layer", title="focus-branch usage (end of training)",
         xticks=range(branches), yticks=range(layers))
  fig.colorbar(im, ax=ax, fraction=0.05)
  save_png(fig, path)
  return True


def mass_heatmap(masses: dict, path: str) -> bool:
  """Heatmap of the per-head gravity masses M = softplus(gravity_mass_log), layer × head.

  Args:
    masses: {"block_0/attn/gravity_mass_log": [heads], ...}, one entry per layer.
    path: the PNG to write.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  rows = sorted((k, np.logaddexp(0.0, np.asarray(v, np.float64))) for k, v in masses.items())
  if not rows:
    return False
  grid = np.stack([v.reshape(-1) for _, v in rows])
  fig, ax = plt.subplots(figsize=(1.5 + 0.5 * grid.shape[1], 1.2 + 0.5 * grid.shape[0]))
  im = ax.imshow(grid, cmap="magma", aspect="auto")
  for i in range(grid.shape[0]):
    for j in range(grid.shape[1]):
      bright = grid[i, j] > (grid.min() + grid.max()) / 2
      ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
              color="k" if bright else "w")
  ax.set(xlabel="head", ylabel="layer", title="gravity mass M_h per head",
         xticks=range(grid.shape[1]), yticks=range(grid.shape[0]))
  fig.colorbar(im, ax=ax, fraction=0.05)
  save_png(fig, path)
  return True
