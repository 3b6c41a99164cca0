"""Tests for ban_jax/diagnostics/stats.py: planted effects, planted nulls, brute-force checks."""

import itertools

import numpy as np

from ban_jax.diagnostics import stats


def test_ranks_and_spearman_match_definitions():
  x = np.asarray([3.0, 1.0, 2.0, 2.0, 5.0])
  np.testing.assert_array_equal(stats.rankdata(x), [4, 1, 2.5, 2.5, 5])
  rng = np.random.default_rng()
  a = rng.normal(size=50)
  assert abs(stats.spearman(a, np.exp(a)) - 1) < 1e-12      # monotone: ρ = 1
  assert abs(stats.spearman(a, -a ** 3) + 1) < 1e-12
  b = rng.normal(size=50)
  ra, rb = stats.rankdata(a), stats.rankdata(b)
  assert abs(stats.spearman(a, b) - np.corrcoef(ra, rb)[0, 1]) < 1e-12
  assert np.isnan(stats.spearman(a, np.ones(50)))
  # Non-finite pairs are left out, not ranked as the largest values.
  assert stats.spearman([1, 2, np.nan, 4], [1, 2, 3, 4]) == 1.0


def test_bootstrap_finds_a_planted_positive_and_a_planted_null():
  # A fixed draw: a 95% interval misses a true null 5% of the time, by design.
  rng = np.random.default_rng(7)
  x = rng.normal(size=300)
  positive = stats.spearman_ci(x, 0.4 * x + rng.normal(size=300), seed=1)
  assert positive["low"] > 0.15 and positive["value"] > 0.25
  null = stats.spearman_ci(x, rng.normal(size=300), seed=1)
  assert null["low"] < 0 < null["high"]
  assert null["high"] - null["low"] < 0.3


def test_logistic_regression_recovers_planted_weights_and_auc():
  rng = np.random.default_rng(11)   # fixed: the tolerance is ~3 standard errors
  x = rng.normal(size=(4000, 3))
  w = np.asarray([1.5, -1.0, 0.0])
  y = rng.random(4000) < 1 / (1 + np.exp(-(x @ w + 0.5)))
  got_w, got_b = stats.logistic_regression(x, y)
  np.testing.assert_allclose(got_w, w, atol=0.15)
  assert abs(got_b - 0.5) < 0.15
  s = rng.normal(size=40)
  labels = rng.random(40) < 0.5
  pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(s[labels], s[~labels])]
  assert abs(stats.auc(s, labels) - np.mean(pairs)) < 1e-12
  assert stats.auc(x @ w, y) > 0.75
