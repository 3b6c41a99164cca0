"""Tests for ban_jax/diagnostics/sweep.py."""

import numpy as np

from ban_jax.diagnostics import sweep


def test_a_loop_is_captured_and_random_text_is_not():
  rng = np.random.default_rng()
  loop = [np.tile(np.arange(5), 40)] * 3
  noise = [rng.integers(0, 200, 3000) for _ in range(3)]
  assert sweep.repetition_rate(loop) > 0.9 and sweep.repetition_rate(noise) < 0.01
  assert sweep.distinct_n(loop, 2) < 0.05 and sweep.distinct_n(noise, 2) > 0.95
  assert np.isclose(sweep.empirical_entropy(loop), np.log(5))
  assert sweep.empirical_entropy(noise) > np.log(200) - 0.2


def test_line_lengths_and_knee():
  got = sweep.line_lengths([[1, 2, 9, 3], [1, 1, 1, 1], [9]], newline=9)
  assert got["mean"] == (2 + 4 + 0) / 3 and got["censored"] == 1 / 3
  assert np.isclose(sweep.knee([0.1, 1.0, 10.0], [1.0, 0.5, 0.0]), 1.0)
  assert np.isnan(sweep.knee([1, 2], [1.0, 1.0]))
  # A flat or rising repetition curve has no knee, wherever its halfway point would be.
  assert np.isnan(sweep.knee([0.1, 10], [0.30, 0.31]))
  assert np.isnan(sweep.knee([0.1, 0.5, 1, 10], [0, 0, 0, 1e-6]))
