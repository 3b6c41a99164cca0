"""Triton (NVIDIA GPU) lowering of the fused gravity-attention kernels (see `pallas`).

A program owns one (query block, batch, head) in the forward and dQ kernels, and one (key
block, batch, key/value head) in the dK/dV kernel, which loops over the query heads of its
group. The key (query) loop runs inside the kernel in two parts: blocks that every query sees
whole run without a mask, the diagonal and padded ones with it; blocks that causality (with
`q_offset`) hides are not visited. Under causality the query blocks run longest rows first.
"""

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp

import ban_jax.ops.gravity.pallas_common as pc

_LANES = 16                                     # width of the replicated per-head rows


def _triton_params(opt, backward):
  plgpu = pc.plgpu()
  if backward:
    return plgpu.CompilerParams(num_warps=opt.bwd_num_warps, num_stages=opt.bwd_num_stages)
  return plgpu.CompilerParams(num_warps=opt.num_warps, num_stages=opt.num_stages)


def _hp_rows(hp):
  """[h, 4] -> [h, 4, 16]: each scalar replicated along a power-of-two row for Triton."""
  return jnp.broadcast_to(hp[:, :, None], hp.shape + (_LANES,))


def _load_par_triton(hp_ref, head=None):
  """Per-head scalars from a [4, 16] (or [group, 4, 16] with `head`) replicated block."""
  par = {}
  for i, name in enumerate(pc.PARAMS):
    row = hp_ref[i, :] if head is None else hp_ref[head, i, :]
    par[name] = jnp.max(row)
  return par


def _k_loop_bounds(st, bk, qlim, nk_valid):
  """(n_full, n_end): key blocks [0, n_full) need no mask, [n_full, n_end) need one."""
  k_full = st.k_len // bk              # key blocks with no padding
  if not st.causal:
    n_end = nk_valid
    n_full = 0 if st.has_seg else k_full
    return n_full, n_end
  last = jnp.max(qlim)                 # last key any query of the block may see
  n_end = jnp.minimum(lax.div(jnp.maximum(last, -1) + bk, bk), nk_valid)
  if st.has_seg:
    return jnp.int32(0), n_end
  first = jnp.min(qlim)                # keys <= first are visible to every query of the block
  n_full = jnp.minimum(lax.div(jnp.maximum(first + 1, 0), bk), jnp.minimum(n_end, k_full))
  return n_full, n_end


