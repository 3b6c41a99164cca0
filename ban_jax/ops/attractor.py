"""The attractor iteration and the influence gate of the Branched Attractor Network.

The Branched Attractor Network is the model of "Information Gravity".

The attractor refines a state by the damped fixed-point map

    z_{t+1} = F(z_t) = (1 - alpha) * z_t + alpha * tanh(z_t @ w + h + gamma * influence)

for a fixed number of steps. sigma is `tanh`: it is 1-Lipschitz and bounded, so with
`‖w‖₂ < 1` the map is a contraction (Lipschitz constant ≤ 1 - alpha + alpha·‖w‖₂ < 1), the fixed
point z* = tanh(z* @ w + drive) is unique, and states stay in [-1, 1] whatever `w` becomes in
training. `alpha` sets the rate of approach, not the fixed point. `w` acts on row vectors
(`z @ w` is "Information Gravity"'s `W z` with W = wᵀ).

The influence is held constant during the iteration (it enters the drive `h + gamma * influence`).

Gradients:
  * `implicit_grad=False` (default): backpropagation through the loop; memory grows with `steps`
    and the gradient is exact for the finite iteration, whether or not it has converged.
  * `implicit_grad=True`: implicit differentiation at the fixed point (DEQ): the adjoint
    u = g + J_Fᵀ u is solved by `steps` fixed-point iterations of the VJP at the final state, so
    memory is constant in `steps`. Exact only when the forward has converged on a contractive map;
    the gradient w.r.t. the starting state is zero (the fixed point does not depend on it).
"""

import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp


def safe_norm(x, axis=-1):
  """Euclidean norm over `axis` whose gradient at x = 0 is 0 instead of NaN.

  Args:
    x: [..., d] float array.
    axis: the reduced axis.

  Returns:
    [...] array of norms, dtype of `x`.
  """
  squared = jnp.sum(jnp.square(x), axis=axis)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def attractor_step(z, drive, w, *, alpha: float):
  """One damped step z -> (1 - alpha) z + alpha tanh(z @ w + drive).

  Args:
    z: [..., d] state.
    drive: [..., d] input drive (h + gamma * influence), broadcastable to `z`.
    w: [d, d] recurrent weights acting on row vectors.
    alpha: step size in (0, 1].

  Returns:
    [..., d] next state, dtype of `z`.
  """
  return (1.0 - alpha) * z + alpha * jnp.tanh(z @ w + drive)


def _at_least_f32(x):
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check(alpha, steps):
  if not isinstance(steps, int):
    raise TypeError(f"attractor steps must be a positive integer, got {steps!r}; set steps >= 1.")
  if steps < 1:
    raise ValueError(f"attractor steps must be a positive integer, got {steps!r}; set steps >= 1.")
  if isinstance(alpha, (int, float)) and not 0.0 < alpha <= 1.0:
    raise ValueError(f"attractor alpha must lie in (0, 1], got {alpha!r}; pick e.g. alpha=0.5.")


def _forward(w, drive, z0, alpha, steps, unroll):
  """Runs `steps` damped steps; returns the final state and the last step's residual norm."""
  def body(_, carry):
    _, z = carry
    return z, attractor_step(z, drive, w, alpha=alpha)

  z_prev, z = lax.fori_loop(0, steps, body, (z0, z0), unroll=unroll)
  residual = safe_norm(_at_least_f32(z - z_prev))
  return z, lax.stop_gradient(residual)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _implicit(w, drive, z0, alpha, steps, unroll):
  return _forward(w, drive, z0, alpha, steps, unroll)


def _implicit_fwd(w, drive, z0, alpha, steps, unroll):
  z, residual = _forward(w, drive, z0, alpha, steps, unroll)
  # Only the fixed point is saved: backward memory does not depend on `steps`.
  return (z, residual), (w, drive, z)


def _implicit_bwd(alpha, steps, unroll, saved, cotangents):
  w, drive, z = saved
  g, _ = cotangents  # The residual is a diagnostic: its cotangent is ignored.
  _, vjp_z = jax.vjp(lambda z_: attractor_step(z_, drive, w, alpha=alpha), z)
  # Adjoint equation u = g + J_F(z*)ᵀ u, solved by the same contraction as the forward pass.
  u = lax.fori_loop(0, steps, lambda _, u_: g + vjp_z(u_)[0], g, unroll=unroll)
  _, vjp_params = jax.vjp(lambda w_, d_: attractor_step(z, d_, w_, alpha=alpha), w, drive)
  dw, ddrive = vjp_params(u)
  return dw, ddrive, jnp.zeros_like(z)


