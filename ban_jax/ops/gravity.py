"""Gravity attention (seed 002) and its relatives, as pure functions.

Scores, for query i and key j of head h (M_h the per-head mass, m_j the per-key mass from
context tagging, b_h(i, j) the additive positional field, d²_ij = ‖q_i − k_j‖²):

| score            | logit z_ij                              | weights softmax_j(z)              |
|------------------|-----------------------------------------|-----------------------------------|
| "gravity"        | M_h² m_j / (d²_ij + ε) + b              | seed 002 exactly (m = 1, b = 0)   |
| "inverse_square" | log M_h² + log m_j − log(d²_ij + ε) + b | ∝ m_j e^b / (d² + ε): a 1/r² law  |
| "dot"            | M_h² q_i·k_j / √head_dim + log m_j + b  | plain attention when M = m = 1    |

What the masses do:
- `mass` M is an inverse temperature for "gravity" (it scales the potential 1/(d²+ε)) and for
  "dot" (M² multiplies the scaled dot product; `mass=None` means 1, the plain baseline).
  For "inverse_square", log M² is the same for every key of a row and cancels in the softmax:
  the output does not depend on M at all and its gradient is exactly zero. The implementation
  therefore drops the term (`mass` may be None there).
- `key_mass` m_j (> 0) multiplies the gravity logit (Newton: F ∝ M·m_j / r²); for the
  log-domain scores it adds log m_j, so the weights are multiplied by m_j.

Distances are computed as ‖q‖² + ‖k‖² − 2 q·k with the norms taken from the exact operands of
the q·k product, accumulated in float32 (bf16 inputs included; explicit HIGHEST precision for
float32 matmuls), and clamped at 0.

Masking: key j is visible to query i when (causal) j ≤ i + q_offset, the two share a segment id
that is not 0 (0 = padding), and the optional boolean `mask` allows it. A query that sees no key
returns zeros, with finite (zero) gradients.

Implementations (`implementation=`):
- "reference": materialises the [batch, heads, q_len, k_len] scores; autodiff for gradients.
  Run it under `jax.enable_x64(True)` on float64 inputs as the oracle of the tests.
- "xla": blockwise over query and key blocks with an online softmax (`lax.map` / `fori_loop`),
  whole causal blocks above the diagonal skipped, and a `custom_vjp` whose backward recomputes
  each block, so memory is O(length × block), not O(length²). Works on every backend.
- "pallas": the fused GPU/TPU kernel of `ban_jax.ops.gravity_pallas` (issue 4), when present.
- "auto": the best available; "xla" for now (see `_auto_implementation`).

Positional fields are passed as parameters (`power_law`, `alibi_slopes`) and evaluated per
block from `positions`; a materialised `bias` (and `mask`) is accepted as the generic fallback,
at O(q_len × k_len) memory.

Limits: "xla" has a custom_vjp, so it supports reverse mode (grad, vjp) but not forward mode
(jvp, jacfwd) or second derivatives; use "reference" for those. `eps`, `causal`, `score` and
the block sizes are static (Python values).
"""

import functools
import math
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ban_jax.errors import UserError
from ban_jax.ops import positional as pos_ops

SCORES = ("gravity", "inverse_square", "dot")
IMPLEMENTATIONS = ("auto", "reference", "xla", "pallas")
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512


