"""The canonical form that every implementation of gravity attention runs on.

`prepare` validates the arguments of `gravity_attention` once and returns (cfg, diff, aux): a
static `Config`, the differentiable arrays and the integer ones, in the layouts its docstring
lists. The reference and blockwise paths (`xla`) and the fused kernels (`pallas`) all take this
form, so that validation, dtype promotion and the defaults (q_offset, positions) exist once.
The visibility rule (causal, segments, a user mask) lives here too: the reference and the
blockwise path must agree on it exactly.
"""

import math
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np


SCORES = ("gravity", "inverse_square", "dot")
IMPLEMENTATIONS = ("auto", "reference", "xla", "pallas")
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512


def softplus_inverse(y):
  """The raw parameter whose softplus is `y` (> 0): log(expm1(y)), stable for large y.

  The learnable masses and positional parameters are softplus of a raw parameter; this gives
  the raw initial value (a float32 numpy constant, usable inside traced init code) for a
  wanted positive one.
  """
  y = np.asarray(y, np.float64)
  return (y + np.log(-np.expm1(-y))).astype(np.float32)


class Config(NamedTuple):
  """Static (hashable) description of one call, after validation."""
  score: str
  eps: float
  causal: bool
  scale: float        # 1/sqrt(head_dim), used by "dot"
  q_len: int
  k_len: int
  block_q: int
  block_k: int


def _pair(x, name, q_len, k_len, batch):
  """Splits a [batch, length] array or a (q, k) pair into (q [batch, q_len], k [batch, k_len])."""
  if isinstance(x, (tuple, list)):
    if len(x) != 2:
      raise ValueError(f"{name} must be one [batch, length] array or a pair (query, key).")
    xq, xk = jnp.asarray(x[0]), jnp.asarray(x[1])
  else:
    x = jnp.asarray(x)
    if q_len != k_len:
      raise ValueError(f"{name} must be a pair (query [batch, q_len], key [batch, k_len]) when "
                      f"q_len ({q_len}) != k_len ({k_len}).")
    xq = xk = x
  for arr, length, side in ((xq, q_len, "query"), (xk, k_len, "key")):
    if arr.ndim != 2 or arr.shape[1] != length or arr.shape[0] not in (1, batch):
      raise ValueError(f"{name} for the {side} side has shape {arr.shape}; expected "
                      f"[batch={batch}, {length}].")
  return (jnp.broadcast_to(xq, (batch, q_len)).astype(jnp.int32),
          jnp.broadcast_to(xk, (batch, k_len)).astype(jnp.int32))


def _head_vector(x, name, heads, dtype):
  """A scalar or [heads] array -> [heads] in `dtype`."""
  x = jnp.asarray(x)
  if x.ndim == 0:
    x = jnp.broadcast_to(x, (heads,))
  if x.shape != (heads,):
    raise ValueError(f"{name} has shape {x.shape}; it must be one value per query head, "
                    f"shape ({heads},).")
  return x.astype(dtype)


def _dense_4d(x, name, batch, heads, q_len, k_len, dtype):
  """Broadcasts a bias/mask to [batch or 1, heads or 1, q_len, k_len]."""
  x = jnp.asarray(x)
  if x.ndim > 4:
    raise ValueError(f"{name} has {x.ndim} dimensions; it must broadcast to [batch, heads, "
                    f"q_len, k_len].")
  x = x.reshape((1,) * (4 - x.ndim) + x.shape)
  target = (batch if x.shape[0] != 1 else 1, heads if x.shape[1] != 1 else 1, q_len, k_len)
  try:
    return jnp.broadcast_to(x, target).astype(dtype)
  except ValueError as e:
    raise ValueError(f"{name} of shape {x.shape} does not broadcast to [batch={batch}, "
                    f"heads={heads}, q_len={q_len}, k_len={k_len}].") from e


