"""Tests for ban_jax/layers/tagging.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.layers.tagging import ContextTagging


@pytest.mark.parametrize("hidden", [0, 8])
def test_masses_start_at_one_are_positive_and_sown(hidden):
  x = jax.random.normal(jax.random.key(0), (2, 7, 16))
  layer = ContextTagging(hidden=hidden)
  params = layer.init(jax.random.key(1), x)["params"]
  mass, state = layer.apply({"params": params}, x, mutable=["intermediates"])
  assert mass.shape == (2, 7) and mass.dtype == jnp.float32
  np.testing.assert_allclose(mass, 1.0, rtol=1e-6)          # a no-op at initialisation
  np.testing.assert_array_equal(state["intermediates"]["key_mass"][0], mass)
  # The loss can move the masses: the gradient reaches the projection.
  grads = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) * x[..., 0]))(params)
  assert float(jnp.max(jnp.abs(grads["mass"]["kernel"]))) > 0
  # Far from initialisation the masses stay positive.
  params["mass"]["kernel"] = -100.0 * jnp.ones_like(params["mass"]["kernel"])
  assert float(jnp.min(layer.apply({"params": params}, jnp.abs(x)))) >= 0.0
