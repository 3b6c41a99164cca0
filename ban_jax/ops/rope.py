"""Rotary position embeddings (Su et al., 2021) as a pure function."""

import jax.numpy as jnp


def apply(x, positions, *, max_wavelength: float = 10_000.0):
  """Rotates pairs of features by position-dependent angles.

  Args:
    x: [batch, length, heads, head_dim] with an even head_dim.
    positions: [batch, length] integer positions.
    max_wavelength: the longest wavelength of the rotation frequencies.

  Returns:
    An array shaped and typed like `x`.
  """
  head_dim = x.shape[-1]
  half = head_dim // 2
  freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions[..., None, None].astype(jnp.float32) * freq    # [b, l, 1, half]
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
