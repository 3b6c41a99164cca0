"""Rank correlation with bootstrap intervals, logistic regression and AUC, in NumPy float64.

Small, dependency-free versions of what the checks need (SciPy is not a dependency).
"""

from typing import Callable

import numpy as np


def rankdata(x):
  """Ranks 1..n, ties given their mean rank (as scipy.stats.rankdata's default)."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="mergesort")
  ranks = np.empty(x.size, np.float64)
  sorted_x = x[order]
  i = 0
  while i < x.size:
    j = i
    while j + 1 < x.size and sorted_x[j + 1] == sorted_x[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
    i = j + 1
  return ranks


def spearman(x, y) -> float:
  """Spearman's ρ: Pearson correlation of the ranks, over the pairs where both are finite;
  nan if either is then constant."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  finite = np.isfinite(x) & np.isfinite(y)
  rx, ry = rankdata(x[finite]), rankdata(y[finite])
  rx -= rx.mean()
  ry -= ry.mean()
  denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
  return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def bootstrap(statistic: Callable, *arrays, samples: int = 1000, seed: int = 0,
              level: float = 0.95):
  """The statistic and its percentile bootstrap interval, resampling rows jointly.

  Args:
    statistic: f(*arrays) -> float.
    *arrays: equal-length arrays (one row per query).
    samples: bootstrap resamples.
    seed: of the resampling.
    level: coverage of the interval.

  Returns:
    {"value", "low", "high"}: floats.
  """
  arrays = [np.asarray(a) for a in arrays]
  n = len(arrays[0])
  rng = np.random.default_rng(seed)
  draws = []
  for _ in range(samples):
    rows = rng.integers(0, n, n)
    value = statistic(*(a[rows] for a in arrays))
    if np.isfinite(value):
      draws.append(value)
  tail = (1.0 - level) / 2 * 100
  low, high = (np.percentile(draws, [tail, 100 - tail]) if draws else (np.nan, np.nan))
  return {"value": float(statistic(*arrays)), "low": float(low), "high": float(high)}


def spearman_ci(x, y, **kw):
  """`bootstrap` of Spearman's ρ between x and y."""
  return bootstrap(spearman, x, y, **kw)


def logistic_regression(features, labels, l2: float = 1e-3, iterations: int = 50):
  """Weights of P(label = 1) = σ(w·x + b) by Newton's method (IRLS), with a small L2 penalty.

  Args:
    features: float [n, k].
    labels: 0/1 [n].
    l2: penalty on w (not b), keeps separable data finite.
    iterations: Newton steps (it converges in a handful).

  Returns:
    (w float64 [k], b float).
  """
  x = np.asarray(features, np.float64)
  y = np.asarray(labels, np.float64)
  design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  theta = np.zeros(design.shape[1])
  penalty = np.full(design.shape[1], l2)
  penalty[-1] = 0.0
  for _ in range(iterations):
    p = 1.0 / (1.0 + np.exp(-design @ theta))
    gradient = design.T @ (p - y) + penalty * theta
    hessian = design.T @ (design * (p * (1 - p))[:, None]) + np.diag(penalty + 1e-9)
    step = np.linalg.solve(hessian, gradient)
    theta -= step
    if np.abs(step).max() < 1e-10:
      break
  return theta[:-1], float(theta[-1])


def auc(scores, labels) -> float:
  """Area under the ROC curve: P(score of a random positive > a random negative), ties ½."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels).astype(bool)
  positives, negatives = labels.sum(), (~labels).sum()
  if not positives or not negatives:
    return float("nan")
  ranks = rankdata(scores)
  return float((ranks[labels].sum() - positives * (positives + 1) / 2) /
               (positives * negatives))
