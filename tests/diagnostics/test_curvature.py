"""Tests for ban_jax/diagnostics/curvature.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ban_jax.diagnostics import curvature


def test_power_iteration_finds_the_eigenvalues_of_a_known_quadratic():
  rng = np.random.default_rng()
  q = np.linalg.qr(rng.normal(size=(12, 12)))[0]
  eig = np.asarray([-9.0, 7.0, 3.0, 1.0, 0.5] + [0.1] * 7)   # largest in magnitude negative
  a = jnp.asarray((q * eig) @ q.T, jnp.float32)
  f = lambda x: 0.5 * x.reshape(-1) @ a @ x.reshape(-1)
  x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  np.testing.assert_allclose(curvature.hvp(f, x, v).reshape(-1), a @ v.reshape(-1), rtol=1e-4,
                             atol=1e-4)
  values, vectors = curvature.top_eigenvalues(f, x, jax.random.key(0), k=3, iterations=100)
  np.testing.assert_allclose(values, [-9.0, 7.0, 3.0], rtol=1e-3)
  assert abs(abs(float(vectors[0].reshape(-1) @ q[:, 0])) - 1) < 1e-3


class _TinyLM(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(11, 4)(tokens)
    x = jnp.cumsum(jnp.tanh(nn.Dense(4)(x)), axis=1)   # causal mixing
    return nn.Dense(11)(jnp.tanh(x))


def test_gravity_and_curvature_through_a_model_match_dense_derivatives():
  model = _TinyLM()
  tokens = jnp.asarray([3, 1, 4])
  params = model.init(jax.random.key(1), tokens[None])["params"]
  phi = curvature.embedding_potential(model, params, tokens)
  zero = jnp.zeros((3, 4))

  def by_embeddings(e, t):   # the same Φ written with the embeddings as the input
    x = jnp.cumsum(jnp.tanh(e @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]), 0)
    z = jnp.tanh(x[-1]) @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    return -jax.nn.log_softmax(z)[t]

  e = params["Embed_0"]["embedding"][tokens]
  np.testing.assert_allclose(phi(zero)[2], by_embeddings(e, 2), rtol=1e-6)
  np.testing.assert_allclose(curvature.gravity(phi, 2, zero), -jax.grad(by_embeddings)(e, 2),
                             rtol=1e-5, atol=1e-6)
  dense = jax.hessian(by_embeddings)(e, 2).reshape(12, 12)
  want = np.linalg.eigvalsh(np.asarray(dense, np.float64))
  want = want[np.argsort(-np.abs(want))][:2]
  got, _ = curvature.top_eigenvalues(lambda d: phi(d)[2], zero, jax.random.key(2), k=2,
                                     iterations=200)
  np.testing.assert_allclose(got, want, rtol=2e-3)