def gravity_attention(query, key, value, mass=None, *, eps: float = 0.1, causal: bool = True,
                      segment_ids=None, positions=None, key_mass=None, bias=None, mask=None,
                      power_law=None, alibi_slopes=None, q_offset=None, score: str = "gravity",
                      implementation: str = "auto", block_q: int = DEFAULT_BLOCK_Q,
                      block_k: int = DEFAULT_BLOCK_K):
  """Attention with the gravity score (or its relatives), exact and memory-efficient.

  Args:
    query: float [batch, q_len, heads, head_dim].
    key: float [batch, k_len, kv_heads, head_dim]; `kv_heads` divides `heads` (GQA: query head
      h reads key/value head h // (heads // kv_heads), without materialising the repeat).
    value: float [batch, k_len, kv_heads, v_dim].
    mass: positive float [heads], the per-query-head mass M (see the module docstring); None
      means 1 and is only allowed for "dot" and "inverse_square".
    eps: softening ε > 0 of the distance (gravity, inverse_square).
    causal: mask keys after the query (by index, shifted by `q_offset`).
    segment_ids: int [batch, length] when q_len == k_len, or a pair (q_segment_ids [batch,
      q_len], k_segment_ids [batch, k_len]); different ids do not attend, 0 is padding.
    positions: int [batch, length] or a pair (q_positions, k_positions), used by the positional
      fields only; default: q positions arange(q_len) + q_offset, k positions arange(k_len).
    key_mass: positive float [batch, k_len], the per-key mass m_j (context tagging).
    bias: float broadcastable to [batch, heads, q_len, k_len], added to the logits
      (materialised fallback; prefer `power_law` / `alibi_slopes`).
    mask: bool broadcastable to [batch, heads, q_len, k_len]; True = may attend.
    power_law: pair (p, a) of positive float [heads]: adds -p_h log(1 + a_h |pos_i - pos_j|).
    alibi_slopes: float [heads]: adds -m_h |pos_i - pos_j|.
    q_offset: int, or int [batch]: the key index of query 0 for the causal mask; default
      k_len - q_len (the queries are the last q_len keys; 0 for self-attention).
    score: "gravity", "inverse_square" or "dot".
    implementation: "auto", "xla", "reference" or "pallas".
    block_q: query block of the "xla" implementation.
    block_k: key block of the "xla" implementation.

  Returns:
    [batch, q_len, heads, v_dim] in the promoted dtype of query, key and value.
  """
  cfg, diff, aux = _prepare(query, key, value, mass, eps=eps, causal=causal,
                            segment_ids=segment_ids, positions=positions, key_mass=key_mass,
                            bias=bias, mask=mask, power_law=power_law,
                            alibi_slopes=alibi_slopes, q_offset=q_offset, score=score,
                            block_q=block_q, block_k=block_k)
  impl = _auto_implementation() if implementation == "auto" else implementation
  if impl not in IMPLEMENTATIONS:
    raise UserError(f"implementation={implementation!r} is unknown; use one of "
                    f"{IMPLEMENTATIONS}.")
  if impl == "reference":
    return _reference(cfg, diff, aux)[0]
  if impl == "pallas":
    try:
      from ban_jax.ops import gravity_pallas  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise UserError("implementation='pallas' needs ban_jax.ops.gravity_pallas, which is not "
                      "available here; use implementation='xla'.") from e
    # Contract for the kernel: the canonical (cfg, diff, aux) of `_prepare`, unpadded.
    return gravity_pallas.gravity_attention_pallas(cfg, diff, aux)
  return _blockwise(cfg, diff, aux)


def gravity_attention_decode(query, key_cache, value_cache, mass=None, *, index, eps=0.1,
                             segment_ids=None, positions=None, key_mass=None,
                             power_law=None, alibi_slopes=None, score="gravity",
                             implementation="auto", block_k=DEFAULT_BLOCK_K):
  """Attention of new query positions against a key/value cache (generation).

  The caller has already written the keys and values of the new positions into the caches at
  slots index, ..., index + new - 1 (slots are positions in the sequence); slots after that
  are ignored whatever they hold.

  Args:
    query: float [batch, new, heads, head_dim]; new is 1 for step-by-step decoding, more for a
      prompt (prefill).
    key_cache: float [batch, max_len, kv_heads, head_dim].
    value_cache: float [batch, max_len, kv_heads, v_dim].
    mass: as in `gravity_attention`.
    index: int, int32 [] or int32 [batch]: the cache slot of the first new query.
    eps: as in `gravity_attention`.
    segment_ids: None or a pair (q_segment_ids [batch, new], cache_segment_ids [batch, max_len]).
    positions: None (slot indices) or a pair (q_positions [batch, new], cache_positions
      [batch, max_len]) for the positional fields.
    key_mass: positive float [batch, max_len], the cached per-key masses.
    power_law: as in `gravity_attention`.
    alibi_slopes: as in `gravity_attention`.
    score: as in `gravity_attention`.
    implementation: as in `gravity_attention`.
    block_k: key block of the "xla" implementation.

  Returns:
    [batch, new, heads, v_dim].
  """
  if segment_ids is not None and not isinstance(segment_ids, (tuple, list)):
    raise UserError("segment_ids for decoding must be a pair (query ids [batch, new], cache ids "
                    "[batch, max_len]).")
  if positions is not None and not isinstance(positions, (tuple, list)):
    raise UserError("positions for decoding must be a pair (query positions [batch, new], "
                    "cache positions [batch, max_len]).")
  return gravity_attention(query, key_cache, value_cache, mass, eps=eps, causal=True,
                           segment_ids=segment_ids, positions=positions, key_mass=key_mass,
                           power_law=power_law, alibi_slopes=alibi_slopes, q_offset=index,
                           score=score, implementation=implementation,
                           block_q=query.shape[1], block_k=block_k)


