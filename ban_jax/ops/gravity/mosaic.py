"""Mosaic TPU lowering of the fused gravity-attention kernels (see `pallas`).

Written for Pallas on Mosaic TPU and checked on the CPU in Pallas interpret mode; compiled by
libtpu's Mosaic compiler for v5e topologies ahead of time (tests/ops/gravity/test_pallas.py:
float32 and bfloat16, head dims 16-256; float16 fails there with "Invalid vector type for
load"), but never run on a TPU. On a mesh of several devices it runs per batch shard
(`sharding.py`).

Layout: q, k, v and dO are transposed to [batch, heads, length, dim] so that a block's last two
dimensions are (rows, head_dim), as Mosaic wants. Per-query vectors travel lane-broadcast as
[..., rows, 128] and per-key vectors sublane-broadcast as [..., 8, keys]; the per-head scalars
(M², p, a, ALiBi slope) sit in SMEM. The key loop (query loop for dK/dV) is the last grid axis,
"arbitrary", with VMEM scratch accumulators; blocks that causality (with `q_offset`) makes
useless are skipped in compute by `pl.when` and in DMA by index maps clamped, through scalar
prefetch, to the last useful block (so a skipped step re-uses the block already in VMEM).
Blocks entirely visible run without the mask.
"""

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

import ban_jax.ops.gravity.pallas_common as pc

LANES = 128
SUBLANES = 8


def _lanes(x):
  """[b, t] -> [b, t, 128]."""
  return None if x is None else jnp.broadcast_to(x[..., None], x.shape + (LANES,))


def _sublanes(x):
  """[..., t] -> [..., 8, t]."""
  if x is None:
    return None
  return jnp.broadcast_to(x[..., None, :], x.shape[:-1] + (SUBLANES, x.shape[-1]))


def _par(hp_ref, head):
  return {name: hp_ref[head, i] for i, name in enumerate(pc.PARAMS)}


