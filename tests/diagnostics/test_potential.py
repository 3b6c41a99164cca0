"""Tests for ban_jax/diagnostics/potential.py: against NumPy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from ban_jax.diagnostics import potential


def _rel(got, want):
  return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def _reference_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_potential_and_entropy_match_float64():
  rng = np.random.default_rng()
  z = rng.normal(size=(3, 5, 259)) * 3
  for t in (0.5, 1.0, 2.0):
    log_p = _reference_log_softmax(z / t)
    assert _rel(potential.potential(jnp.asarray(z, jnp.float32), t), -log_p) < 1e-5
    h = -(np.exp(log_p) * log_p).sum(-1)
    assert _rel(potential.entropy(jnp.asarray(z, jnp.float32), t), h) < 1e-5
  # A one-hot-like distribution: the entropy is 0, not nan.
  assert float(potential.entropy(jnp.asarray([0.0, -1e4, -1e4]))) == 0.0


def test_kl_matches_float64_and_handles_zeros():
  rng = np.random.default_rng()
  p = rng.dirichlet(np.ones(40), size=4)
  q = rng.dirichlet(np.ones(40), size=4)
  want = (p * np.log(p / q)).sum(-1)
  with jax.enable_x64(True):
    assert _rel(potential.kl_divergence(p, q), want) < 1e-12
    p[:, :10] = 0
    p /= p.sum(-1, keepdims=True)
    assert _rel(potential.kl_divergence(p, q), (p[:, 10:] * np.log(p[:, 10:] / q[:, 10:])).sum(-1)) < 1e-12
    q2 = q.copy()
    q2[0, 20] = 0
    assert np.isinf(float(potential.kl_divergence(p[0], q2[0])))


def test_gradients():
  z = jax.random.normal(jax.random.key(np.random.randint(1 << 30)), (2, 17))
  check_grads(lambda x: potential.entropy(x, 0.7), (z,), order=2, modes=["rev"], eps=1e-2,
              atol=5e-2, rtol=5e-2)
  check_grads(lambda x: potential.potential(x)[:, 3], (z,), order=2, modes=["rev"], eps=1e-2,
              atol=5e-2, rtol=5e-2)


def test_logit_hessian_is_the_same_for_every_token():
  """The docstring's claim: ∂²Φ(t)/∂z² does not depend on t, and equals diag p − p pᵀ."""
  with jax.enable_x64(True):
    z = jnp.asarray(np.random.default_rng().normal(size=11))
    want = np.asarray(potential.logit_hessian(z))
    p = np.exp(_reference_log_softmax(np.asarray(z)))
    np.testing.assert_allclose(want, np.diag(p) - np.outer(p, p), rtol=1e-12, atol=1e-15)
    for t in (0, 4, 10):
      got = jax.hessian(lambda x: potential.potential(x)[t])(z)
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
