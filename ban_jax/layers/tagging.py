"""Context tagging (level two of the Information Gravity paper): a positive mass per token."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ban_jax.ops.gravity import softplus_inverse


class ContextTagging(nn.Module):
  """Maps hidden states to per-token masses m_j > 0, used as `key_mass` by gravity attention.

  m = softplus(w · h + b) (or of a one-hidden-layer MLP when `hidden` > 0). The last projection
  starts at zero and its bias at softplus⁻¹(1), so every token starts with mass 1 and the layer
  starts as a no-op; the masses move only as far as the loss asks. They are sown into
  "intermediates" as `key_mass` for inspection, plots and KV-cache scoring.

  Attributes:
    hidden: width of the hidden layer; 0 for a single projection.
    dtype: computation dtype.
  """
  hidden: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: [batch, length, features] -> float32 masses [batch, length], all > 0."""
    h = x
    if self.hidden:
      h = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(h))
    logit = nn.Dense(1, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                     bias_init=nn.initializers.constant(float(softplus_inverse(1.0))),
                     name="mass")(h)[..., 0]
    mass = nn.softplus(logit.astype(jnp.float32))
    self.sow("intermediates", "key_mass", mass)
    return mass