def _k_bounds(st, qlim, bq, bk, nk_valid):
  """Per (batch, query block): (n_full, n_end) key blocks, as in the Triton kernel. int32 [b*nq]."""
  b, tqp = qlim.shape
  blocks = qlim.reshape(b, tqp // bq, bq)
  k_full = st.k_len // bk
  if not st.causal:
    n_end = jnp.full(blocks.shape[:2], nk_valid, jnp.int32)
    n_full = jnp.full(blocks.shape[:2], 0 if st.has_seg else k_full, jnp.int32)
  else:
    last = jnp.max(blocks, axis=-1)
    n_end = jnp.minimum((jnp.maximum(last, -1) + bk) // bk, nk_valid)
    if st.has_seg:
      n_full = jnp.zeros_like(n_end)
    else:
      first = jnp.min(blocks, axis=-1)
      n_full = jnp.minimum(jnp.maximum(first + 1, 0) // bk, jnp.minimum(n_end, k_full))
  return n_full.reshape(-1).astype(jnp.int32), n_end.reshape(-1).astype(jnp.int32)


def _q_bounds(st, kfirst, bq, bk, nq_valid):
  """Per (batch, key block): (i_start, i_full) query blocks. int32 [b*nk]."""
  b, tkp = kfirst.shape
  blocks = kfirst.reshape(b, tkp // bk, bk)
  nk = tkp // bk
  if st.causal:
    i_start = jnp.minimum(jnp.maximum(jnp.min(blocks, axis=-1), 0) // bq, nq_valid)
  else:
    i_start = jnp.zeros((b, nk), jnp.int32)
  padded = (jnp.arange(nk) * bk + bk > st.k_len)[None, :]
  if st.has_seg:
    i_full = jnp.full((b, nk), nq_valid, jnp.int32)
  else:
    i_full = jnp.where(padded, nq_valid, i_start)
    if st.causal:
      full_causal = (jnp.maximum(jnp.max(blocks, axis=-1), 0) + bq - 1) // bq
      i_full = jnp.maximum(i_full, jnp.minimum(full_causal, nq_valid))
  return i_start.reshape(-1).astype(jnp.int32), i_full.reshape(-1).astype(jnp.int32)


def _smem_spec():
  return pl.BlockSpec(memory_space=pltpu.SMEM)


def _compiler_params(n_parallel, n_arbitrary):
  return pltpu.CompilerParams(
      dimension_semantics=("parallel",) * n_parallel + ("arbitrary",) * n_arbitrary)


def _common(st, params, side, hp):
  """Transposed operands and broadcast side inputs shared by the kernels."""
  q, k, v = params["q"], params["k"], params["v"]
  kf = k.astype(jnp.float32)
  return dict(
      qT=q.transpose(0, 2, 1, 3), kT=k.transpose(0, 2, 1, 3), vT=v.transpose(0, 2, 1, 3),
      kn=_sublanes(jnp.sum(kf * kf, axis=-1).transpose(0, 2, 1)),      # [b, kvh, 8, tk]
      qlim=_lanes(side["qlim"]), q_seg=_lanes(side["q_seg"]), q_pos=_lanes(side["q_pos"]),
      k_seg=_sublanes(side["k_seg"]), k_pos=_sublanes(side["k_pos"]),
      kt=_sublanes(params["key_term"]), hp=hp.astype(jnp.float32))


def _block_scores(st, refs, q, k, head, masked, q_first, k_first, k_padded):
  """Logits (base 2), parts, visibility and the inputs the gradient terms need."""
  s = pc.dot(q, k, trans_b=True)
  qf = q.astype(jnp.float32)
  qn = jnp.sum(qf * qf, axis=1, keepdims=True)
  kn = refs["kn"][...][0:1, :]
  kt = refs["kt"][...][0:1, :] if st.has_kt else None
  dist = None
  if "q_pos" in refs:
    dist = pc.distance(refs["q_pos"][...][:, 0:1], refs["k_pos"][...][0:1, :])
  par = _par(refs["hp"], head)
  z, parts = pc.logits(st, s, qn, kn, kt, dist, par)
  vis = None
  if masked:
    bk = k.shape[0]
    k_idx = k_first + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    qseg = refs["q_seg"][...][:, 0:1] if st.has_seg else None
    kseg = refs["k_seg"][...][0:1, :] if st.has_seg else None
    vis = pc.visible(st, k_idx, refs["qlim"][...][:, 0:1], qseg, kseg, k_padded)
  del q_first
  return s, z, parts, vis, kt, dist, par


# ----------------------------------------------------------------------------------------------
# Forward.


def forward(st, params, side, hp):
  """Returns (out [b, tq, h, dv], lse [b, h, tq, 128] float32, base 2)."""
  c = _common(st, params, side, hp)
  qT, kT, vT = c["qT"], c["kT"], c["vT"]
  batch, heads, tqp, d = qT.shape
  tkp, dv = kT.shape[2], vT.shape[3]
  bq, bk, group = st.bq, st.bk, st.group
  nq, nk = tqp // bq, tkp // bk
  nk_valid = -(-st.k_len // bk)
  n_full, n_end = _k_bounds(st, side["qlim"], bq, bk, nk_valid)

  def kblk(b, i, j, n_end_ref):
    return jnp.minimum(j, jnp.maximum(n_end_ref[b * nq + i] - 1, 0))

  sp = pc.Specs()
  sp.add("q", qT, pl.BlockSpec((None, None, bq, d), lambda b, h, i, j, *_: (b, h, i, 0)))
  kmap = lambda b, h, i, j, nf, ne: (b, lax.div(h, group), kblk(b, i, j, ne), 0)
  sp.add("k", kT, pl.BlockSpec((None, None, bk, d), kmap))
  sp.add("v", vT, pl.BlockSpec((None, None, bk, dv), kmap))
  sp.add("kn", c["kn"], pl.BlockSpec((None, None, SUBLANES, bk),
                                     lambda b, h, i, j, nf, ne: (b, lax.div(h, group), 0,
                                                                 kblk(b, i, j, ne))))
  sp.add("hp", c["hp"], _smem_spec())
  for name in ("qlim", "q_seg", "q_pos"):
    sp.add(name, c[name], pl.BlockSpec((None, bq, LANES), lambda b, h, i, j, *_: (b, i, 0)))
  for name in ("k_seg", "k_pos", "kt"):
    sp.add(name, c[name], pl.BlockSpec((None, SUBLANES, bk),
                                       lambda b, h, i, j, nf, ne: (b, 0, kblk(b, i, j, ne))))
  out_shape = [jax.ShapeDtypeStruct((batch, heads, tqp, dv), qT.dtype),
               jax.ShapeDtypeStruct((batch, heads, tqp, LANES), jnp.float32)]
  out_specs = [pl.BlockSpec((None, None, bq, dv), lambda b, h, i, j, *_: (b, h, i, 0)),
               pl.BlockSpec((None, None, bq, LANES), lambda b, h, i, j, *_: (b, h, i, 0))]
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(batch, heads, nq, nk), in_specs=sp.specs,
      out_specs=out_specs,
      scratch_shapes=[pltpu.VMEM((bq, LANES), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32),
                      pltpu.VMEM((bq, dv), jnp.float32)])
  kernel = functools.partial(_fwd_kernel, st=st, names=tuple(sp.names), nq=nq, nk=nk)
  out, lse = pl.pallas_call(
      kernel, grid_spec=grid_spec, out_shape=out_shape,
      compiler_params=_compiler_params(3, 1), interpret=st.opt.interpret,
      name="gravity_fwd_tpu")(n_full, n_end, *sp.arrays)
  return out.transpose(0, 2, 1, 3), lse


def _fwd_kernel(n_full_ref, n_end_ref, *refs, st, names, nq, nk):
  r = dict(zip(names, refs))
  o_ref, lse_ref, m_scr, l_scr, acc_scr = refs[len(names):]
  b, h, i, j = (pl.program_id(a) for a in range(4))
  bk = st.bk

  @pl.when(j == 0)
  def _():
    m_scr[...] = jnp.full(m_scr.shape, pc.MASK_VALUE, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  n_full = n_full_ref[b * nq + i]
  n_end = n_end_ref[b * nq + i]

  def compute(masked):
    q, k, v = r["q"][...], r["k"][...], r["v"][...]
    _, z, _, vis, _, _, _ = _block_scores(st, r, q, k, h, masked, i * st.bq, j * bk,
                                          st.k_len % bk != 0)
    if vis is not None:
      z = jnp.where(vis, z, pc.MASK_VALUE)
    m_prev = m_scr[...][:, 0:1]
    l_prev = l_scr[...][:, 0:1]
    m_new = jnp.maximum(m_prev, jnp.max(z, axis=1, keepdims=True))
    p = jnp.exp2(z - m_new)
    if vis is not None:
      p = jnp.where(vis, p, 0.0)
    alpha = jnp.exp2(m_prev - m_new)
    l_new = alpha * l_prev + jnp.sum(p, axis=1, keepdims=True)
    acc_scr[...] = alpha * acc_scr[...] + pc.dot(p.astype(v.dtype), v)
    m_scr[...] = jnp.broadcast_to(m_new, m_scr.shape)
    l_scr[...] = jnp.broadcast_to(l_new, l_scr.shape)

  pl.when(j < n_full)(lambda: compute(False))
  pl.when(jnp.logical_and(j >= n_full, j < n_end))(lambda: compute(True))

  @pl.when(j == nk - 1)
  def _():
    l = l_scr[...][:, 0:1]
    seen = l > 0.0
    l_safe = jnp.where(seen, l, 1.0)
    o_ref[...] = (acc_scr[...] / l_safe).astype(o_ref.dtype)
    lse = jnp.where(seen, m_scr[...][:, 0:1] + jnp.log2(l_safe), 0.0)
    lse_ref[...] = jnp.broadcast_to(lse, lse_ref.shape)


# ----------------------------------------------------------------------------------------------
# Backward.


def backward(st, params, side, hp, lse, delta, d_out):
  """Returns (dq, dk, dv, d key_term [b, tk] or None, [4 x [h]] per-head parameter grads)."""
  c = _common(st, params, side, hp)
  qT, kT, vT = c["qT"], c["kT"], c["vT"]
  batch, heads, tqp, d = qT.shape
  kv_heads, tkp, dv = kT.shape[1], kT.shape[2], vT.shape[3]
  group = st.group
  doT = d_out.transpose(0, 2, 1, 3)
  delta_l = jnp.broadcast_to(delta[..., None], delta.shape + (LANES,))

  # dK / dV: grid (b, kv_head, key block, group head, query block).
  bq, bk = st.bq_dkv, st.bk_dkv
  nq, nk = tqp // bq, tkp // bk
  nq_valid = -(-st.q_len // bq)
  i_start, i_full = _q_bounds(st, side["kfirst"], bq, bk, nq_valid)

  def qblk(b, j, i, i_start_ref):
    return jnp.minimum(jnp.maximum(i, i_start_ref[b * nk + j]), nq_valid - 1)

  sp = pc.Specs()
  qmap = lambda b, c_, j, g, i, s0, s1: (b, c_ * group + g, qblk(b, j, i, s0), 0)
  sp.add("q", qT, pl.BlockSpec((None, None, bq, d), qmap))
  sp.add("do", doT, pl.BlockSpec((None, None, bq, dv), qmap))
  sp.add("lse", lse, pl.BlockSpec((None, None, bq, LANES), qmap))
  sp.add("delta", delta_l, pl.BlockSpec((None, None, bq, LANES), qmap))
  for name in ("qlim", "q_seg", "q_pos"):
    sp.add(name, c[name], pl.BlockSpec(
        (None, bq, LANES), lambda b, c_, j, g, i, s0, s1: (b, qblk(b, j, i, s0), 0)))
  kmap = lambda b, c_, j, g, i, *_: (b, c_, j, 0)
  sp.add("k", kT, pl.BlockSpec((None, None, bk, d), kmap))
  sp.add("v", vT, pl.BlockSpec((None, None, bk, dv), kmap))
  sp.add("kn", c["kn"], pl.BlockSpec((None, None, SUBLANES, bk),
                                     lambda b, c_, j, g, i, *_: (b, c_, 0, j)))
  for name in ("k_seg", "k_pos", "kt"):
    sp.add(name, c[name], pl.BlockSpec((None, SUBLANES, bk),
                                       lambda b, c_, j, g, i, *_: (b, 0, j)))
  sp.add("hp", c["hp"], _smem_spec())
  out_shape = [jax.ShapeDtypeStruct(kT.shape, kT.dtype), jax.ShapeDtypeStruct(vT.shape, vT.dtype)]
  out_specs = [pl.BlockSpec((None, None, bk, d), kmap), pl.BlockSpec((None, None, bk, dv), kmap)]
  if st.has_kt:
    out_shape.append(jax.ShapeDtypeStruct((batch, kv_heads, SUBLANES, tkp), jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, SUBLANES, bk),
                                  lambda b, c_, j, g, i, *_: (b, c_, 0, j)))
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(batch, kv_heads, nk, group, nq), in_specs=sp.specs,
      out_specs=out_specs,
      scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, dv), jnp.float32),
                      pltpu.VMEM((SUBLANES, bk), jnp.float32),
                      pltpu.VMEM((SUBLANES, bk), jnp.float32)])
  kernel = functools.partial(_dkdv_kernel, st=st, names=tuple(sp.names), nq=nq, nk=nk,
                             nq_valid=nq_valid)
  res = pl.pallas_call(
      kernel, grid_spec=grid_spec, out_shape=out_shape,
      compiler_params=_compiler_params(3, 2), interpret=st.opt.interpret,
      name="gravity_bwd_dkdv_tpu")(i_start, i_full, *sp.arrays)
  dk, dv_ = res[0].transpose(0, 2, 1, 3), res[1].transpose(0, 2, 1, 3)
  dkt = jnp.sum(res[2][:, :, 0, :], axis=1) if st.has_kt else None

  # dQ and the per-head parameter gradients: grid (b, head, query block, key block).
  bq, bk = st.bq_dq, st.bk_dq
  nq, nk = tqp // bq, tkp // bk
  nk_valid = -(-st.k_len // bk)
  n_full, n_end = _k_bounds(st, side["qlim"], bq, bk, nk_valid)

  def kblk(b, i, j, n_end_ref):
    return jnp.minimum(j, jnp.maximum(n_end_ref[b * nq + i] - 1, 0))

  sp = pc.Specs()
  qmap = lambda b, h, i, j, *_: (b, h, i, 0)
  sp.add("q", qT, pl.BlockSpec((None, None, bq, d), qmap))
  sp.add("do", doT, pl.BlockSpec((None, None, bq, dv), qmap))
  sp.add("lse", lse, pl.BlockSpec((None, None, bq, LANES), qmap))
  sp.add("delta", delta_l, pl.BlockSpec((None, None, bq, LANES), qmap))
  for name in ("qlim", "q_seg", "q_pos"):
    sp.add(name, c[name], pl.BlockSpec((None, bq, LANES), lambda b, h, i, j, *_: (b, i, 0)))
  kmap = lambda b, h, i, j, nf, ne: (b, lax.div(h, group), kblk(b, i, j, ne), 0)
  sp.add("k", kT, pl.BlockSpec((None, None, bk, d), kmap))
  sp.add("v", vT, pl.BlockSpec((None, None, bk, dv), kmap))
  sp.add("kn", c["kn"], pl.BlockSpec((None, None, SUBLANES, bk),
                                     lambda b, h, i, j, nf, ne: (b, lax.div(h, group), 0,
                                                                 kblk(b, i, j, ne))))
  for name in ("k_seg", "k_pos", "kt"):
    sp.add(name, c[name], pl.BlockSpec((None, SUBLANES, bk),
                                       lambda b, h, i, j, nf, ne: (b, 0, kblk(b, i, j, ne))))
  sp.add("hp", c["hp"], _smem_spec())
  want = pc.small_grads(st)
  out_shape = [jax.ShapeDtypeStruct(qT.shape, qT.dtype)]
  out_specs = [pl.BlockSpec((None, None, bq, d), qmap)]
  for _ in want:
    out_shape.append(jax.ShapeDtypeStruct((batch, heads, tqp, LANES), jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, bq, LANES), qmap))
  scratch = [pltpu.VMEM((bq, d), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32)]
  scratch += [pltpu.VMEM((bq, LANES), jnp.float32) for _ in want]
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(batch, heads, nq, nk), in_specs=sp.specs,
      out_specs=out_specs, scratch_shapes=scratch)
  kernel = functools.partial(_dq_kernel, st=st, names=tuple(sp.names), want=want, nq=nq, nk=nk)
  res = pl.pallas_call(
      kernel, grid_spec=grid_spec, out_shape=out_shape,
      compiler_params=_compiler_params(3, 1), interpret=st.opt.interpret,
      name="gravity_bwd_dq_tpu")(n_full, n_end, *sp.arrays)
  dq = res[0].transpose(0, 2, 1, 3)
  sums = [jnp.sum(x[..., 0], axis=(0, 2)) for x in res[1:]]
  dpar = pc.collect_params(want, sums, heads)
  return dq, dk, dv_, dkt, dpar


def _dkdv_kernel(i_start_ref, i_full_ref, *refs, st, names, nq, nk, nq_valid):
  r = dict(zip(names, refs))
  outs = refs[len(names):]
  n_out = 3 if st.has_kt else 2
  dk_ref, dv_ref = outs[0], outs[1]
  dk_scr, dv_scr, col_scr, dkt_scr = outs[n_out:]
  b, c, j, g, i = (pl.program_id(a) for a in range(5))
  bq, bk = st.bq_dkv, st.bk_dkv
  head = c * st.group + g
  want = ("kt",) if st.has_kt else ()

  @pl.when(jnp.logical_and(g == 0, i == 0))
  def _():
    dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
    dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)
    col_scr[...] = jnp.zeros(col_scr.shape, jnp.float32)
    dkt_scr[...] = jnp.zeros(dkt_scr.shape, jnp.float32)

  i_start = i_start_ref[b * nk + j]
  i_full = i_full_ref[b * nk + j]

  def compute(masked):
    q, k, v, do = r["q"][...], r["k"][...], r["v"][...], r["do"][...]
    s, z, parts, vis, kt, dist, par = _block_scores(st, r, q, k, head, masked, i * bq, j * bk,
                                                    st.k_len % bk != 0)
    p = jnp.exp2(z - r["lse"][...][:, 0:1])
    if vis is not None:
      p = jnp.where(vis, p, 0.0)
    dv_scr[...] += pc.dot(p.astype(do.dtype), do, trans_a=True)
    dp = pc.dot(do, v, trans_b=True)
    dz = p * (dp - r["delta"][...][:, 0:1])
    terms = pc.grad_terms(st, dz, s, parts, kt, dist, par, want)
    if st.score == "dot":
      dk_scr[...] += pc.dot(terms["ds"].astype(q.dtype), q, trans_a=True)
    else:
      gd = terms["g"].astype(q.dtype)
      col = jnp.sum(gd.astype(jnp.float32), axis=0, keepdims=True)
      col_scr[...] += jnp.broadcast_to(col, col_scr.shape)
      dk_scr[...] += pc.dot(gd, q, trans_a=True)
    if st.has_kt:
      dkt_scr[...] += jnp.broadcast_to(jnp.sum(terms["kt"], axis=0, keepdims=True),
                                       dkt_scr.shape)

  active = jnp.logical_and(i >= i_start, i < nq_valid)
  pl.when(jnp.logical_and(active, i < i_full))(lambda: compute(True))
  pl.when(jnp.logical_and(active, i >= i_full))(lambda: compute(False))

  @pl.when(jnp.logical_and(g == st.group - 1, i == nq - 1))
  def _():
    if st.score == "dot":
      dk = dk_scr[...]
    else:
      # The column sums as a column: broadcast the [1, bk] row to an aligned tile, transpose.
      col_t = jnp.transpose(jnp.broadcast_to(col_scr[...][0:1, :], (LANES, bk)))[:, 0:1]
      dk = 2.0 * (col_t * r["k"][...].astype(jnp.float32) - dk_scr[...])
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)
    if st.has_kt:
      outs[2][...] = dkt_scr[...]


