"""Tests for ban_jax/diagnostics/checks.py's model-free parts: verdicts and masses."""

import numpy as np

from ban_jax.diagnostics import checks


def test_verdicts_read_the_interval_in_the_predicted_direction():
  assert checks.verdict({"value": 0.3, "low": 0.1, "high": 0.5}) == "held"
  assert checks.verdict({"value": -0.3, "low": -0.5, "high": -0.1}) == "did not hold"
  assert checks.verdict({"value": 0.0, "low": -0.05, "high": 0.05}) == "did not hold"
  assert checks.verdict({"value": 0.1, "low": -0.1, "high": 0.3}) == "inconclusive"
  assert checks.verdict({"value": -0.3, "low": -0.5, "high": -0.1}, sign=-1) == "held"


def test_masses_without_entropy_ignore_it():
  rng = np.random.default_rng()
  m = {k: rng.normal(size=30) for k in checks.COMPONENTS}
  a = checks.masses(m)
  m["entropy"] = rng.normal(size=30) * 100
  b = checks.masses(m)
  np.testing.assert_allclose(a["M_without_entropy"], b["M_without_entropy"])
  assert not np.allclose(a["M"], b["M"])
