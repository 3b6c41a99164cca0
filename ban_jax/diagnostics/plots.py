"""The checks' figures (PNG), drawn from what `ban_jax.diagnostics.checks` returns."""

import matplotlib.pyplot as plt
import numpy as np

from ban_jax.training import plots as run_plots


def _save(fig, path: str):
  run_plots.save_png(fig, path, dpi=110)


def landscapes(check: dict, layout: str, path: str, tokenizer_decode=None):
  """Φ over the vocabulary on one layout, one panel per shown query (low → high M)."""
  plot = check["plot"]
  xy = plot["layouts"][layout]
  n = len(plot["phi"])
  cols = 5
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.8 * rows), squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis("off")
  for ax, phi, m in zip(axes.flat, plot["phi"], plot["M"]):
    order = np.argsort(-phi)   # deepest drawn last, on top
    sc = ax.scatter(xy[order, 0], xy[order, 1], c=phi[order], s=6, cmap="viridis_r",
                    vmin=0, vmax=np.log(len(phi)) * 1.5)
    best = int(np.argmin(phi))
    ax.scatter(*xy[best], marker="x", c="red", s=30)
    label = f" {tokenizer_decode([best])!r}" if tokenizer_decode else ""
    ax.set_title(f"M={m:+.2f}  depth={np.median(phi) - phi.min():.1f}{label}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.colorbar(sc, ax=axes, shrink=0.6, label="Φ(t|Q) = −log P (nats)")
  fig.suptitle(f"Check 1: the potential over the vocabulary ({layout.upper()} of the output "
               "embeddings), queries from low to high information mass", fontsize=10)
  _save(fig, path)


def mass_scatter(check: dict, path: str):
  """Well depth and width against M and its components (Spearman ρ in each title)."""
  plot = check["plot"]
  names = ("M", "M_without_entropy", "entropy", "depth", "unigram_novelty",
           "surprisal_novelty")
  fig, axes = plt.subplots(2, len(names), figsize=(3 * len(names), 5.6))
  for row, well in enumerate(("depth", "width")):
    for ax, name in zip(axes[row], names):
      ax.scatter(plot["predictors"][name], plot["wells"][well], s=5, alpha=0.6)
      ci = check["correlations"][well][name]
      ax.set_title(f"ρ={ci['value']:+.2f} [{ci['low']:+.2f}, {ci['high']:+.2f}]", fontsize=8)
      ax.set_xlabel(name, fontsize=8)
      if ax is axes[row][0]:
        ax.set_ylabel(f"well {well}")
      if well == "width":
        ax.set_yscale("log")
  _save(fig, path)


def cloze_errors(check: dict, path: str):
  """Error rate per quintile of M at each temperature, and the answer's surprisal against M."""
  plot = check["plot"]
  m = plot["predictors"]["M"]
  bins = np.quantile(m, np.linspace(0, 1, 6))
  which = np.clip(np.searchsorted(bins, m, side="right") - 1, 0, 4)
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  for t, errors in plot["errors"].items():
    a.plot(range(1, 6), [errors[which == q].mean() for q in range(5)], "o-", label=t)
  a.set_xlabel("quintile of information mass M")
  a.set_ylabel("first-word error rate (exact / type)")
  a.set_ylim(0, 1.05)
  a.legend()
  b.scatter(m, plot["surprisal"], s=5, alpha=0.6)
  b.set_xlabel("information mass M")
  b.set_ylabel("true answer's surprisal (nats)")
  fig.suptitle("Check 2: information mass vs errors on factual cloze", fontsize=10)
  _save(fig, path)


def temperature(check: dict, path: str):
  """Diversity against temperature (log axis), with log |V| and the sample's ceiling."""
  rows = check["rows"]
  t = [r["temperature"] for r in rows]
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  a.plot(t, [r["entropy"] for r in rows], "o-", label="generated tokens' entropy")
  a.plot(t, [r["fixed_context_entropy"] for r in rows], "s--", c="gray",
         label="softmax(z/T) at fixed contexts (sanity)")
  a.axhline(check["log_vocab"], c="k", ls=":", lw=1, label="log |V|")
  a.set_xscale("log")
  a.set_xlabel("temperature T")
  a.set_ylabel("nats")
  a.legend(fontsize=8)
  for key in ("distinct_1", "distinct_2", "distinct_3", "repetition"):
    b.plot(t, [r[key] for r in rows], "o-", label=key)
  b.plot(t, [r["line_length"]["cv"] for r in rows], "s--", label="line-length CV")
  if np.isfinite(check["knee_temperature"]):
    b.axvline(check["knee_temperature"], c="k", ls=":", lw=1, label="knee")
  b.set_xscale("log")
  b.set_xlabel("temperature T")
  b.legend(fontsize=8)
  fig.suptitle("Check 3: capture vs thermal motion on self-generated text", fontsize=10)
  _save(fig, path)


def attention_field(check: dict, path: str, title: str = ""):
  """Mean attention weight against distance on log-log axes, per layer and head, with fits."""
  curves, layers = check["plot"]["curves"], check["plot"]["layers"]
  fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
  for ax, curve, layer, i in zip(axes[0], curves, layers, range(len(curves))):
    d = np.arange(curve.shape[1])
    for h, (w, fit) in enumerate(zip(curve, layer["heads"])):
      line, = ax.loglog(d[1:], w[1:], ".", ms=3, alpha=0.6)
      span = d[1:check["max_distance"] + 1]
      ax.loglog(span, fit["c"] * span ** -fit["p"], "-", c=line.get_color(), lw=1,
                label=f"head {h}: p={fit['p']:.2f}")
    ax.loglog(span, span ** -2.0 * curve[:, 1].mean(), "k:", lw=1, label="d⁻² (Newton)")
    ax.set_title(f"layer {i}", fontsize=9)
    ax.set_xlabel("distance |i − j|")
    ax.set_ylabel("mean attention weight")
    ax.legend(fontsize=7)
  fig.suptitle(title or "The attention field: weight against distance", fontsize=10)
  _save(fig, path)


def exponent_over_training(steps, exponents, path: str):
  """Mean fitted exponent per layer against the checkpoint step."""
  exponents = np.asarray(exponents)
  fig, ax = plt.subplots(figsize=(6, 4))
  for layer in range(exponents.shape[1]):
    ax.plot(steps, exponents[:, layer], "o-", label=f"layer {layer}")
  ax.axhline(2.0, c="k", ls=":", lw=1, label="2 (inverse square)")
  ax.set_xlabel("training step")
  ax.set_ylabel("mean fitted exponent p over heads")
  ax.legend()
  _save(fig, path)