def gravity_attention_weights(query, key, mass=None, **kwargs):
  """The materialised attention weights, for inspection and plots.

  Takes the arguments of `gravity_attention` except value and implementation.

  Returns:
    float32 (float64 for float64 inputs) [batch, heads, q_len, k_len]; rows sum to 1, or to 0
    where a query sees no key.
  """
  value = jnp.zeros(key.shape[:-1] + (1,), key.dtype)
  cfg, diff, aux = _prepare(query, key, value, mass, block_q=DEFAULT_BLOCK_Q,
                            block_k=DEFAULT_BLOCK_K, **kwargs)
  w = _reference(cfg, diff, aux)[1]
  b, kh, g, tq, tk = w.shape
  return w.reshape(b, kh * g, tq, tk)


def softplus_inverse(y):
  """The raw parameter whose softplus is `y` (> 0): log(expm1(y)), stable for large y.

  The learnable masses and positional parameters are softplus of a raw parameter; this gives
  the raw initial value (a float32 numpy constant, usable inside traced init code) for a
  wanted positive one.
  """
  y = np.asarray(y, np.float64)
  return (y + np.log(-np.expm1(-y))).astype(np.float32)


def _auto_implementation() -> str:
  """The implementation "auto" picks.

  Hook for issue 4: once `ban_jax.ops.gravity_pallas` is validated on GPU and TPU, return
  "pallas" here when `jax.default_backend()` is "gpu" or "tpu" (and the kernel supports the
  call). The XLA blockwise path stays the CPU path and the fallback.
  """
  return "xla"


# ----------------------------------------------------------------------------------------------
# Canonical form shared by the implementations.


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
      raise UserError(f"{name} must be one [batch, length] array or a pair (query, key).")
    xq, xk = jnp.asarray(x[0]), jnp.asarray(x[1])
  else:
    x = jnp.asarray(x)
    if q_len != k_len:
      raise UserError(f"{name} must be a pair (query [batch, q_len], key [batch, k_len]) when "
                      f"q_len ({q_len}) != k_len ({k_len}).")
    xq = xk = x
  for arr, length, side in ((xq, q_len, "query"), (xk, k_len, "key")):
    if arr.ndim != 2 or arr.shape[1] != length or arr.shape[0] not in (1, batch):
      raise UserError(f"{name} for the {side} side has shape {arr.shape}; expected "
                      f"[batch={batch}, {length}].")
  return (jnp.broadcast_to(xq, (batch, q_len)).astype(jnp.int32),
          jnp.broadcast_to(xk, (batch, k_len)).astype(jnp.int32))


def _head_vector(x, name, heads, dtype):
  x = jnp.asarray(x)
  if x.ndim == 0:
    x = jnp.broadcast_to(x, (heads,))
  if x.shape != (heads,):
    raise UserError(f"{name} has shape {x.shape}; it must be one value per query head, "
                    f"shape ({heads},).")
  return x.astype(dtype)


def _dense_4d(x, name, batch, heads, q_len, k_len, dtype):
  """Broadcasts a bias/mask to [batch or 1, heads or 1, q_len, k_len]."""
  x = jnp.asarray(x)
  if x.ndim > 4:
    raise UserError(f"{name} has {x.ndim} dimensions; it must broadcast to [batch, heads, "
                    f"q_len, k_len].")
  x = x.reshape((1,) * (4 - x.ndim) + x.shape)
  target = (batch if x.shape[0] != 1 else 1, heads if x.shape[1] != 1 else 1, q_len, k_len)
  try:
    return jnp.broadcast_to(x, target).astype(dtype)
  except ValueError as e:
    raise UserError(f"{name} of shape {x.shape} does not broadcast to [batch={batch}, "
                    f"heads={heads}, q_len={q_len}, k_len={k_len}].") from e


