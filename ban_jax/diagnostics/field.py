"""The attention gravitational field: mean attention weight against distance, as a power law.

The AGF paper (seed 003) claims its positional field fits learning curves and "aligns with
Newton's inverse-square law". Measured here on any trained model: the mean weight w(d) that a
query gives the key d positions back, per layer and head, fitted to c·d^(−p) by least squares
in log-log space over d ≥ 1 (d = 0, the token itself, has no power law), with a bootstrap
interval on p from resampling the text windows.
"""

import numpy as np


def weight_by_distance(weights, segment_ids=None):
  """Per window and head: the sum and count of attention weights at each distance.

  Args:
    weights: float [batch, heads, L, L], one layer's causal attention (row = query).
    segment_ids: optional int [batch, L]; only pairs within one document (≠ 0) count.

  Returns:
    (sums float64 [batch, heads, L], counts float64 [batch, L]); index = distance i − j.
  """
  w = np.asarray(weights, np.float64)
  batch, heads, length, _ = w.shape
  i, j = np.tril_indices(length)
  distance = i - j
  valid = np.ones((batch, i.size), bool)
  if segment_ids is not None:
    seg = np.asarray(segment_ids)
    valid = (seg[:, i] == seg[:, j]) & (seg[:, i] != 0)
  sums = np.zeros((batch, heads, length))
  counts = np.zeros((batch, length))
  for b in range(batch):
    d = distance[valid[b]]
    counts[b] = np.bincount(d, minlength=length)
    for h in range(heads):
      sums[b, h] = np.bincount(d, weights=w[b, h][i[valid[b]], j[valid[b]]], minlength=length)
  return sums, counts


def mean_by_distance(sums, counts):
  """Mean weight at each distance over the given windows: float [heads, L] (nan: no pair)."""
  total = np.asarray(counts).sum(0)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, np.asarray(sums).sum(0) / total, np.nan)


def fit_power_law(mean_weight, min_distance: int = 1, max_distance: int | None = None):
  """(c, p) of w(d) ≈ c·d^(−p), least squares on log w against log d.

  Args:
    mean_weight: float [L], index = distance.
    min_distance, max_distance: the distances fitted (inclusive; None: all). Distances with
      no pair or a zero weight are left out.

  Returns:
    (c, p) floats; nan if fewer than 3 distances are usable.
  """
  w = np.asarray(mean_weight, np.float64)
  d = np.arange(w.size, dtype=np.float64)
  keep = (d >= max(min_distance, 1)) & np.isfinite(w) & (w > 0)
  if max_distance is not None:
    keep &= d <= max_distance
  if keep.sum() < 3:
    return float("nan"), float("nan")
  slope, intercept = np.polyfit(np.log(d[keep]), np.log(w[keep]), 1)
  return float(np.exp(intercept)), float(-slope)


def fit_exponents(sums, counts, samples: int = 200, seed: int = 0, **fit_kwargs):
  """Per head: the fitted exponent p with a bootstrap interval over windows.

  Args:
    sums, counts: from `weight_by_distance` (concatenate windows along axis 0).
    samples, seed: of the bootstrap.
    **fit_kwargs: `fit_power_law`'s distance range.

  Returns:
    list over heads of {"p", "p_low", "p_high", "c"}.
  """
  sums = np.asarray(sums)
  counts = np.asarray(counts)
  rng = np.random.default_rng(seed)
  draws = [rng.integers(0, len(sums), len(sums)) for _ in range(samples)]
  out = []
  for h in range(sums.shape[1]):
    c, p = fit_power_law(mean_by_distance(sums[:, h], counts), **fit_kwargs)
    boot = [fit_power_law(mean_by_distance(sums[rows, h], counts[rows]), **fit_kwargs)[1]
            for rows in draws]
    boot = np.asarray([b for b in boot if np.isfinite(b)])
    low, high = np.percentile(boot, [2.5, 97.5]) if boot.size else (np.nan, np.nan)
    out.append({"p": p, "p_low": float(low), "p_high": float(high), "c": c})
  return out


def exponent_summary(fits) -> dict:
  """Over heads: mean p, how many heads' intervals hold 2, spread of p."""
  p = np.asarray([f["p"] for f in fits])
  holds_two = sum(f["p_low"] <= 2.0 <= f["p_high"] for f in fits)
  return {"mean_p": float(np.nanmean(p)), "min_p": float(np.nanmin(p)),
          "max_p": float(np.nanmax(p)), "heads_whose_ci_holds_2": int(holds_two),
          "heads": len(fits)}
