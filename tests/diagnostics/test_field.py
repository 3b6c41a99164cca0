"""Tests for ban_jax/diagnostics/field.py: the power-law fit recovers planted exponents."""

import numpy as np
import pytest

from ban_jax.diagnostics import field


def _planted(p, batch=8, heads=3, length=64, noise=0.2, seed=0):
  """Causal attention rows with weight ∝ d^(−p) (d = 0 weighted as d = 1), times noise."""
  rng = np.random.default_rng(seed)
  i, j = np.meshgrid(np.arange(length), np.arange(length), indexing="ij")
  d = np.maximum(i - j, 1).astype(np.float64)
  w = np.where(j <= i, d ** -p, 0.0)[None, None] * np.exp(
      noise * rng.normal(size=(batch, heads, length, length)))
  w = np.where(j <= i, w, 0.0)
  return w / w.sum(-1, keepdims=True)


@pytest.mark.parametrize("p", [2.0, 1.3])
def test_fit_recovers_a_planted_exponent(p):
  sums, counts = field.weight_by_distance(_planted(p))
  fits = field.fit_exponents(sums, counts, samples=50, min_distance=4)
  for f in fits:
    assert abs(f["p"] - p) < 0.1, f
    assert f["p_low"] <= f["p"] <= f["p_high"]


def test_segments_and_means():
  w = _planted(1.0, batch=1, heads=1, length=6, noise=0.0)
  seg = np.asarray([[1, 1, 1, 2, 2, 2]])
  sums, counts = field.weight_by_distance(w, seg)
  # Distance 0: 6 pairs; distance 1: 4 within documents; distance 3+: none.
  np.testing.assert_array_equal(counts[0], [6, 4, 2, 0, 0, 0])
  mean = field.mean_by_distance(sums, counts)
  assert np.isnan(mean[0, 3])
  assert np.isclose(mean[0, 0], np.mean([w[0, 0, i, i] for i in range(6)]))
