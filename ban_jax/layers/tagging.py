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


class SurprisalTagging(nn.Module):
  """A token's mass from its own surprisal: m_j = softplus(w · s_j + b), s_j = −log P(x_j|x_<j).

  The information-mass theory's potential Φ as the key's gravitational mass: a token that was
  hard to predict (carries much information) can pull harder (w > 0) or less (w < 0); the model
  learns the sign and slope per layer. `s` arrives stop-gradient (a first reading pass of the
  model computes it, see `ban_jax.models.common.read_then_attend`). w starts at 0 and b at
  softplus⁻¹(1): every mass starts at 1, as `ContextTagging`'s do. Sows `key_mass` like it.
  """

  @nn.compact
  def __call__(self, surprisal):
    """surprisal: float [batch, length], in nats -> float32 masses [batch, length], all > 0."""
    w = self.param("slope", nn.initializers.zeros, (), jnp.float32)
    b = self.param("bias", nn.initializers.constant(float(softplus_inverse(1.0))), (),
                   jnp.float32)
    mass = nn.softplus(w * surprisal.astype(jnp.float32) + b)
    self.sow("intermediates", "key_mass", mass)
    return mass