def _dq_kernel(n_full_ref, n_end_ref, *refs, st, names, want, nq, nk):
  r = dict(zip(names, refs))
  outs = refs[len(names):]
  n_out = 1 + len(want)
  dq_ref, par_refs = outs[0], outs[1:n_out]
  gk_scr, row_scr = outs[n_out], outs[n_out + 1]
  sum_scrs = outs[n_out + 2:]
  b, h, i, j = (pl.program_id(a) for a in range(4))
  bk = st.bk_dq

  @pl.when(j == 0)
  def _():
    for ref in (gk_scr, row_scr, *sum_scrs):
      ref[...] = jnp.zeros(ref.shape, jnp.float32)

  n_full = n_full_ref[b * nq + i]
  n_end = n_end_ref[b * nq + i]

  def compute(masked):
    q, k, v, do = r["q"][...], r["k"][...], r["v"][...], r["do"][...]
    s, z, parts, vis, kt, dist, par = _block_scores(st, r, q, k, h, masked, i * st.bq_dq,
                                                    j * bk, st.k_len % bk != 0)
    p = jnp.exp2(z - r["lse"][...][:, 0:1])
    if vis is not None:
      p = jnp.where(vis, p, 0.0)
    dp = pc.dot(do, v, trans_b=True)
    dz = p * (dp - r["delta"][...][:, 0:1])
    terms = pc.grad_terms(st, dz, s, parts, kt, dist, par, want)
    if st.score == "dot":
      gk_scr[...] += pc.dot(terms["ds"].astype(k.dtype), k)
    else:
      gd = terms["g"].astype(k.dtype)
      row = jnp.sum(gd.astype(jnp.float32), axis=1, keepdims=True)
      row_scr[...] += jnp.broadcast_to(row, row_scr.shape)
      gk_scr[...] += pc.dot(gd, k)
    for ref, name in zip(sum_scrs, want):
      ref[...] += jnp.broadcast_to(jnp.sum(terms[name], axis=1, keepdims=True), ref.shape)

  pl.when(j < n_full)(lambda: compute(False))
  pl.when(jnp.logical_and(j >= n_full, j < n_end))(lambda: compute(True))

  @pl.when(j == nk - 1)
  def _():
    if st.score == "dot":
      dq = gk_scr[...]
    else:
      dq = 2.0 * (row_scr[...][:, 0:1] * r["q"][...].astype(jnp.float32) - gk_scr[...])
    dq_ref[...] = dq.astype(dq_ref.dtype)
    for ref, scr in zip(par_refs, sum_scrs):
      ref[...] = scr[...]
