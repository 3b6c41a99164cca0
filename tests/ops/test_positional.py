"""Tests for ban_jax/ops/positional.py."""

import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.ops import positional


def test_relative_distance_uses_positions_not_indices():
  # Two packed documents: positions restart at the second one.
  pos = jnp.asarray([[0, 1, 2, 0, 1]])
  d = positional.relative_distance(pos, pos)
  assert d.shape == (1, 5, 5) and d.dtype == jnp.float32
  np.testing.assert_array_equal(d[0, 4], [1, 0, 1, 1, 0])
  np.testing.assert_array_equal(d[0], d[0].T)


def test_power_law_field_matches_numpy_and_is_a_power_law():
  rng = np.random.default_rng(0)
  qp = rng.integers(0, 50, size=(2, 7))
  kp = rng.integers(0, 50, size=(2, 9))
  p = rng.uniform(0.1, 2.0, size=3)
  a = rng.uniform(0.1, 2.0, size=3)
  with jax.enable_x64(True):
    got = np.asarray(positional.power_law_field(jnp.asarray(qp), jnp.asarray(kp),
                                                jnp.asarray(p), jnp.asarray(a)))
  d = np.abs(qp[:, :, None] - kp[:, None, :])[:, None]
  want = -p[None, :, None, None] * np.log(1 + a[None, :, None, None] * d)
  assert got.dtype == np.float64
  np.testing.assert_allclose(got, want, rtol=1e-12)
  # The weight factor exp(bias) is (1 + a d)^-p, and it is 1 at distance 0.
  np.testing.assert_allclose(np.exp(got), (1 + a[None, :, None, None] * d) **
                             -p[None, :, None, None], rtol=1e-12)
  assert np.all(got <= 0)


def test_alibi_field_matches_numpy():
  qp = np.arange(6)[None]
  slopes = positional.alibi_slopes(4)
  got = np.asarray(positional.alibi_field(jnp.asarray(qp), jnp.asarray(qp), jnp.asarray(slopes)))
  d = np.abs(qp[:, :, None] - qp[:, None, :])[:, None]
  np.testing.assert_allclose(got, -slopes[None, :, None, None] * d, rtol=1e-6)


@pytest.mark.parametrize("heads, want", [
    (8, [2.0 ** -i for i in range(1, 9)]),
    (4, [2.0 ** -(2 * i) for i in range(1, 5)]),
    # Not a power of two: the 4-head slopes, then every other 8-head slope.
    (6, [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]),
    (1, [2.0 ** -8]),
])
def test_alibi_slopes_follow_the_paper(heads, want):
  np.testing.assert_allclose(positional.alibi_slopes(heads), want, rtol=1e-6)


def test_alibi_slopes_rejects_zero_heads():
  with pytest.raises(ValueError):
    positional.alibi_slopes(0)


def test_power_law_bias_gradients():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    d = jnp.asarray(rng.integers(0, 100, size=(4, 5)), jnp.float64)
    p = jnp.asarray(rng.uniform(0.2, 2, size=(4, 1)))
    a = jnp.asarray(rng.uniform(0.2, 2, size=(4, 1)))
    jtu.check_grads(lambda p, a: positional.power_law_bias(d, p, a), (p, a), order=2)
    jtu.check_grads(lambda s: positional.alibi_bias(d, s), (p,), order=1)
