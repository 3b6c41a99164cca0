"""Tests for ban_jax/layers/positional.py."""

import jax
import numpy as np

from ban_jax.layers.positional import PowerLawField, power_law_power_init


def test_power_law_field_initial_values():
  p, a = PowerLawField(num_heads=6).apply(
      PowerLawField(num_heads=6).init(jax.random.key(0)))
  np.testing.assert_allclose(p, np.geomspace(2.0, 1 / 16, 6), rtol=1e-5)
  np.testing.assert_allclose(a, np.ones(6), rtol=1e-5)
  assert np.all(np.asarray(p) > 0)


def test_power_init_single_head_is_between_the_ends():
  (p,) = power_law_power_init(1)
  assert 1 / 16 < p < 2.0
