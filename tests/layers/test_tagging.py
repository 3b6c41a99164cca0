"""Tests for ban_jax/layers/tagging.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.layers.tagging import ContextTagging
from ban_jax.layers.tagging import SurprisalTagging


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


def test_surprisal_masses_start_at_one_follow_the_surprisal_and_stay_positive():
  s = jnp.abs(jax.random.normal(jax.random.key(2), (2, 9))) * 3
  layer = SurprisalTagging()
  params = layer.init(jax.random.key(1), s)["params"]
  mass, state = layer.apply({"params": params}, s, mutable=["intermediates"])
  assert mass.shape == (2, 9) and mass.dtype == jnp.float32
  np.testing.assert_allclose(mass, 1.0, rtol=1e-6)
  np.testing.assert_array_equal(state["intermediates"]["key_mass"][0], mass)
  grads = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, s) * s))(params)
  assert float(grads["slope"]) > 0
  params = {"slope": jnp.float32(0.7), "bias": jnp.float32(-0.2)}
  mass = np.asarray(layer.apply({"params": params}, s), np.float64)
  want = np.log1p(np.exp(0.7 * np.asarray(s, np.float64) - 0.2))
  assert np.max(np.abs(mass - want) / want) < 1e-6
  assert np.all(np.diff(mass[0][np.argsort(np.asarray(s[0]))]) >= 0)   # heavier when surprising
  params = {"slope": jnp.float32(-100.0), "bias": jnp.float32(0.0)}
  assert float(jnp.min(layer.apply({"params": params}, s))) >= 0.0
