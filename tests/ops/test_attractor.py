"""Tests for ban_jax.ops.attractor: the attractor iteration and the influence gate."""

import functools
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from ban_jax.ops import attractor as A


def _inputs(seed, shape=(3, 5), d=16, scale=0.9, dtype=np.float32):
  """Fresh random (z0, h, w, influence); w has spectral norm `scale` (contractive when < 1)."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  w = scale * q * rng.uniform(0.5, 1.0, size=(1, d))  # singular values in [scale/2, scale]
  z0 = rng.uniform(-1, 1, size=shape + (d,))
  h = rng.normal(size=shape + (d,))
  influence = 0.1 * rng.normal(size=shape + (d,))
  return tuple(np.asarray(a, dtype) for a in (z0, h, w, influence))


def _reference(z0, h, w, influence, alpha, gamma, steps):
  """float64 NumPy loop: returns every state z_0..z_steps."""
  z = np.asarray(z0, np.float64)
  drive = np.asarray(h, np.float64) + gamma * np.asarray(influence, np.float64)
  w = np.asarray(w, np.float64)
  states = [z]
  for _ in range(steps):
    z = (1 - alpha) * z + alpha * np.tanh(z @ w + drive)
    states.append(z)
  return states


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("implicit", [False, True])
def test_iterate_matches_float64_reference(seed, implicit):
  rng = np.random.default_rng(100 + seed)
  alpha, gamma, steps = rng.uniform(0.2, 1.0), rng.uniform(0.0, 2.0), int(rng.integers(1, 12))
  z0, h, w, inf = _inputs(seed, scale=rng.uniform(0.3, 1.5))
  z, res = A.iterate(z0, h, w, inf, alpha=alpha, gamma=gamma, steps=steps,
                     implicit_grad=implicit)
  states = _reference(z0, h, w, inf, alpha, gamma, steps)
  assert z.dtype == jnp.float32 and res.shape == z0.shape[:-1]
  assert _rel(z, states[-1]) < 1e-5
  expected_res = np.linalg.norm(states[-1] - states[-2], axis=-1)
  assert _rel(res, expected_res) < 1e-4


@pytest.mark.parametrize("seed", range(3))
def test_fori_loop_equals_unrolled_python_loop(seed):
  z0, h, w, inf = _inputs(seed)
  steps = 7
  z, res = A.iterate(z0, h, w, inf, alpha=0.6, gamma=1.3, steps=steps)
  z_full, _ = A.iterate(z0, h, w, inf, alpha=0.6, gamma=1.3, steps=steps, unroll=True)

  @jax.jit
  def python_loop(z0, h, w, inf):
    drive = h + 1.3 * inf
    z_prev, z = z0, z0
    for _ in range(steps):
      z_prev, z = z, A.attractor_step(z, drive, w, alpha=0.6)
    return z, jnp.linalg.norm(z - z_prev, axis=-1)

  z_ref, res_ref = python_loop(z0, h, w, inf)
  # Equal up to float32 rounding: XLA fuses the loop body and the unrolled chain differently.
  np.testing.assert_allclose(z, z_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(z_full, z_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(res, res_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(2))
def test_residual_falls_monotonically_and_fixed_point_solves_equation(seed):
  rng = np.random.default_rng(seed)
  alpha = rng.uniform(0.3, 1.0)
  with jax.enable_x64(True):
    z0, h, w, inf = _inputs(seed, scale=rng.uniform(0.5, 0.95), dtype=np.float64)
    residuals = np.stack([
        np.asarray(A.iterate(z0, h, w, inf, alpha=alpha, steps=k)[1]) for k in range(1, 13)])
    # Contraction: each residual is at most the previous one (per position, every step).
    assert np.all(np.diff(residuals, axis=0) <= 1e-15)
    assert np.all(residuals[-1] < 0.2 * residuals[0])
    z, res = A.iterate(z0, h, w, inf, alpha=alpha, steps=400)
    z = np.asarray(z)
    drive = h + inf
    assert _rel(z, np.tanh(z @ w + drive)) < 1e-10
    assert np.max(res) < 1e-10
    # The fixed point depends neither on the start nor on alpha.
    z_other, _ = A.iterate(-z0, h, w, inf, alpha=0.5 * alpha, steps=800)
    assert _rel(z_other, z) < 1e-9


def test_check_grads_unrolled():
  with jax.enable_x64(True):
    z0, h, w, inf = _inputs(7, d=6, shape=(2,), scale=1.2, dtype=np.float64)
    f = lambda z0, h, w, inf: A.iterate(z0, h, w, inf, alpha=0.7, gamma=0.8, steps=5)[0]
    check_grads(f, (z0, h, w, inf), order=1, modes=["fwd", "rev"])


def test_check_grads_implicit_at_converged_fixed_point():
  with jax.enable_x64(True):
    z0, h, w, inf = _inputs(8, d=6, shape=(2,), scale=0.7, dtype=np.float64)
    f = lambda h, w, inf: A.iterate(z0, h, w, inf, alpha=0.8, gamma=0.8, steps=120,
                                    implicit_grad=True)[0]
    check_grads(f, (h, w, inf), order=1, modes=["rev"])


@functools.partial(jax.jit, static_argnames=("implicit", "steps"))
def _grads(z0, h, w, inf, cot, *, implicit, steps):
  def loss(h, w, inf):
    z, _ = A.iterate(z0, h, w, inf, alpha=0.7, gamma=1.1, steps=steps, implicit_grad=implicit)
    return jnp.sum(z * cot)
  return jax.grad(loss, argnums=(0, 1, 2))(h, w, inf)


@pytest.mark.parametrize("seed", range(2))
def test_implicit_and_unrolled_gradients_agree_when_contractive(seed):
  cot = np.random.default_rng(seed).normal(size=(3, 5, 16))

  def grads(dtype, implicit, steps):
    z0, h, w, inf = _inputs(seed, scale=0.8, dtype=dtype)
    return _grads(z0, h, w, inf, cot.astype(dtype), implicit=implicit, steps=steps)

  with jax.enable_x64(True):
    for a, b in zip(grads(np.float64, True, 200), grads(np.float64, False, 200)):
      assert _rel(a, b) < 1e-10
  for a, b in zip(grads(np.float32, True, 60), grads(np.float32, False, 60)):
    assert _rel(a, b) < 1e-4
  # Far from convergence the two differ: the implicit gradient is an approximation there.
  far = [_rel(a, b) for a, b in zip(grads(np.float32, True, 2), grads(np.float32, False, 2))]
  assert max(far) > 1e-3


def test_implicit_gradient_memory_is_constant_in_steps():
  z0, h, w, _ = _inputs(0, shape=(256,), d=64, scale=0.5)

  def temp_bytes(implicit, steps):
    f = lambda w, h: A.iterate(z0, h, w, alpha=0.5, steps=steps, implicit_grad=implicit)[0].sum()
    analysis = jax.jit(jax.grad(f, argnums=(0, 1))).lower(w, h).compile().memory_analysis()
    if analysis is None:
      pytest.skip("this backend has no memory analysis")
    return analysis.temp_size_in_bytes

  assert temp_bytes(True, 64) == temp_bytes(True, 4)
  assert temp_bytes(False, 64) > 4 * temp_bytes(False, 4)


def test_residual_has_no_gradient_and_z0_none_for_implicit():
  z0, h, w, inf = _inputs(1)
  g = jax.grad(lambda h: A.iterate(z0, h, w, inf, alpha=0.5, steps=3)[1].sum())(h)
  assert np.all(np.asarray(g) == 0)
  gz = jax.grad(lambda z0: A.iterate(z0, h, w, inf, alpha=0.5, steps=3,
                                     implicit_grad=True)[0].sum())(z0)
  assert np.all(np.asarray(gz) == 0)


@pytest.mark.parametrize("kwargs, error", [
    (dict(alpha=0.0, steps=3), ValueError), (dict(alpha=1.5, steps=3), ValueError),
    (dict(alpha=0.5, steps=0), ValueError), (dict(alpha=0.5, steps=2.0), TypeError)])
def test_bad_settings_raise(kwargs, error):
  z0, h, w, _ = _inputs(0)
  with pytest.raises(error):
    A.iterate(z0, h, w, **kwargs)


# The influence gate.

_gate_cases = st.tuples(
    st.integers(0, 2**31 - 1),                   # seed
    st.floats(0.0, 0.5),                         # threshold
    st.floats(1e-3, 1.0),                        # cap - threshold
    st.floats(1e-3, 1e3),                        # scale of the signal against the reference
)


@hypothesis.settings(max_examples=30, deadline=None, database=None)
@hypothesis.given(_gate_cases)
def test_gate_is_zero_below_threshold_and_capped_above(case):
  seed, threshold, extra, scale = case
  cap = threshold + extra
  rng = np.random.default_rng(seed)
  signal = (scale * rng.normal(size=(64, 8))).astype(np.float32)
  signal[:4] = 0.0
  reference = rng.normal(size=(64, 8)).astype(np.float32)
  gated, is_open = A.influence_gate(signal, reference, threshold=threshold, cap=cap)
  gated, is_open = np.asarray(gated), np.asarray(is_open)
  s = np.linalg.norm(signal.astype(np.float64), axis=-1)
  r = np.linalg.norm(reference.astype(np.float64), axis=-1)
  out = np.linalg.norm(gated.astype(np.float64), axis=-1)
  clear = np.abs(s - threshold * r) > 1e-5 * r            # away from float ties at the boundary
  np.testing.assert_array_equal(is_open[clear], (s > threshold * r)[clear])
  assert np.all(gated[~is_open] == 0.0)                    # exactly zero when closed
  assert np.all(out <= cap * r * (1 + 1e-6) + 1e-30)       # never above the cap
  below_cap = is_open & (s < cap * r * (1 - 1e-6))
  np.testing.assert_array_equal(gated[below_cap], signal[below_cap])   # untouched below the cap
  capped = is_open & (s > cap * r * (1 + 1e-6))
  np.testing.assert_allclose(out[capped], cap * r[capped], rtol=1e-5)
  cos = np.sum(gated * signal, -1)[capped] / (out * s)[capped]
  np.testing.assert_allclose(cos, 1.0, rtol=1e-5)          # direction preserved


def test_gate_matches_float64_reference_and_grads():
  rng = np.random.default_rng(3)
  signal = rng.normal(size=(32, 8)) * rng.uniform(0.01, 0.5, size=(32, 1))
  reference = rng.normal(size=(32, 8))
  gated32, _ = A.influence_gate(signal.astype(np.float32), reference.astype(np.float32),
                                threshold=0.05, cap=0.15)
  s = np.linalg.norm(signal, axis=-1, keepdims=True)
  r = np.linalg.norm(reference, axis=-1, keepdims=True)
  expected = np.where(s > 0.05 * r, signal * np.minimum(1.0, 0.15 * r / s), 0.0)
  assert _rel(gated32, expected) < 1e-6
  # Gradients away from the kinks (finite differences never cross the threshold or the cap).
  margin = np.minimum(np.abs(s - 0.05 * r), np.abs(s - 0.15 * r)) / r
  keep = margin[:, 0] > 0.01
  with jax.enable_x64(True):
    f = jax.jit(lambda s_, r_: A.influence_gate(s_, r_, threshold=0.05, cap=0.15)[0])
    check_grads(f, (signal[keep], reference[keep]), order=1, modes=["fwd", "rev"], eps=1e-6)


def test_gate_gradient_is_finite_for_zero_signal():
  g = jax.grad(lambda s: A.influence_gate(s, jnp.ones((2, 4)), threshold=0.0, cap=0.15)[0].sum())(
      jnp.zeros((2, 4)))
  assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("threshold,cap", [(0.2, 0.1), (-0.1, 0.15), (0.0, 0.0)])
def test_gate_bad_settings_raise_value_error(threshold, cap):
  with pytest.raises(ValueError):
    A.influence_gate(jnp.ones((2, 4)), jnp.ones((2, 4)), threshold=threshold, cap=cap)