def prepare(query, key, value, mass, *, eps=0.1, causal=True, segment_ids=None,
            positions=None, key_mass=None, bias=None, mask=None, power_law=None,
            alibi_slopes=None, q_offset=None, score="gravity", block_q=DEFAULT_BLOCK_Q,
            block_k=DEFAULT_BLOCK_K):
  """Validates the arguments and returns the canonical form (cfg, diff, aux).

  This is also the contract of `ban_jax.ops.gravity.pallas.gravity_attention_pallas(cfg, diff,
  aux)`, which must return [batch, q_len, heads, v_dim] in q's dtype and be differentiable
  w.r.t. every array of `diff` (None entries are absent features):

  - cfg: `Config` (static; q_len/k_len unpadded, block sizes clamped to the lengths).
  - diff["q"] [b, tq, h, d], ["k"] [b, tk, kvh, d], ["v"] [b, tk, kvh, dv], one float dtype.
  - diff["m2"]: M² [h] (float32; ones for "dot" without mass; None for "inverse_square").
  - diff["key_term"] [b, tk]: the key mass m_j for "gravity" (multiplies the logit), log m_j
    otherwise (added to it).
  - diff["pl_p"], diff["pl_a"] [h]: power law -p log(1 + a d); diff["alibi"] [h]: -m d.
  - diff["bias"] [b|1, h|1, tq, tk] float32: materialised additive bias.
  - aux["q_pos"] [b, tq], aux["k_pos"] [b, tk] int32 (only with a positional field);
    aux["q_seg"], aux["k_seg"] int32 (equal and nonzero = visible); aux["mask"]
    [b|1, h|1, tq, tk] bool; aux["q_off"] [b] int32 (causal: key j visible to query i iff
    j <= i + q_off[b]).
  """
  if score not in SCORES:
    raise ValueError(f"score={score!r} is unknown; use one of {SCORES}.")
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
    raise ValueError("query, key and value must be [batch, length, heads, head_dim]; got shapes "
                    f"{query.shape}, {key.shape}, {value.shape}.")
  batch, q_len, heads, head_dim = query.shape
  kb, k_len, kv_heads, k_dim = key.shape
  if kb != batch or value.shape[:3] != key.shape[:3] or k_dim != head_dim:
    raise ValueError(f"key {key.shape} and value {value.shape} must match query {query.shape} "
                    "in batch and head_dim, and each other in batch, length and heads.")
  if kv_heads == 0 or heads % kv_heads:
    raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads "
                    f"({kv_heads}).")
  if q_len == 0 or k_len == 0:
    raise ValueError("query and key lengths must be positive.")
  dtype = jnp.result_type(query, key, value)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"query, key and value must be floating point, got {dtype}.")
  query, key, value = query.astype(dtype), key.astype(dtype), value.astype(dtype)
  acc = jnp.promote_types(dtype, jnp.float32)
  if score != "dot" and not eps > 0:
    raise ValueError(f"eps must be positive for score={score!r}, got {eps}.")
  if block_q <= 0 or block_k <= 0:
    raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}.")

  if mass is None:
    if score == "gravity":
      raise ValueError("score='gravity' needs mass (positive, one per query head).")
    m2 = None if score == "inverse_square" else jnp.ones((heads,), acc)
  else:
    # log M² cancels in the inverse-square softmax: it is not used (its gradient is 0).
    m2 = None if score == "inverse_square" else _head_vector(mass, "mass", heads, acc) ** 2

  key_term = None
  if key_mass is not None:
    key_mass = jnp.asarray(key_mass)
    if key_mass.shape not in ((batch, k_len), (1, k_len)):
      raise ValueError(f"key_mass has shape {key_mass.shape}; expected [batch={batch}, "
                      f"k_len={k_len}].")
    key_mass = jnp.broadcast_to(key_mass, (batch, k_len)).astype(acc)
    key_term = key_mass if score == "gravity" else jnp.log(key_mass)

  q_off = k_len - q_len if q_offset is None else q_offset
  q_off = jnp.asarray(q_off, jnp.int32)
  if q_off.ndim > 1 or (q_off.ndim == 1 and q_off.shape[0] not in (1, batch)):
    raise ValueError(f"q_offset must be an int or int [batch], got shape {q_off.shape}.")
  q_off = jnp.broadcast_to(q_off, (batch,))

  pl_p = pl_a = slopes = None
  if power_law is not None:
    if not isinstance(power_law, (tuple, list)) or len(power_law) != 2:
      raise TypeError("power_law must be a pair (p, a) of positive [heads] arrays.")
    pl_p = _head_vector(power_law[0], "power_law p", heads, acc)
    pl_a = _head_vector(power_law[1], "power_law a", heads, acc)
  if alibi_slopes is not None:
    slopes = _head_vector(alibi_slopes, "alibi_slopes", heads, acc)

  q_pos = k_pos = None
  if pl_p is not None or slopes is not None:
    if positions is None:
      q_pos = q_off[:, None] + jnp.arange(q_len, dtype=jnp.int32)[None]
      k_pos = jnp.broadcast_to(jnp.arange(k_len, dtype=jnp.int32), (batch, k_len))
    else:
      q_pos, k_pos = _pair(positions, "positions", q_len, k_len, batch)
  q_seg = k_seg = None
  if segment_ids is not None:
    q_seg, k_seg = _pair(segment_ids, "segment_ids", q_len, k_len, batch)
  if bias is not None:
    bias = _dense_4d(bias, "bias", batch, heads, q_len, k_len, acc)
  if mask is not None:
    mask = _dense_4d(mask, "mask", batch, heads, q_len, k_len, jnp.bool_)

  cfg = Config(score=score, eps=float(eps), causal=bool(causal),
               scale=1.0 / math.sqrt(head_dim), q_len=q_len, k_len=k_len,
               block_q=min(int(block_q), q_len), block_k=min(int(block_k), k_len))
  diff = dict(q=query, k=key, v=value, m2=m2, key_term=key_term, pl_p=pl_p, pl_a=pl_a,
              alibi=slopes, bias=bias)
  aux = dict(q_pos=q_pos, k_pos=k_pos, q_seg=q_seg, k_seg=k_seg, mask=mask, q_off=q_off)
  return cfg, diff, aux