def _prepare(query, key, value, mass, *, eps=0.1, causal=True, segment_ids=None,
             positions=None, key_mass=None, bias=None, mask=None, power_law=None,
             alibi_slopes=None, q_offset=None, score="gravity", block_q=DEFAULT_BLOCK_Q,
             block_k=DEFAULT_BLOCK_K):
  """Validates the arguments and returns the canonical form (cfg, diff, aux).

  This is also the contract of `ban_jax.ops.gravity_pallas.gravity_attention_pallas(cfg, diff,
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
    raise UserError(f"score={score!r} is unknown; use one of {SCORES}.")
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
    raise UserError("query, key and value must be [batch, length, heads, head_dim]; got shapes "
                    f"{query.shape}, {key.shape}, {value.shape}.")
  batch, q_len, heads, head_dim = query.shape
  kb, k_len, kv_heads, k_dim = key.shape
  if kb != batch or value.shape[:3] != key.shape[:3] or k_dim != head_dim:
    raise UserError(f"key {key.shape} and value {value.shape} must match query {query.shape} "
                    "in batch and head_dim, and each other in batch, length and heads.")
  if kv_heads == 0 or heads % kv_heads:
    raise UserError(f"query heads ({heads}) must be a multiple of key/value heads "
                    f"({kv_heads}).")
  if q_len == 0 or k_len == 0:
    raise UserError("query and key lengths must be positive.")
  dtype = jnp.result_type(query, key, value)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise UserError(f"query, key and value must be floating point, got {dtype}.")
  query, key, value = query.astype(dtype), key.astype(dtype), value.astype(dtype)
  acc = jnp.promote_types(dtype, jnp.float32)
  if score != "dot" and not eps > 0:
    raise UserError(f"eps must be positive for score={score!r}, got {eps}.")
  if block_q <= 0 or block_k <= 0:
    raise UserError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}.")

  if mass is None:
    if score == "gravity":
      raise UserError("score='gravity' needs mass (positive, one per query head).")
    m2 = None if score == "inverse_square" else jnp.ones((heads,), acc)
  else:
    # log M² cancels in the inverse-square softmax: it is not used (its gradient is 0).
    m2 = None if score == "inverse_square" else _head_vector(mass, "mass", heads, acc) ** 2

  key_term = None
  if key_mass is not None:
    key_mass = jnp.asarray(key_mass)
    if key_mass.shape not in ((batch, k_len), (1, k_len)):
      raise UserError(f"key_mass has shape {key_mass.shape}; expected [batch={batch}, "
                      f"k_len={k_len}].")
    key_mass = jnp.broadcast_to(key_mass, (batch, k_len)).astype(acc)
    key_term = key_mass if score == "gravity" else jnp.log(key_mass)

  q_off = k_len - q_len if q_offset is None else q_offset
  q_off = jnp.asarray(q_off, jnp.int32)
  if q_off.ndim > 1 or (q_off.ndim == 1 and q_off.shape[0] not in (1, batch)):
    raise UserError(f"q_offset must be an int or int [batch], got shape {q_off.shape}.")
  q_off = jnp.broadcast_to(q_off, (batch,))

  pl_p = pl_a = slopes = None
  if power_law is not None:
    if not isinstance(power_law, (tuple, list)) or len(power_law) != 2:
      raise UserError("power_law must be a pair (p, a) of positive [heads] arrays.")
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


def _precision(dtype):
  # float32 matmuls default to TF32 on GPU and bf16 passes on TPU: ask for full precision.
  if jnp.dtype(dtype).itemsize >= 4:
    return lax.Precision.HIGHEST
  return lax.Precision.DEFAULT


# ----------------------------------------------------------------------------------------------
# Reference: materialised scores, plain autodiff.


def _reference(cfg: Config, diff, aux):
  """Returns (output [batch, q_len, heads, v_dim], weights [b, kv_heads, group, q_len, k_len])."""
  q, k, v = diff["q"], diff["k"], diff["v"]
  batch, q_len, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  group = heads // kv_heads
  acc = jnp.promote_types(q.dtype, jnp.float32)
  prec = _precision(acc)
  qf = q.reshape(batch, q_len, kv_heads, group, head_dim).astype(acc)
  kf, vf = k.astype(acc), v.astype(acc)
  per_head = lambda x: x.reshape(kv_heads, group)[None, :, :, None, None]

  s = jnp.einsum("bqkgd,bskd->bkgqs", qf, kf, precision=prec)
  if cfg.score == "dot":
    z = per_head(diff["m2"]) * cfg.scale * s
  else:
    qn = jnp.einsum("bqkgd->bkgq", qf * qf)
    kn = jnp.einsum("bskd->bks", kf * kf)
    d2 = jnp.maximum(qn[..., None] + kn[:, :, None, None, :] - 2.0 * s, 0.0)
    if cfg.score == "gravity":
      potential = 1.0 / (d2 + cfg.eps)
      if diff["key_term"] is not None:
        potential = potential * diff["key_term"][:, None, None, None, :]
      z = per_head(diff["m2"]) * potential
    else:
      z = -jnp.log(d2 + cfg.eps)
  if cfg.score != "gravity" and diff["key_term"] is not None:
    z = z + diff["key_term"][:, None, None, None, :]
  if diff["pl_p"] is not None:
    dist = pos_ops.relative_distance(aux["q_pos"], aux["k_pos"])[:, None, None].astype(acc)
    z = z + pos_ops.power_law_bias(dist, per_head(diff["pl_p"]), per_head(diff["pl_a"]))
  if diff["alibi"] is not None:
    dist = pos_ops.relative_distance(aux["q_pos"], aux["k_pos"])[:, None, None].astype(acc)
    z = z + pos_ops.alibi_bias(dist, per_head(diff["alibi"]))
  if diff["bias"] is not None:
    bias = diff["bias"]
    z = z + bias.reshape(bias.shape[0], -1, 1 if bias.shape[1] == 1 else group,
                         q_len, k.shape[1]).astype(acc)

  visible = _full_mask(cfg, aux, group)
  m = lax.stop_gradient(jnp.max(jnp.where(visible, z, -jnp.inf), axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  # Double `where`: masked logits never reach exp, so their gradients stay finite.
  e = jnp.where(visible, jnp.exp(jnp.where(visible, z, m) - m), 0.0)
  total = jnp.sum(e, axis=-1, keepdims=True)
  w = e / jnp.where(total > 0, total, 1.0)
  out = jnp.einsum("bkgqs,bskd->bqkgd", w, vf, precision=prec)
  return out.reshape(batch, q_len, heads, v.shape[-1]).astype(q.dtype), w


def _full_mask(cfg: Config, aux, group):
  """bool [batch or 1, kv_heads or 1, group or 1, q_len, k_len]."""
  q_idx = jnp.arange(cfg.q_len)
  k_idx = jnp.arange(cfg.k_len)
  return _mask_block(cfg, aux, q_idx, k_idx, group, full_mask=aux["mask"])


def _mask_block(cfg: Config, aux, q_idx, k_idx, group, full_mask=None, k_valid=None):
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


# ----------------------------------------------------------------------------------------------
# Blockwise XLA implementation with a recomputing custom_vjp.


def pad_axis(x, axis: int, n: int, value=0):
  """Pads `x` with `n` entries of `value` at the end of `axis`; None and n == 0 pass through."""
  if x is None or n == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, n)
  return jnp.pad(x, widths, constant_values=value)


def _blockwise(cfg: Config, diff, aux):
  """Pads to whole blocks, runs the custom_vjp kernel, and slices the padding off."""
  bq, bk = cfg.block_q, cfg.block_k
  pad_q = -cfg.q_len % bq
  pad_k = -cfg.k_len % bk
  if pad_q or pad_k:
    pad = pad_axis
    diff = dict(diff, q=pad(diff["q"], 1, pad_q), k=pad(diff["k"], 1, pad_k),
                v=pad(diff["v"], 1, pad_k),
                key_term=pad(diff["key_term"], 1, pad_k,
                             1 if cfg.score == "gravity" else 0),
                bias=pad(pad(diff["bias"], 2, pad_q), 3, pad_k))
    aux = dict(aux, q_pos=pad(aux["q_pos"], 1, pad_q), k_pos=pad(aux["k_pos"], 1, pad_k),
               q_seg=pad(aux["q_seg"], 1, pad_q), k_seg=pad(aux["k_seg"], 1, pad_k),
               mask=pad(pad(aux["mask"], 2, pad_q, False), 3, pad_k, False))
  out = _flash(cfg, diff, aux)
  return out[:, :cfg.q_len]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg, diff, aux):
  return _flash_forward(cfg, diff, aux)[0]


def _flash_fwd(cfg, diff, aux):
  out, lse = _flash_forward(cfg, diff, aux)
  return out, (diff, aux, out, lse)


class _Blocks(NamedTuple):
  """Per-call constants of the blockwise kernel."""
  batch: int
  kv_heads: int
  group: int
  head_dim: int
  v_dim: int
  nq: int
  nk: int
  acc: Any
  prec: Any


def _setup(cfg, diff):
  q, k, v = diff["q"], diff["k"], diff["v"]
  batch, tq, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  acc = jnp.promote_types(q.dtype, jnp.float32)
  return _Blocks(batch=batch, kv_heads=kv_heads, group=heads // kv_heads, head_dim=head_dim,
                 v_dim=v.shape[-1], nq=tq // cfg.block_q, nk=k.shape[1] // cfg.block_k,
                 acc=acc, prec=_precision(q.dtype))


def _slice(x, start, size, axis):
  return None if x is None else lax.dynamic_slice_in_dim(x, start, size, axis)


def _per_head(x, blk):
  """[heads] -> [1, kv_heads, group, 1, 1]."""
  return None if x is None else x.reshape(1, blk.kv_heads, blk.group, 1, 1)


def _dense_slice(x, qs, ks, cfg):
  """A [b, h, tq, tk] bias/mask -> its [b, h, bq, bk] block."""
  if x is None:
    return None
  return lax.dynamic_slice_in_dim(lax.dynamic_slice_in_dim(x, qs, cfg.block_q, 2), ks,
                                  cfg.block_k, 3)


def _dense_block(x, qs, ks, cfg, blk):
  """A [b, h, tq, tk] bias -> its [b, kv_heads|1, group|1, bq, bk] block."""
  x = _dense_slice(x, qs, ks, cfg)
  if x is None:
    return None
  return x.reshape(x.shape[0], -1, 1 if x.shape[1] == 1 else blk.group, *x.shape[2:])


def _block_logits(cfg, blk, diff, aux, qs, ks, qb, qnb, kb, knb):
  """Logits of one (query block, key block) pair and what the backward needs.

  Args:
    qb: [b, bq, kv_heads, group, d] query block; qnb: float [b, kv_heads, group, bq] its
      squared norms. kb: [b, bk, kv_heads, d]; knb: float [b, kv_heads, bk].

  Returns:
    (z, parts, visible): z float [b, kv_heads, group, bq, bk]; parts a dict of intermediates;
    visible a bool mask broadcastable to z.
  """
  s = jnp.einsum("bqkgd,bskd->bkgqs", qb, kb, preferred_element_type=blk.acc,
                 precision=blk.prec)
  parts = {"s": s}
  key_term = _slice(diff["key_term"], ks, cfg.block_k, 1)
  if key_term is not None:
    key_term = key_term[:, None, None, None, :]
  m2 = _per_head(diff["m2"], blk)
  if cfg.score == "dot":
    z = (m2 * cfg.scale) * s
  else:
    d2_raw = qnb[..., None] + knb[:, :, None, None, :] - 2.0 * s
    d2 = jnp.maximum(d2_raw, 0.0)
    r = 1.0 / (d2 + cfg.eps)
    parts.update(d2_positive=d2_raw > 0, r=r)
    if cfg.score == "gravity":
      potential = r if key_term is None else r * key_term
      z = m2 * potential
      parts.update(potential=potential)
    else:
      z = -jnp.log(d2 + cfg.eps)
  if cfg.score != "gravity" and key_term is not None:
    z = z + key_term
  if diff["pl_p"] is not None or diff["alibi"] is not None:
    dist = pos_ops.relative_distance(_slice(aux["q_pos"], qs, cfg.block_q, 1),
                                     _slice(aux["k_pos"], ks, cfg.block_k, 1))
    dist = dist[:, None, None].astype(blk.acc)
    parts["dist"] = dist
    if diff["pl_p"] is not None:
      z = z + pos_ops.power_law_bias(dist, _per_head(diff["pl_p"], blk),
                                     _per_head(diff["pl_a"], blk))
    if diff["alibi"] is not None:
      z = z + pos_ops.alibi_bias(dist, _per_head(diff["alibi"], blk))
  bias = _dense_block(diff["bias"], qs, ks, cfg, blk)
  if bias is not None:
    z = z + bias
  q_idx = qs + jnp.arange(cfg.block_q)
  k_idx = ks + jnp.arange(cfg.block_k)
  aux_b = dict(aux, q_seg=_slice(aux["q_seg"], qs, cfg.block_q, 1),
               k_seg=_slice(aux["k_seg"], ks, cfg.block_k, 1))
  k_valid = cfg.k_len if cfg.k_len < blk.nk * cfg.block_k else None
  visible = _mask_block(cfg, aux_b, q_idx, k_idx, blk.group,
                        full_mask=_dense_slice(aux["mask"], qs, ks, cfg), k_valid=k_valid)
  return z, parts, visible


def _k_block_end(cfg, blk, aux, qs):
  """One past the last key block a query block starting at `qs` can see."""
  if not cfg.causal:
    return blk.nk
  last = qs + cfg.block_q - 1 + jnp.max(aux["q_off"])        # last visible key index
  return jnp.clip(last // cfg.block_k + 1, 0, blk.nk)


def _q_block_start(cfg, blk, aux, ks):
  """The first query block that can see a key block starting at `ks`."""
  if not cfg.causal:
    return 0
  return jnp.clip((ks - jnp.max(aux["q_off"])) // cfg.block_q, 0, blk.nq)


def _norms(diff, blk):
  q, k = diff["q"], diff["k"]
  batch, tq = q.shape[:2]
  qg = q.reshape(batch, tq, blk.kv_heads, blk.group, blk.head_dim)
  # Norms from the same (possibly bf16-rounded) operands that enter q·k, in float32.
  qn = jnp.sum(jnp.square(qg.astype(blk.acc)), axis=-1).transpose(0, 2, 3, 1)  # [b,k,g,tq]
  kn = jnp.sum(jnp.square(k.astype(blk.acc)), axis=-1).transpose(0, 2, 1)      # [b,k,tk]
  return qg, qn, kn


def _flash_forward(cfg, diff, aux):
  blk = _setup(cfg, diff)
  bq, bk = cfg.block_q, cfg.block_k
  k, v = diff["k"], diff["v"]
  qg, qn, kn = _norms(diff, blk)
  shape_q = (blk.batch, blk.kv_heads, blk.group, bq)

  def q_block(qi):
    qs = qi * bq
    qb = _slice(qg, qs, bq, 1)
    qnb = _slice(qn, qs, bq, 3)

    def k_step(kj, carry):
      m, l, o = carry
      ks = kj * bk
      z, _, visible = _block_logits(cfg, blk, diff, aux, qs, ks, qb, qnb,
                                    _slice(k, ks, bk, 1), _slice(kn, ks, bk, 2))
      z = jnp.where(visible, z, -jnp.inf)
      m_new = jnp.maximum(m, jnp.max(z, axis=-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      p = jnp.exp(z - m_safe[..., None])
      alpha = jnp.exp(m - m_safe)
      l = alpha * l + jnp.sum(p, axis=-1)
      pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), _slice(v, ks, bk, 1),
                      preferred_element_type=blk.acc, precision=blk.prec)
      o = alpha[..., None] * o + pv
      return m_new, l, o

    init = (jnp.full(shape_q, -jnp.inf, blk.acc), jnp.zeros(shape_q, blk.acc),
            jnp.zeros(shape_q + (blk.v_dim,), blk.acc))
    m, l, o = lax.fori_loop(0, _k_block_end(cfg, blk, aux, qs), k_step, init)
    seen = l > 0
    o = jnp.where(seen[..., None], o / jnp.where(seen, l, 1.0)[..., None], 0.0)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    # Rows that see nothing get lse = +inf, so that exp(z - lse) = 0 in the backward.
    lse = jnp.where(seen, m_safe + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)
    return o.astype(diff["q"].dtype).transpose(0, 3, 1, 2, 4), lse

  out, lse = lax.map(q_block, jnp.arange(blk.nq))    # [nq, b, bq, k, g, dv], [nq, b, k, g, bq]
  out = out.transpose(1, 0, 2, 3, 4, 5).reshape(blk.batch, blk.nq * bq,
                                                blk.kv_heads * blk.group, blk.v_dim)
  return out, lse


def _flash_bwd(cfg, res, d_out):
  diff, aux, out, lse = res
  blk = _setup(cfg, diff)
  bq, bk = cfg.block_q, cfg.block_k
  q, k, v = diff["q"], diff["k"], diff["v"]
  dtype = q.dtype
  qg, qn, kn = _norms(diff, blk)
  tq = q.shape[1]
  five = (blk.batch, tq, blk.kv_heads, blk.group)
  d_out = d_out.reshape(five + (blk.v_dim,)).astype(dtype)
  # delta_i = rowsum(dO ∘ O), from the output as returned.
  delta = jnp.sum(d_out.astype(blk.acc) * out.reshape(five + (blk.v_dim,)).astype(blk.acc),
                  axis=-1).transpose(0, 2, 3, 1)                        # [b, k, g, tq]
  head_sum = lambda x: jnp.sum(x, axis=(0, 3, 4)).reshape(-1)           # -> [heads]
  zeros_like = lambda x: None if x is None else jnp.zeros(x.shape, blk.acc)
  small0 = {name: zeros_like(diff[name]) for name in ("m2", "pl_p", "pl_a", "alibi", "bias")}

  def k_step(carry, kj):
    dq, small = carry
    ks = kj * bk
    kb, vb, knb = _slice(k, ks, bk, 1), _slice(v, ks, bk, 1), _slice(kn, ks, bk, 2)

    def q_step(qi, c):
      dk, dv, dkt, dq, small = c
      qs = qi * bq
      qb, qnb = _slice(qg, qs, bq, 1), _slice(qn, qs, bq, 3)
      dob = _slice(d_out, qs, bq, 1)
      z, parts, visible = _block_logits(cfg, blk, diff, aux, qs, ks, qb, qnb, kb, knb)
      lse_b = lse[qi]
      p = jnp.where(visible, jnp.exp(jnp.where(visible, z, 0.0) - lse_b[..., None]), 0.0)
      dp = jnp.einsum("bqkgd,bskd->bkgqs", dob, vb, preferred_element_type=blk.acc,
                      precision=blk.prec)
      dz = p * (dp - _slice(delta, qs, bq, 3)[..., None])
      dv = dv + jnp.einsum("bkgqs,bqkgd->bskd", p.astype(dtype), dob,
                           preferred_element_type=blk.acc, precision=blk.prec)
      small = dict(small)
      m2 = _per_head(diff["m2"], blk)
      if cfg.score == "dot":
        ds = (m2 * cfg.scale * dz).astype(dtype)
        dq_b = jnp.einsum("bkgqs,bskd->bqkgd", ds, kb, preferred_element_type=blk.acc,
                          precision=blk.prec)
        dk = dk + jnp.einsum("bkgqs,bqkgd->bskd", ds, qb, preferred_element_type=blk.acc,
                             precision=blk.prec)
        small["m2"] = small["m2"] + cfg.scale * head_sum(dz * parts["s"])
      else:
        r = parts["r"]
        if cfg.score == "gravity":
          # z = M² m_j r  =>  dz/d(d²) = -M² m_j r².
          g = -dz * (m2 * parts["potential"]) * r
          small["m2"] = small["m2"] + head_sum(dz * parts["potential"])
          if dkt is not None:
            dkt = dkt + jnp.sum(dz * m2 * r, axis=(1, 2, 3))
        else:
          g = -dz * r
        g = jnp.where(parts["d2_positive"], g, 0.0)
        # Row/column sums from the same rounded G that feeds the matrix products, so the
        # rank-1 term and G·K cancel consistently where q ≈ k.
        g = g.astype(dtype)
        gf = g.astype(blk.acc)
        row = jnp.sum(gf, axis=-1).transpose(0, 3, 1, 2)                  # [b, bq, k, g]
        col = jnp.sum(gf, axis=(2, 3)).transpose(0, 2, 1)                  # [b, bk, k]
        gk = jnp.einsum("bkgqs,bskd->bqkgd", g, kb, preferred_element_type=blk.acc,
                        precision=blk.prec)
        dq_b = 2.0 * (row[..., None] * qb.astype(blk.acc) - gk)
        gq = jnp.einsum("bkgqs,bqkgd->bskd", g, qb, preferred_element_type=blk.acc,
                        precision=blk.prec)
        dk = dk + 2.0 * (col[..., None] * kb.astype(blk.acc) - gq)
      if cfg.score != "gravity" and dkt is not None:
        dkt = dkt + jnp.sum(dz, axis=(1, 2, 3))
      if "dist" in parts:
        dist = parts["dist"]
        if diff["pl_p"] is not None:
          pw, sc = _per_head(diff["pl_p"], blk), _per_head(diff["pl_a"], blk)
          small["pl_p"] = small["pl_p"] - head_sum(dz * jnp.log1p(sc * dist))
          small["pl_a"] = small["pl_a"] - head_sum(dz * pw * dist / (1.0 + sc * dist))
        if diff["alibi"] is not None:
          small["alibi"] = small["alibi"] - head_sum(dz * dist)
      if small["bias"] is not None:
        db = small["bias"]
        axes = tuple(i for i in (0, 1) if db.shape[i] == 1)
        dzb = dz.reshape(blk.batch, blk.kv_heads * blk.group, bq, bk)
        dzb = jnp.sum(dzb, axis=axes, keepdims=True) if axes else dzb
        cur = lax.dynamic_slice(db, (0, 0, qs, ks), dzb.shape)
        small["bias"] = lax.dynamic_update_slice(db, cur + dzb, (0, 0, qs, ks))
      cur = lax.dynamic_slice_in_dim(dq, qs, bq, 1)
      dq = lax.dynamic_update_slice_in_dim(dq, cur + dq_b, qs, 1)
      return dk, dv, dkt, dq, small

    init = (jnp.zeros((blk.batch, bk, blk.kv_heads, blk.head_dim), blk.acc),
            jnp.zeros((blk.batch, bk, blk.kv_heads, blk.v_dim), blk.acc),
            None if diff["key_term"] is None else jnp.zeros((blk.batch, bk), blk.acc),
            dq, small)
    dk, dv, dkt, dq, small = lax.fori_loop(_q_block_start(cfg, blk, aux, ks), blk.nq, q_step,
                                           init)
    return (dq, small), (dk, dv, dkt)

  dq0 = jnp.zeros(five + (blk.head_dim,), blk.acc)
  (dq, small), (dk, dv, dkt) = lax.scan(k_step, (dq0, small0), jnp.arange(blk.nk))
  unblock = lambda x: x.transpose(1, 0, *range(2, x.ndim)).reshape(
      (blk.batch, blk.nk * bk) + x.shape[3:])
  grads = dict(
      q=dq.reshape(q.shape).astype(dtype),
      k=unblock(dk).astype(k.dtype),
      v=unblock(dv).astype(v.dtype),
      key_term=None if dkt is None else unblock(dkt).astype(diff["key_term"].dtype))
  for name in small0:
    grads[name] = None if small[name] is None else small[name].astype(diff[name].dtype)
  return grads, None


_flash.defvjp(_flash_fwd, _flash_bwd)