def forward(st, params, side, qn, kn, hp):
  """Returns (out [b, tq, h, dv], lse [b, h, tq] float32, base 2), on the padded operands."""
  q, k, v = params["q"], params["k"], params["v"]
  batch, tqp, heads, dp = q.shape
  tkp, dvp = k.shape[1], v.shape[3]
  bq, bk, group = st.bq, st.bk, st.group
  nq = tqp // bq
  nk_valid = -(-st.k_len // bk)
  rev = (lambda i: nq - 1 - i) if st.causal else (lambda i: i)   # long rows first

  arrays, specs, names = [], [], []

  def add(name, x, spec):
    if x is not None:
      arrays.append(x)
      specs.append(spec)
      names.append(name)
  add("q", q, pl.BlockSpec((None, bq, None, dp), lambda i, b, h: (b, rev(i), h, 0)))
  add("k", k, pl.BlockSpec((None, tkp, None, dp), lambda i, b, h: (b, 0, h // group, 0)))
  add("v", v, pl.BlockSpec((None, tkp, None, dvp), lambda i, b, h: (b, 0, h // group, 0)))
  add("qn", qn, pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, rev(i))))
  add("kn", kn, pl.BlockSpec((None, None, tkp), lambda i, b, h: (b, h // group, 0)))
  add("hp", _hp_rows(hp), pl.BlockSpec((None, 4, _LANES), lambda i, b, h: (h, 0, 0)))
  add("qlim", side["qlim"], pl.BlockSpec((None, bq), lambda i, b, h: (b, rev(i))))
  add("q_seg", side["q_seg"], pl.BlockSpec((None, bq), lambda i, b, h: (b, rev(i))))
  add("k_seg", side["k_seg"], pl.BlockSpec((None, tkp), lambda i, b, h: (b, 0)))
  add("q_pos", side["q_pos"], pl.BlockSpec((None, bq), lambda i, b, h: (b, rev(i))))
  add("k_pos", side["k_pos"], pl.BlockSpec((None, tkp), lambda i, b, h: (b, 0)))
  add("kt", params["key_term"], pl.BlockSpec((None, tkp), lambda i, b, h: (b, 0)))
  out_shape = [jax.ShapeDtypeStruct((batch, tqp, heads, dvp), q.dtype),
               jax.ShapeDtypeStruct((batch, heads, tqp), jnp.float32)]
  out_specs = [pl.BlockSpec((None, bq, None, dvp), lambda i, b, h: (b, rev(i), h, 0)),
               pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, rev(i)))]
  kernel = functools.partial(_triton_fwd_kernel, st=st, names=tuple(names), nk_valid=nk_valid)
  out, lse = pl.pallas_call(
      kernel, grid=(nq, batch, heads), in_specs=specs, out_specs=out_specs,
      out_shape=out_shape, compiler_params=_triton_params(st.opt, False),
      interpret=st.opt.interpret, name="gravity_fwd")(*arrays)
  return out, lse


def _triton_fwd_kernel(*refs, st, names, nk_valid):
  r = dict(zip(names, refs))
  o_ref, lse_ref = refs[len(names):]
  bq, bk = st.bq, st.bk
  q = r["q"][...]
  qn = r["qn"][...][:, None]
  qlim = r["qlim"][...]
  par = _load_par_triton(r["hp"])
  qseg = r["q_seg"][...][:, None] if st.has_seg else None
  qpos = r["q_pos"][...][:, None] if "q_pos" in r else None
  k_padded = st.k_len % bk != 0

  def step(j, carry, masked):
    o, m, l = carry
    ks = pl.multiple_of(j * bk, bk)
    kb = r["k"][pl.ds(ks, bk), :]
    s = pc.dot(q, kb, trans_b=True)
    kt = r["kt"][pl.ds(ks, bk)][None, :] if st.has_kt else None
    dist = pc.distance(qpos, r["k_pos"][pl.ds(ks, bk)][None, :]) if qpos is not None else None
    z, _ = pc.logits(st, s, qn, r["kn"][pl.ds(ks, bk)][None, :], kt, dist, par)
    vis = None
    if masked:
      k_idx = ks + jnp.arange(bk, dtype=jnp.int32)[None, :]
      kseg = r["k_seg"][pl.ds(ks, bk)][None, :] if st.has_seg else None
      vis = pc.visible(st, k_idx, qlim[:, None], qseg, kseg, k_padded)
    if vis is not None:
      z = jnp.where(vis, z, pc.MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(z, axis=1))
    p = jnp.exp2(z - m_new[:, None])
    if vis is not None:
      p = jnp.where(vis, p, 0.0)
    alpha = jnp.exp2(m - m_new)
    l = alpha * l + jnp.sum(p, axis=1)
    vb = r["v"][pl.ds(ks, bk), :]
    o = alpha[:, None] * o + pc.dot(p.astype(vb.dtype), vb)
    return o, m_new, l

  n_full, n_end = _k_loop_bounds(st, bk, qlim, nk_valid)
  carry = (jnp.zeros((bq, o_ref.shape[-1]), jnp.float32),
           jnp.full((bq,), pc.MASK_VALUE, jnp.float32), jnp.zeros((bq,), jnp.float32))
  carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
  o, m, l = lax.fori_loop(n_full, n_end, functools.partial(step, masked=True), carry)
  seen = l > 0.0
  l_safe = jnp.where(seen, l, 1.0)
  o_ref[...] = (o / l_safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log2(l_safe), 0.0)


def backward(st, params, side, qn, kn, hp, lse, delta, d_out):
  """Returns (dq, dk, dv, d key_term [b, tk] or None, [4 x [h]] per-head parameter grads)."""
  q, k, v = params["q"], params["k"], params["v"]
  batch, tqp, heads, dp = q.shape
  tkp, kv_heads, dvp = k.shape[1], k.shape[2], v.shape[3]
  group = st.group
  hp_rows = _hp_rows(hp)
  fused = st.opt.fused_backward
  want = pc.small_grads(st)

  # dK, dV (and the key-mass gradient) per key block; loops over the group's query heads.
  # Fused: the same programs also add each query block's dQ into a float32 buffer (atomics)
  # and keep the per-head parameter sums, so the probabilities are recomputed once.
  bq, bk = st.bq_dkv, st.bk_dkv
  nk = tkp // bk
  arrays, specs, names = [], [], []

  def add(name, x, spec):
    if x is not None:
      arrays.append(x)
      specs.append(spec)
      names.append(name)
  add("q", q, pl.BlockSpec((None, tqp, group, dp), lambda j, b, c: (b, 0, c, 0)))
  add("do", d_out, pl.BlockSpec((None, tqp, group, dvp), lambda j, b, c: (b, 0, c, 0)))
  add("qn", qn, pl.BlockSpec((None, group, tqp), lambda j, b, c: (b, c, 0)))
  add("lse", lse, pl.BlockSpec((None, group, tqp), lambda j, b, c: (b, c, 0)))
  add("delta", delta, pl.BlockSpec((None, group, tqp), lambda j, b, c: (b, c, 0)))
  add("hp", hp_rows, pl.BlockSpec((group, 4, _LANES), lambda j, b, c: (c, 0, 0)))
  add("qlim", side["qlim"], pl.BlockSpec((None, tqp), lambda j, b, c: (b, 0)))
  add("q_seg", side["q_seg"], pl.BlockSpec((None, tqp), lambda j, b, c: (b, 0)))
  add("q_pos", side["q_pos"], pl.BlockSpec((None, tqp), lambda j, b, c: (b, 0)))
  add("k", k, pl.BlockSpec((None, bk, None, dp), lambda j, b, c: (b, j, c, 0)))
  add("v", v, pl.BlockSpec((None, bk, None, dvp), lambda j, b, c: (b, j, c, 0)))
  add("kn", kn, pl.BlockSpec((None, None, bk), lambda j, b, c: (b, c, j)))
  add("kfirst", side["kfirst"], pl.BlockSpec((None, bk), lambda j, b, c: (b, j)))
  add("k_seg", side["k_seg"], pl.BlockSpec((None, bk), lambda j, b, c: (b, j)))
  add("k_pos", side["k_pos"], pl.BlockSpec((None, bk), lambda j, b, c: (b, j)))
  add("kt", params["key_term"], pl.BlockSpec((None, bk), lambda j, b, c: (b, j)))
  dq_spec = pl.BlockSpec((None, tqp, group, dp), lambda j, b, c: (b, 0, c, 0))
  aliases = {}
  if fused:
    # Zeros the kernel accumulates into: the output aliases this input.
    aliases = {len(arrays): 2}
    add("dq_init", jnp.zeros((batch, tqp, heads, dp), jnp.float32), dq_spec)
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  out_specs = [pl.BlockSpec((None, bk, None, dp), lambda j, b, c: (b, j, c, 0)),
               pl.BlockSpec((None, bk, None, dvp), lambda j, b, c: (b, j, c, 0))]
  if fused:
    out_shape.append(jax.ShapeDtypeStruct((batch, tqp, heads, dp), jnp.float32))
    out_specs.append(dq_spec)
    for _ in want:     # per key and query head: the parameter gradients summed over queries
      out_shape.append(jax.ShapeDtypeStruct((batch, heads, tkp), jnp.float32))
      out_specs.append(pl.BlockSpec((None, group, bk), lambda j, b, c: (b, c, j)))
  if st.has_kt:
    out_shape.append(jax.ShapeDtypeStruct((batch, kv_heads, tkp), jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, bk), lambda j, b, c: (b, c, j)))
  kernel = functools.partial(_triton_dkdv_kernel, st=st, names=tuple(names),
                             nq_valid=-(-st.q_len // bq), want=want if fused else None)
  res = pl.pallas_call(
      kernel, grid=(nk, batch, kv_heads), in_specs=specs, out_specs=out_specs,
      out_shape=out_shape, compiler_params=_triton_params(st.opt, True),
      input_output_aliases=aliases, interpret=st.opt.interpret,
      name="gravity_bwd_fused" if fused else "gravity_bwd_dkdv")(*arrays)
  dk, dv = res[0], res[1]
  dkt = jnp.sum(res[-1], axis=1) if st.has_kt else None
  if fused:
    dq = res[2].astype(q.dtype)
    dpar = pc.collect_params(want, [jnp.sum(x, axis=(0, 2)) for x in res[3:3 + len(want)]],
                             heads)
    return dq, dk, dv, dkt, dpar

  # dQ and the per-head parameter gradients (per-row partial sums) per query block.
  bq, bk = st.bq_dq, st.bk_dq
  nq = tqp // bq
  rev = (lambda i: nq - 1 - i) if st.causal else (lambda i: i)
  arrays, specs, names = [], [], []
  add("q", q, pl.BlockSpec((None, bq, None, dp), lambda i, b, h: (b, rev(i), h, 0)))
  add("do", d_out, pl.BlockSpec((None, bq, None, dvp), lambda i, b, h: (b, rev(i), h, 0)))
  add("qn", qn, pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, rev(i))))
  add("lse", lse, pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, rev(i))))
  add("delta", delta, pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, rev(i))))
  add("hp", hp_rows, pl.BlockSpec((None, 4, _LANES), lambda i, b, h: (h, 0, 0)))
  add("qlim", side["qlim"], pl.BlockSpec((None, bq), lambda i, b, h: (b, rev(i))))
  add("q_seg", side["q_seg"], pl.BlockSpec((None, bq), lambda i, b, h: (b, rev(i))))
  add("q_pos", side["q_pos"], pl.BlockSpec((None, bq), lambda i, b, h: (b, rev(i))))
  add("k", k, pl.BlockSpec((None, tkp, None, dp), lambda i, b, h: (b, 0, h // group, 0)))
  add("v", v, pl.BlockSpec((None, tkp, None, dvp), lambda i, b, h: (b, 0, h // group, 0)))
  add("kn", kn, pl.BlockSpec((None, None, tkp), lambda i, b, h: (b, h // group, 0)))
  add("k_seg", side["k_seg"], pl.BlockSpec((None, tkp), lambda i, b, h: (b, 0)))
  add("k_pos", side["k_pos"], pl.BlockSpec((None, tkp), lambda i, b, h: (b, 0)))
  add("kt", params["key_term"], pl.BlockSpec((None, tkp), lambda i, b, h: (b, 0)))
  want = pc.small_grads(st)
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
  out_specs = [pl.BlockSpec((None, bq, None, dp), lambda i, b, h: (b, rev(i), h, 0))]
  for _ in want:
    out_shape.append(jax.ShapeDtypeStruct((batch, heads, tqp), jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, rev(i))))
  kernel = functools.partial(_triton_dq_kernel, st=st, names=tuple(names), want=want,
                             nk_valid=-(-st.k_len // bk))
  res = pl.pallas_call(
      kernel, grid=(nq, batch, heads), in_specs=specs, out_specs=out_specs,
      out_shape=out_shape, compiler_params=_triton_params(st.opt, True),
      interpret=st.opt.interpret, name="gravity_bwd_dq")(*arrays)
  dq = res[0]
  dpar = pc.collect_params(want, [jnp.sum(x, axis=(0, 2)) for x in res[1:]], heads)
  return dq, dk, dv, dkt, dpar


def _triton_dkdv_kernel(*refs, st, names, nq_valid, want):
  """dK, dV (and d key_term) of one key block; with `want` (fused) also dQ and the sums."""
  r = dict(zip(names, refs))
  outs = refs[len(names):]
  dk_ref, dv_ref = outs[0], outs[1]
  fused = want is not None
  dq_ref = outs[2] if fused else None
  par_refs = outs[3:3 + len(want)] if fused else ()
  bq, bk = st.bq_dkv, st.bk_dkv
  # Transposed orientation: tiles are [bk, bq] (keys on rows), so dV += Pᵀ·dO and
  # dK += Gᵀ·Q are plain products of what is in registers, with no transposes of the score
  # tiles (a transpose is a round trip through shared memory and more live registers).
  kb = r["k"][...]
  vb = r["v"][...]
  kn = r["kn"][...][:, None]
  kt = r["kt"][...][:, None] if st.has_kt else None
  kseg = r["k_seg"][...][:, None] if st.has_seg else None
  kpos = r["k_pos"][...][:, None] if "k_pos" in r else None
  kfirst = r["kfirst"][...]
  ks = pl.program_id(0) * bk
  k_idx = ks + jnp.arange(bk, dtype=jnp.int32)[:, None]
  k_padded = ks + bk > st.k_len         # traced: this key block holds padding
  terms_wanted = (("kt",) if st.has_kt else ()) + (want or ())

  # Query blocks [i_start, i_full) need a mask, [i_full, nq_valid) do not.
  if st.causal:
    i_start = jnp.minimum(lax.div(jnp.maximum(jnp.min(kfirst), 0), bq), nq_valid)
  else:
    i_start = 0
  if st.has_seg or st.k_len % bk:
    # Segments mask anywhere; a block with padded keys needs the mask throughout.
    i_full = nq_valid if st.has_seg else jnp.where(k_padded, nq_valid, i_start)
  else:
    i_full = i_start
  if st.causal and not st.has_seg:
    # Queries i >= max(kfirst) see the whole key block.
    full_causal = lax.div(jnp.maximum(jnp.max(kfirst), 0) + bq - 1, bq)
    i_full = jnp.maximum(i_full, jnp.minimum(full_causal, nq_valid))

  def q_step(i, carry, head, par, masked):
    dk_acc, col, dv, dkt, sums = carry
    qs = pl.multiple_of(i * bq, bq)
    qb = r["q"][pl.ds(qs, bq), head, :]
    dob = r["do"][pl.ds(qs, bq), head, :]
    qn = r["qn"][head, pl.ds(qs, bq)][None, :]
    lse = r["lse"][head, pl.ds(qs, bq)][None, :]
    delta = r["delta"][head, pl.ds(qs, bq)][None, :]
    s = pc.dot(kb, qb, trans_b=True)                       # [bk, bq]
    dist = pc.distance(kpos, r["q_pos"][pl.ds(qs, bq)][None, :]) if kpos is not None else None
    z, parts = pc.logits(st, s, qn, kn, kt, dist, par)
    p = jnp.exp2(z - lse)
    if masked:
      qlim = r["qlim"][pl.ds(qs, bq)][None, :]
      qseg = r["q_seg"][pl.ds(qs, bq)][None, :] if st.has_seg else None
      vis = pc.visible(st, k_idx, qlim, qseg, kseg, st.k_len % bk != 0)
      if vis is not None:
        p = jnp.where(vis, p, 0.0)
    dv = dv + pc.dot(p.astype(dob.dtype), dob)
    dp = pc.dot(vb, dob, trans_b=True)
    dz = p * (dp - delta)
    terms = pc.grad_terms(st, dz, s, parts, kt, dist, par, terms_wanted)
    if st.score == "dot":
      ds = terms["ds"].astype(qb.dtype)
      dk_acc = dk_acc + pc.dot(ds, qb)
      if fused:
        dq = pc.dot(ds, kb, trans_a=True)                  # [bq, d]
    else:
      g = terms["g"].astype(qb.dtype)
      col = col + jnp.sum(g.astype(jnp.float32), axis=1)
      dk_acc = dk_acc + pc.dot(g, qb)
      if fused:
        # This key block's share of dq_i = 2 (Σ_j g_ij q_i − Σ_j g_ij k_j).
        row = jnp.sum(g.astype(jnp.float32), axis=0)
        dq = 2.0 * (row[:, None] * qb.astype(jnp.float32) - pc.dot(g, kb, trans_a=True))
    if fused:
      pc.plgpu().atomic_add(dq_ref, (pl.ds(qs, bq), head, slice(None)), dq)
      sums = tuple(acc + jnp.sum(terms[name], axis=1) for acc, name in zip(sums, want))
    if st.has_kt:
      dkt = dkt + jnp.sum(terms["kt"], axis=1)
    return dk_acc, col, dv, dkt, sums

  def head_step(head, carry):
    par = _load_par_triton(r["hp"], head)
    carry = carry + (tuple(jnp.zeros((bk,), jnp.float32) for _ in want or ()),)
    carry = lax.fori_loop(i_start, i_full,
                          functools.partial(q_step, head=head, par=par, masked=True), carry)
    carry = lax.fori_loop(i_full, nq_valid,
                          functools.partial(q_step, head=head, par=par, masked=False), carry)
    for ref, x in zip(par_refs, carry[-1]):
      ref[head, :] = x
    return carry[:-1]

  carry = (jnp.zeros((bk, kb.shape[-1]), jnp.float32), jnp.zeros((bk,), jnp.float32),
           jnp.zeros((bk, vb.shape[-1]), jnp.float32), jnp.zeros((bk,), jnp.float32))
  dk_acc, col, dv, dkt = lax.fori_loop(0, st.group, head_step, carry)
  if st.score == "dot":
    dk = dk_acc
  else:
    dk = 2.0 * (col[:, None] * kb.astype(jnp.float32) - dk_acc)
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  if st.has_kt:
    outs[-1][...] = dkt


def _triton_dq_kernel(*refs, st, names, want, nk_valid):
  r = dict(zip(names, refs))
  outs = refs[len(names):]
  dq_ref = outs[0]
  bq, bk = st.bq_dq, st.bk_dq
  qb = r["q"][...]
  dob = r["do"][...]
  qn = r["qn"][...][:, None]
  lse = r["lse"][...][:, None]
  delta = r["delta"][...][:, None]
  qlim = r["qlim"][...]
  par = _load_par_triton(r["hp"])
  qseg = r["q_seg"][...][:, None] if st.has_seg else None
  qpos = r["q_pos"][...][:, None] if "q_pos" in r else None
  k_padded = st.k_len % bk != 0

  def step(j, carry, masked):
    gk, row, sums = carry
    ks = pl.multiple_of(j * bk, bk)
    kb = r["k"][pl.ds(ks, bk), :]
    vb = r["v"][pl.ds(ks, bk), :]
    s = pc.dot(qb, kb, trans_b=True)
    kt = r["kt"][pl.ds(ks, bk)][None, :] if st.has_kt else None
    dist = pc.distance(qpos, r["k_pos"][pl.ds(ks, bk)][None, :]) if qpos is not None else None
    z, parts = pc.logits(st, s, qn, r["kn"][pl.ds(ks, bk)][None, :], kt, dist, par)
    p = jnp.exp2(z - lse)
    if masked:
      k_idx = ks + jnp.arange(bk, dtype=jnp.int32)[None, :]
      kseg = r["k_seg"][pl.ds(ks, bk)][None, :] if st.has_seg else None
      vis = pc.visible(st, k_idx, qlim[:, None], qseg, kseg, k_padded)
      if vis is not None:
        p = jnp.where(vis, p, 0.0)
    dp = pc.dot(dob, vb, trans_b=True)
    dz = p * (dp - delta)
    terms = pc.grad_terms(st, dz, s, parts, kt, dist, par, want)
    if st.score == "dot":
      gk = gk + pc.dot(terms["ds"].astype(kb.dtype), kb)
    else:
      g = terms["g"].astype(kb.dtype)
      row = row + jnp.sum(g.astype(jnp.float32), axis=1)
      gk = gk + pc.dot(g, kb)
    sums = tuple(acc + jnp.sum(terms[name], axis=1) for acc, name in zip(sums, want))
    return gk, row, sums

  n_full, n_end = _k_loop_bounds(st, bk, qlim, nk_valid)
  carry = (jnp.zeros((bq, qb.shape[-1]), jnp.float32), jnp.zeros((bq,), jnp.float32),
           tuple(jnp.zeros((bq,), jnp.float32) for _ in want))
  carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
  gk, row, sums = lax.fori_loop(n_full, n_end, functools.partial(step, masked=True), carry)
  if st.score == "dot":
    dq = gk
  else:
    dq = 2.0 * (row[:, None] * qb.astype(jnp.float32) - gk)
  dq_ref[...] = dq.astype(dq_ref.dtype)
  for ref, x in zip(outs[1:], sums):
    ref[...] = x
