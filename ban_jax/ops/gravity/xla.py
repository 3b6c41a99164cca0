"""Gravity attention in plain XLA: the materialised reference and the blockwise path.

- `reference` materialises the [batch, heads, q_len, k_len] scores and differentiates by
  autodiff: under `jax.enable_x64(True)` on float64 inputs it is the oracle of the tests, and
  the only path with forward-mode and higher derivatives.
- `blockwise` runs over query and key blocks with an online softmax (`lax.map` over query
  blocks, `fori_loop` over key blocks), skips whole causal blocks above the diagonal, and has a
  `custom_vjp` whose backward recomputes each block, so memory is O(length x block), not
  O(length²). Reverse mode (grad, vjp), second reverse derivatives and jvp of grad; not pure
  forward mode. It runs on every backend.

Both take the canonical form of `canonical.prepare` and share its visibility rule.
"""

import functools
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp

from ban_jax.ops import positional as pos_ops
from ban_jax.ops.gravity.canonical import block_visibility
from ban_jax.ops.gravity.canonical import Config
from ban_jax.ops.gravity.canonical import differentiated
from ban_jax.ops.gravity.canonical import pad_axis
from ban_jax.ops.gravity.canonical import precision
from ban_jax.ops.gravity.canonical import visibility


def reference(cfg: Config, diff, aux):
  """Materialised scores, plain autodiff: [batch, q_len, heads, v_dim] in q's dtype."""
  return reference_with_weights(cfg, diff, aux)[0]


def reference_with_weights(cfg: Config, diff, aux):
  """`reference` and its attention weights, float32 [batch, heads, q_len, k_len]."""
  q, k, v = diff["q"], diff["k"], diff["v"]
  batch, q_len, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  group = heads // kv_heads
  acc = jnp.promote_types(q.dtype, jnp.float32)
  prec = precision(acc)
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

  visible = visibility(cfg, aux, group)
  m = lax.stop_gradient(jnp.max(jnp.where(visible, z, -jnp.inf), axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  # Double `where`: masked logits never reach exp, so their gradients stay finite.
  e = jnp.where(visible, jnp.exp(jnp.where(visible, z, m) - m), 0.0)
  total = jnp.sum(e, axis=-1, keepdims=True)
  w = e / jnp.where(total > 0, total, 1.0)
  out = jnp.einsum("bkgqs,bskd->bqkgd", w, vf, precision=prec)
  return (out.reshape(batch, q_len, heads, v.shape[-1]).astype(q.dtype),
          w.reshape(batch, heads, q_len, k.shape[1]))


def blockwise(cfg: Config, diff, aux):
  """Pads to whole blocks, runs the custom_vjp kernel, and slices the padding off.

  Returns:
    [batch, q_len, heads, v_dim] in q's dtype.
  """
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
                 acc=acc, prec=precision(q.dtype))


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
  visible = block_visibility(cfg, aux_b, q_idx, k_idx, blk.group,
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


def _block_loop(lo, hi, count, body, init, static):
  """`fori_loop(lo, hi, body, init)` over blocks, with `lo`/`hi` possibly traced.

  Causal bounds depend on the block, which makes a while loop; JAX cannot reverse-differentiate
  one. When the kernel itself is being differentiated (`static`), the loop runs over all
  `count` blocks and skips the out-of-range ones with `lax.cond`: the same arithmetic, a loop
  JAX can transpose. First derivatives keep the dynamic bounds (no cond in the hot loop).
  """
  if not static:
    return lax.fori_loop(lo, hi, body, init)
  return lax.fori_loop(0, count, lambda i, c: lax.cond((i >= lo) & (i < hi), body,
                                                       lambda _, c: c, i, c), init)


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
  static = cfg.causal and differentiated(diff, aux)
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
      # The max only keeps the exponentials in range: no gradient through it (its derivative
      # divides by the count of entries equal to the max, which compiled to 0 on some rows
      # and made Hessian-vector products NaN with ALiBi or a bias).
      m_new = jnp.maximum(m, jnp.max(lax.stop_gradient(z), axis=-1))
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
    m, l, o = _block_loop(0, _k_block_end(cfg, blk, aux, qs), blk.nk, k_step, init, static)
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
  static = cfg.causal and differentiated(res, d_out)
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
    dk, dv, dkt, dq, small = _block_loop(_q_block_start(cfg, blk, aux, ks), blk.nq, blk.nq,
                                         q_step, init, static)
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