def precision(dtype):
  """The matmul precision for operands of `dtype`: HIGHEST for float32 and wider."""
  # float32 matmuls default to TF32 on GPU and bf16 passes on TPU: ask for full precision.
  if jnp.dtype(dtype).itemsize >= 4:
    return lax.Precision.HIGHEST
  return lax.Precision.DEFAULT


def visibility(cfg: Config, aux, group):
  """Visibility of every key to every query: bool [b|1, kv_heads|1, group|1, q_len, k_len]."""
  q_idx = jnp.arange(cfg.q_len)
  k_idx = jnp.arange(cfg.k_len)
  return block_visibility(cfg, aux, q_idx, k_idx, group, full_mask=aux["mask"])


def block_visibility(cfg: Config, aux, q_idx, k_idx, group, full_mask=None, k_valid=None):
  """Visibility of keys `k_idx` to queries `q_idx` (index vectors), in the 5-d score layout.

  Args:
    cfg: the static config.
    aux: the integer arrays (segments already sliced to q_idx / k_idx when blocked).
    q_idx: int [bq], query indices.
    k_idx: int [bk], key indices.
    group: query heads per key/value head.
    full_mask: bool [b, h, bq, bk] block of the user mask, or None.
    k_valid: if given, keys with index >= k_valid are padding.

  Returns:
    bool broadcastable to [batch, kv_heads, group, bq, bk].
  """
  vis = jnp.ones((1, 1, 1, q_idx.shape[0], k_idx.shape[0]), jnp.bool_)
  if cfg.causal:
    limit = q_idx[None, :] + aux["q_off"][:, None]                     # [b, bq]
    vis = vis & (k_idx[None, None, :] <= limit[:, :, None])[:, None, None]
  if k_valid is not None:
    vis = vis & (k_idx < k_valid)[None, None, None, None, :]
  if aux["q_seg"] is not None:
    qs, ks = aux["q_seg"], aux["k_seg"]
    same = (qs[:, :, None] == ks[:, None, :]) & (ks[:, None, :] != 0)
    vis = vis & same[:, None, None]
  if full_mask is not None:
    fm = full_mask.reshape(full_mask.shape[0], -1, 1 if full_mask.shape[1] == 1 else group,
                           *full_mask.shape[2:])
    vis = vis & fm
  return vis


# The tracers JAX passes a custom_vjp's forward and backward when they are themselves being
# differentiated (grad of grad: "LinearizeTracer"; jvp of grad: "JVPTracer"). Matched by name:
# they are internal types. Were they renamed, the check would answer False and the kernels
# would keep their first-derivative loops; tests/ops/gravity/test_derivatives.py would notice.
_DIFFERENTIATING = ("LinearizeTracer", "JVPTracer")


def differentiated(*trees) -> bool:
  """Whether any leaf of `trees` is being differentiated by an enclosing transformation."""
  return any(type(leaf).__name__ in _DIFFERENTIATING
             for tree in trees for leaf in jax.tree.leaves(tree))


def pad_axis(x, axis: int, n: int, value=0):
  """Pads `x` with `n` entries of `value` at the end of `axis`; None and n == 0 pass through."""
  if x is None or n == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, n)
  return jnp.pad(x, widths, constant_values=value)
