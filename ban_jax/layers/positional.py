"""Positional schemes of `SelfAttention` and the learnable power-law field.

The power-law field is the attention gravitational field of the AGF paper: a per-head bias that
makes attention weight fall as a power of the distance between query and key.
"""

import flax.linen as nn
import numpy as np

from ban_jax.ops.gravity import softplus_inverse

# What `AttentionConfig.positional` may name: RoPE rotates queries and keys
# (`ban_jax.ops.rope`); "alibi" and "power_law" add a distance bias to the logits
# (`ban_jax.ops.positional`); "none" uses no positions at all.
POSITIONALS = ("rope", "alibi", "power_law", "none")


def power_law_power_init(num_heads: int, low: float = 1 / 16, high: float = 2.0) -> np.ndarray:
  """Initial exponents p_h, geometric from `high` (local heads) to `low` (nearly global heads).

  With a = 1 the weight at distance d is scaled by (1 + d)^-p: p = 2 divides it by 121 at d = 10,
  p = 1/16 by 1.5 at d = 1000, so the heads start at different ranges, as ALiBi's slopes do.

  Returns:
    float32 numpy [num_heads].
  """
  if num_heads == 1:
    return np.asarray([np.sqrt(low * high)], np.float32)
  return np.geomspace(high, low, num_heads).astype(np.float32)


class PowerLawField(nn.Module):
  """Per-head power-law bias parameters (p, a) for `ban_jax.ops.gravity.gravity_attention`.

  The bias on a logit is -p_h log(1 + a_h |pos_i - pos_j|) (KERPLE's log variant), so the
  attention weight is multiplied by (1 + a_h d)^-p_h. p = softplus(`power`), a =
  softplus(`scale`) stay positive.

  Attributes:
    num_heads: query heads.
    scale_init: initial a for every head.
  """
  num_heads: int
  scale_init: float = 1.0

  @nn.compact
  def __call__(self):
    """Returns (p, a), both positive float32 [num_heads]."""
    power0 = softplus_inverse(power_law_power_init(self.num_heads))
    scale0 = softplus_inverse(np.full((self.num_heads,), self.scale_init))
    power = self.param("power", lambda _: power0)
    scale = self.param("scale", lambda _: scale0)
    return nn.softplus(power), nn.softplus(scale)
