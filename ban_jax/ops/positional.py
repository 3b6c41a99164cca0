"""Additive positional fields on attention logits, as pure functions.

Two fields that depend only on the distance between a query and a key position, and that are
added to the attention logits (RoPE, which rotates q and k instead, lives in `ban_jax.ops.rope`):

- Power law (the attention gravitational field of "AGF"; KERPLE's logarithmic variant,
  Chi et al., 2022): bias = -p * log(1 + a * d). The attention weight is multiplied by
  (1 + a * d) ** -p, a power law in the distance d, as a gravitational potential falls with
  distance; p (the exponent) and a (the length scale) are positive and learnable per head.
- ALiBi (Press et al., 2022): bias = -m * d with fixed per-head slopes m, an exponential decay
  of the weight in distance.

Distances come from explicit positions, not array indices, so packed documents (positions that
restart at every document) and decoding against a cache get the right distances.

The element-wise functions (`power_law_bias`, `alibi_bias`) broadcast their arguments, so the
blockwise attention (`ban_jax.ops.gravity`) evaluates them per block in its own layout; the
`*_field` functions materialise `[batch, heads, q_len, k_len]` for references and plots.
"""

import math

import jax.numpy as jnp
import numpy as np


def relative_distance(q_positions, k_positions):
  """Absolute distance between every query and key position.

  Args:
    q_positions: integer [batch, q_len].
    k_positions: integer [batch, k_len].

  Returns:
    float32 [batch, q_len, k_len]: |q_positions[b, i] - k_positions[b, j]|.
  """
  delta = q_positions[:, :, None].astype(jnp.int32) - k_positions[:, None, :].astype(jnp.int32)
  return jnp.abs(delta).astype(jnp.float32)


def power_law_bias(distance, power, scale):
  """The power-law (KERPLE-log) bias, element-wise with broadcasting.

  Args:
    distance: non-negative float distances, any shape.
    power: positive exponent p, broadcastable against `distance`.
    scale: positive length scale a, broadcastable against `distance`.

  Returns:
    -power * log(1 + scale * distance), in the promoted float dtype.
  """
  return -power * jnp.log1p(scale * distance)


def alibi_bias(distance, slopes):
  """The ALiBi bias -slope * distance, element-wise with broadcasting."""
  return -slopes * distance


def power_law_field(q_positions, k_positions, power, scale):
  """The power-law bias for every head, query and key.

  Args:
    q_positions: integer [batch, q_len].
    k_positions: integer [batch, k_len].
    power: positive float [heads].
    scale: positive float [heads].

  Returns:
    float [batch, heads, q_len, k_len].
  """
  d = relative_distance(q_positions, k_positions)[:, None]
  return power_law_bias(d, power[None, :, None, None], scale[None, :, None, None])


def alibi_field(q_positions, k_positions, slopes):
  """The ALiBi bias for every head, query and key: float [batch, heads, q_len, k_len]."""
  d = relative_distance(q_positions, k_positions)[:, None]
  return alibi_bias(d, slopes[None, :, None, None])


def alibi_slopes(num_heads: int) -> np.ndarray:
  """ALiBi's fixed per-head slopes (Press et al., 2022).

  For a power of two n, the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8); otherwise the
  slopes for the largest power of two below n, followed by every other slope of twice that.

  Args:
    num_heads: number of heads, positive.

  Returns:
    float32 numpy [num_heads].
  """
  def geometric(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  if num_heads <= 0:
    raise ValueError(f"num_heads must be positive, got {num_heads}")
  low = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = geometric(low)
  if low < num_heads:
    slopes += geometric(2 * low)[0::2][: num_heads - low]
  return np.asarray(slopes, np.float32)