_implicit.defvjp(_implicit_fwd, _implicit_bwd)


def iterate(z0, h, w, influence=None, *, alpha: float, steps: int, gamma: float = 1.0,
            implicit_grad: bool = False, unroll: Any = 1):
  """Iterates the attractor map `steps` times from `z0`.

  Args:
    z0: [..., d] starting state.
    h: [..., d] input drive (the focus branch's projection).
    w: [d, d] recurrent weights acting on row vectors (`z @ w`).
    influence: optional [..., d] gated peripheral signal, constant over the iteration.
    alpha: step size in (0, 1]; the fixed point does not depend on it.
    steps: number of steps (a Python int, >= 1).
    gamma: scale of the influence in the drive.
    implicit_grad: False backpropagates through the loop; True differentiates implicitly at the
      fixed point (memory constant in `steps`; exact only at a converged, contractive fixed point).
    unroll: passed to `lax.fori_loop`; `True` unrolls fully (XLA's cost analysis counts a loop body
      once, so FLOP counts need the unrolled form).

  Returns:
    (z, residual): z is [..., d] (dtype of the promoted inputs) after `steps` steps; residual is
    [...] (float32, or float64 for float64 inputs), ‖z_steps − z_{steps−1}‖ per position, with no
    gradient (a diagnostic).
  """
  _check(alpha, steps)
  drive = h if influence is None else h + gamma * influence
  dtype = jnp.result_type(z0, drive, w)
  drive = drive.astype(dtype)
  z0 = jnp.broadcast_to(z0, jnp.broadcast_shapes(z0.shape, drive.shape)).astype(dtype)
  drive = jnp.broadcast_to(drive, z0.shape)
  w = w.astype(dtype)
  if implicit_grad:
    return _implicit(w, drive, z0, alpha, steps, unroll)
  return _forward(w, drive, z0, alpha, steps, unroll)


def influence_gate(signal, reference, *, threshold: float, cap: float):
  """Threshold-gated, norm-capped peripheral influence (the gate of "Information Gravity").

  Per position, with r = ‖reference‖: if ‖signal‖ ≤ threshold·r the output is exactly zero (the
  gate is closed); otherwise it is `signal` rescaled, if needed, so that its norm is at most cap·r.
  Both the threshold and the cap are fractions of the reference's norm (the focus drive), so the
  periphery can never move the focus's drive by more than `cap` of its own size. The jump at the
  threshold is intended (a hard gate); gradients flow through an open gate only.

  Args:
    signal: [..., d] peripheral message.
    reference: [..., d] focus drive the threshold and cap are measured against.
    threshold: gate-opening fraction, 0 <= threshold <= cap.
    cap: maximum norm as a fraction of ‖reference‖, > 0.

  Returns:
    (gated, is_open): gated is [..., d] like `signal`, with ‖gated‖ ≤ cap·‖reference‖ up to
    rounding; is_open is a [...] bool array.
  """
  if isinstance(threshold, (int, float)) and isinstance(cap, (int, float)):
    if not (cap > 0 and 0 <= threshold <= cap):
      raise ValueError(f"influence gate needs 0 <= threshold <= cap and cap > 0, got threshold="
                       f"{threshold!r}, cap={cap!r}; e.g. threshold=0.02, cap=0.15.")
  signal_norm = safe_norm(_at_least_f32(signal))
  reference_norm = safe_norm(_at_least_f32(reference))
  is_open = signal_norm > threshold * reference_norm
  limit = cap * reference_norm
  # Double `where` keeps the gradient finite when the signal is zero.
  denominator = jnp.where(signal_norm > 0, signal_norm, 1.0)
  scale = jnp.where(signal_norm > limit, limit / denominator, 1.0)
  gated = jnp.where(is_open[..., None], signal * scale[..., None].astype(signal.dtype),
                    jnp.zeros_like(signal))
  return gated, is_open
