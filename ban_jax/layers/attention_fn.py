"""Gravity attention as flax's `attention_fn`, for linen and NNX attention layers.

`gravity_attention_fn` takes every argument flax's `dot_product_attention` takes (linen's and
NNX's), so `nn.MultiHeadDotProductAttention(attention_fn=gravity_attention_fn)` and
`nnx.MultiHeadAttention(attention_fn=gravity_attention_fn)` work as they do with flax's own.
Arguments it cannot honour raise instead of being dropped. `GravityAttentionFn` is the same
function with a learnable per-head mass, as a linen module (the NNX one is
`ban_jax.nnx.GravityAttentionFn`).

Two flax features need the attention weights themselves: attention dropout and
`sow_weights=True`. Those calls run the materialised reference path
(`gravity_ops.gravity_attention_weights`), O(q_len × k_len) memory like flax's own. Everything
else runs the memory-efficient implementation picked by `implementation`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ban_jax.layers.attention import DEFAULT_MASS_INIT
from ban_jax.ops import gravity as gravity_ops

def gravity_attention_fn(query, key, value, bias=None, mask=None, broadcast_dropout=True,
                         dropout_rng=None, dropout_rate=0.0, deterministic=False, dtype=None,
                         precision=None, module=None, *, force_fp32_for_softmax=False,
                         einsum_dot_general=None, qk_attn_weights_einsum=None,
                         attn_weights_value_einsum=None, promote_dtype=None, is_causal=False,
                         score="gravity", mass=None, mass_init=DEFAULT_MASS_INIT, eps=0.1,
                         causal=False, implementation="auto"):
  """Gravity attention with the call signature of flax's `dot_product_attention`.

  The mass M per head is `mass` if given, else the fixed softplus(mass_init); for a learnable
  mass pass a `GravityAttentionFn()` (linen) or `ban_jax.nnx.GravityAttentionFn` (NNX).

  Args:
    query: [batch..., q_len, heads, head_dim].
    key: [batch..., k_len, kv_heads, head_dim].
    value: [batch..., k_len, kv_heads, v_dim].
    bias: float broadcastable to [batch..., heads, q_len, k_len], added to the logits, or None.
    mask: bool broadcastable to [batch..., heads, q_len, k_len] (True attends), or None; this
      carries causality in linen models (`nn.make_causal_mask`).
    broadcast_dropout: as in flax: one dropout mask [q_len, k_len] shared by the batch and
      head axes (True) or one per weight (False).
    dropout_rng: PRNG key of the dropout mask; required when dropout is on.
    dropout_rate: attention dropout rate in [0, 1), applied to the normalised weights and
      rescaled by 1 / (1 - rate), exactly as flax does (same key, same mask).
    deterministic: no dropout when True.
    dtype: output dtype (and computation dtype when `promote_dtype` is given); None keeps the
      promoted input dtype.
    precision: accepted for compatibility; float32 matmuls always run at HIGHEST precision,
      which meets any requested precision.
    module: the calling flax module (flax passes it under `sow_weights=True`): the attention
      weights [batch..., heads, q_len, k_len] (before dropout) are sown into it as
      "attention_weights" (linen: collection "intermediates"; NNX: `nnx.Intermediate`).
    force_fp32_for_softmax: accepted (linen); the softmax always runs in float32 or wider.
    einsum_dot_general: must be None (custom einsums cannot express gravity logits).
    qk_attn_weights_einsum: must be None (as above).
    attn_weights_value_einsum: must be None (as above).
    promote_dtype: NNX's dtype promotion, applied to (query, key, value) with `dtype`, or None.
    is_causal: NNX's flag: also mask key j > query i (flax's top-left-aligned causal mask).
    score: "gravity", "inverse_square" or "dot" ("dot" with `mass=None` is flax's attention).
    mass: fixed positive [heads] masses, or None.
    mass_init: raw mass when `mass` is None (M = softplus(mass_init)).
    eps: distance softening ε.
    causal: also mask keys after the query, aligned to the end (the queries are the last q_len
      keys), as the models do.
    implementation: as in `ban_jax.ops.gravity.gravity_attention`; not used by the weights path.

  Returns:
    [batch..., q_len, heads, v_dim]. A query whose row is fully masked (it may attend to no
    key) gets zeros, with zero gradients; flax's `dot_product_attention` gives it the uniform
    average of the values instead. Masking every key of a real query is usually a bug; with
    padding queries, zeros are what the loss mask expects.

  Derivatives: grad, jvp of grad, and (with an explicit mask) grad of grad; not pure forward
  mode. docs/derivatives.md has the table per implementation.

  Raises:
    ValueError: for a custom einsum, a dropout rate outside [0, 1), or dropout without an rng.
    TypeError: for the `GravityAttentionFn` class passed where an instance belongs.
  """
  del precision, force_fp32_for_softmax  # Honoured by construction (see Args).
  _check_arrays(query, key, value)
  # Custom einsums (AQT quantisation) replace one q·k product; gravity logits are distances.
  einsums = {"einsum_dot_general": einsum_dot_general,
             "qk_attn_weights_einsum": qk_attn_weights_einsum,
             "attn_weights_value_einsum": attn_weights_value_einsum}
  for name, fn in einsums.items():
    if fn is not None:
      raise ValueError(f"{name} is not supported by gravity attention, whose logits are "
                       "distances rather than one q·k einsum; leave it unset (drop the layer's "
                       f"{name} / {name}_cls).")
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate={dropout_rate} must be in [0, 1); set the attention "
                     "layer's dropout_rate accordingly.")
  dropout = dropout_rate > 0.0 and not deterministic
  if dropout and dropout_rng is None:
    raise ValueError("attention dropout is on (dropout_rate > 0, deterministic=False) but "
                     "dropout_rng is None; give the layer a 'dropout' rng (linen: "
                     "apply(..., rngs={'dropout': key}); NNX: rngs=nnx.Rngs(dropout=0)) or run "
                     "it deterministic.")
  if promote_dtype is not None:
    query, key, value = promote_dtype((query, key, value), dtype=dtype)
  heads = query.shape[-2]
  if mass is None and score == "gravity":
    mass = jax.nn.softplus(jnp.full((heads,), mass_init, jnp.float32))
  q_offset = None
  if is_causal:
    # Key j is visible to query i when j <= i + q_offset: top-left alignment is q_offset 0,
    # and with `causal` as well the stricter of the two offsets wins.
    q_offset = min(0, key.shape[-3] - query.shape[-3]) if causal else 0
  batch_dims = query.shape[:-3]
  flat = lambda x: x.reshape((-1,) + x.shape[-3:])
  args = (flat(query), flat(key), flat(value), mass)
  kwargs = dict(eps=eps, causal=causal or is_causal, q_offset=q_offset, score=score,
                bias=_flat_dense(bias, batch_dims), mask=_flat_dense(mask, batch_dims))
  if dropout or module is not None:
    _, weights = gravity_ops.gravity_attention_weights(*args, **kwargs)
    out_dtype = jnp.result_type(query, key, value)
    weights = weights.reshape(batch_dims + weights.shape[1:])
    if module is not None:
      _sow_weights(module, weights.astype(out_dtype))
    if dropout:
      weights = attention_dropout(weights, dropout_rng, dropout_rate, broadcast_dropout,
                                  batch_ndim=len(batch_dims))
    out = _weighted_values(flat(weights), flat(value)).astype(out_dtype)
  else:
    out = gravity_ops.gravity_attention(*args, implementation=implementation, **kwargs)
  out = out.reshape(batch_dims + out.shape[1:])
  return out if dtype is None else out.astype(dtype)


def _check_arrays(query, key, value):
  """One clear error for the misuses that otherwise fail deep inside JAX or flax."""
  for name, x in (("query", query), ("key", key), ("value", value)):
    if isinstance(x, nn.Module) or not hasattr(x, "ndim"):
      raise TypeError(
          f"gravity attention got {type(x).__name__} as its {name}, not an array: pass "
          "attention_fn=GravityAttentionFn() (an instance, called by flax with the arrays) or "
          "attention_fn=gravity_attention_fn, not the class GravityAttentionFn.")


def attention_dropout(weights, rng, rate: float, broadcast: bool, *, batch_ndim: int):
  """Flax's attention dropout: keep each weight with probability 1 - rate, rescale the kept.

  The mask is drawn as flax draws it (`jax.random.bernoulli` at the same shape), so a model
  with the same dropout key drops the same weights as with flax's `dot_product_attention`.

  Args:
    weights: float [batch..., heads, q_len, k_len] normalised attention weights.
    rng: PRNG key.
    rate: dropout rate in [0, 1).
    broadcast: one [q_len, k_len] mask for every batch element and head.
    batch_ndim: number of batch axes in `weights`.

  Returns:
    [batch..., heads, q_len, k_len], same dtype.
  """
  keep_prob = 1.0 - rate
  shape = ((1,) * (batch_ndim + 1) + weights.shape[-2:]) if broadcast else weights.shape
  keep = jax.random.bernoulli(rng, keep_prob, shape)
  return weights * (keep.astype(weights.dtype) / jnp.asarray(keep_prob, weights.dtype))


def _flat_dense(x, batch_dims):
  """A mask or bias broadcastable to [batch..., h, q, k] as [prod(batch) or 1, h, q, k]."""
  if x is None:
    return None
  x = jnp.asarray(x)
  x = x.reshape((1,) * (len(batch_dims) + 3 - x.ndim) + x.shape)
  if any(d != 1 for d in x.shape[:-3]):
    x = jnp.broadcast_to(x, batch_dims + x.shape[-3:])
  return x.reshape((-1,) + x.shape[-3:])


def _weighted_values(weights, value):
  """[b, heads, q, k] weights × [b, k, kv_heads, d] values -> float32 [b, q, heads, d]."""
  b, heads, q_len, k_len = weights.shape
  kv_heads = value.shape[-2]
  w = weights.reshape(b, kv_heads, heads // kv_heads, q_len, k_len).astype(jnp.float32)
  out = jnp.einsum("bkgqs,bskd->bqkgd", w, value.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return out.reshape(b, q_len, heads, value.shape[-1])


def _sow_weights(module, weights):
  """Sows the weights the way flax's own attention does, for a linen or an NNX module."""
  if isinstance(module, nn.Module):
    module.sow("intermediates", "attention_weights", weights)
    return
  from flax import nnx  # pylint: disable=g-import-not-at-top
  module.sow(nnx.Intermediate, "attention_weights", weights)


class GravityAttentionFn(nn.Module):
  """A drop-in `attention_fn` for `nn.MultiHeadDotProductAttention` with a learnable mass.

  Pass an instance (`nn.MultiHeadDotProductAttention(..., attention_fn=GravityAttentionFn())`):
  flax adopts it as a submodule, so its `gravity_mass_log` [heads] parameter (M = softplus)
  trains with the rest of the model. One instance shared by several layers shares one set of
  masses; give each layer its own instance for per-layer masses.

  Attributes:
    score: "gravity", "inverse_square" or "dot".
    mass_init: raw initial value of `gravity_mass_log` (M = softplus(mass_init)).
    eps: distance softening ε.
    causal: add a causal mask on top of the mask flax passes.
    implementation: as in `ban_jax.ops.gravity.gravity_attention`.
  """
  score: str = "gravity"
  mass_init: float = DEFAULT_MASS_INIT
  eps: float = 0.1
  causal: bool = False
  implementation: str = "auto"

  def __post_init__(self):
    # flax calls attention_fn(query, key, value, ...): given the class itself, that builds a
    # module whose fields are arrays, and fails later on an unrelated attribute.
    if not isinstance(self.score, str):
      raise TypeError("attention_fn=GravityAttentionFn was given the class; pass an instance, "
                      "attention_fn=GravityAttentionFn(), so that flax calls it with the arrays.")
    super().__post_init__()

  def __call__(self, query, key, value, bias=None, mask=None, broadcast_dropout=True,
               dropout_rng=None, dropout_rate=0.0, deterministic=False, dtype=None,
               precision=None, module=None, *, force_fp32_for_softmax=False,
               einsum_dot_general=None, qk_attn_weights_einsum=None,
               attn_weights_value_einsum=None, promote_dtype=None, is_causal=False):
    """Same arguments and result as `gravity_attention_fn` (and flax's attention_fn).

    flax's layers read this signature to decide which arguments to pass: keep it explicit.
    """
    if self.scope is None:
      raise TypeError("GravityAttentionFn is a linen module and was called unbound (inside an "
                      "NNX layer?); in NNX use ban_jax.nnx.GravityAttentionFn(num_heads, "
                      "rngs=...) for a learnable mass, or the function gravity_attention_fn.")
    return self._attend(
        query, key, value, bias, mask, broadcast_dropout, dropout_rng, dropout_rate,
        deterministic, dtype, precision, module, force_fp32_for_softmax=force_fp32_for_softmax,
        einsum_dot_general=einsum_dot_general, qk_attn_weights_einsum=qk_attn_weights_einsum,
        attn_weights_value_einsum=attn_weights_value_einsum, promote_dtype=promote_dtype,
        is_causal=is_causal)

  @nn.compact
  def _attend(self, query, key, value, bias=None, mask=None, broadcast_dropout=True,
              dropout_rng=None, dropout_rate=0.0, deterministic=False, dtype=None,
              precision=None, module=None, *, force_fp32_for_softmax=False,
              einsum_dot_general=None, qk_attn_weights_einsum=None,
              attn_weights_value_einsum=None, promote_dtype=None, is_causal=False):
    mass = None
    if self.score == "gravity":
      raw = self.param("gravity_mass_log", nn.initializers.constant(self.mass_init),
                       (query.shape[-2],), jnp.float32)
      mass = nn.softplus(raw)
    return gravity_attention_fn(
        query, key, value, bias=bias, mask=mask, broadcast_dropout=broadcast_dropout,
        dropout_rng=dropout_rng, dropout_rate=dropout_rate, deterministic=deterministic,
        dtype=dtype, precision=precision, module=module,
        force_fp32_for_softmax=force_fp32_for_softmax, einsum_dot_general=einsum_dot_general,
        qk_attn_weights_einsum=qk_attn_weights_einsum,
        attn_weights_value_einsum=attn_weights_value_einsum, promote_dtype=promote_dtype,
        is_causal=is_causal, mass=mass, score=self.score, eps=self.eps, causal=self.causal,
        implementation=self.implementation)
