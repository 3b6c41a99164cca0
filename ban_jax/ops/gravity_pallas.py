"""Fused Pallas kernels for gravity attention, forward and backward (issue 4).

`gravity_attention_pallas(cfg, diff, aux)` is what `gravity.gravity_attention(...,
implementation="pallas")` calls with the canonical form of `gravity._prepare`. It covers every
score ("gravity", "inverse_square", "dot"), causal masking with whole masked blocks skipped,
GQA (key/value heads are read per group, never repeated in memory), `segment_ids`, `key_mass`,
`q_offset`, and the positional fields `power_law` and `alibi_slopes`, evaluated inside the kernel
from the positions and the per-head parameters. Gradients flow to q, k, v, the mass, the key
masses and the positional parameters through a `custom_vjp` whose backward recomputes the
scores blockwise (two kernels: dK/dV per key block, dQ per query block).
A materialised `bias` or `mask` is not fused: such calls run the XLA blockwise path.

Lowerings (`Options.backend`):
- "triton": Pallas on Triton (NVIDIA GPUs). The key loop runs inside the kernel; a program
  owns one (query block, batch, head) in the forward and dQ kernels, and one (key block,
  batch, key/value head) in the dK/dV kernel, which loops over the query heads of its group.
- "mosaic_tpu": Pallas on Mosaic TPU. The key (or query) loop is the last grid axis with
  VMEM scratch accumulators; causal blocks above the diagonal are skipped both in compute
  (`pl.when`) and in DMA (the index maps clamp to the last useful block).
On the CPU both run in Pallas interpret mode (slow; for tests).

Numerics (see the module docstring of `gravity`): squared norms are taken in float32 from the
operands as they enter the q·k product, q·k accumulates in float32 (explicit HIGHEST precision
for float32 inputs), d² is clamped at 0, the softmax keeps an online row max (logits are bounded
by M²/ε but M is learnable), and the backward combines the rank-1 term with G·K in float32 with
the row/column sums taken from the same rounded G that feeds the matrix product. Logits are
kept in base 2 (log2(e) is folded into the per-head scalars) so the exponentials are exp2.

Padding: lengths are padded to whole blocks and head dims to a power of two (≥ 16); padded keys
are masked, padded queries are sliced off (their cotangent is zero, so they add nothing to
the gradients).
"""

import functools
import math
from typing import NamedTuple, Optional

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp
import numpy as np

from ban_jax.errors import UserError
from ban_jax.ops import gravity

LOG2E = math.log2(math.e)
# A finite "minus infinity": masked logits never turn the running max into -inf, so
# exp2(m_old - m_new) never sees inf - inf.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_PARAMS = ("m2", "pl_p", "pl_a", "alibi")      # per-head scalars, in the order of `hp`
_LANES = 16                                     # width of the replicated per-head rows (GPU)


class Options(NamedTuple):
  """Lowering and tiling of the kernels (static).

  Block sizes are powers of two; they are clamped to the (padded) lengths. Fields left None take
  the defaults of `default_options` for the backend, dtype and head_dim.
  """
  backend: str = "triton"          # "triton" | "mosaic_tpu"
  interpret: bool = False
  # The bf16 / head_dim 128 defaults are the tiles that compile without register spills for
  # sm_90 (bench/pallas_registers.py; the v1 tiles timed on the H100 spilled 1-4 KiB per
  # thread in the forward and dK/dV kernels).
  block_q: int = 128               # forward
  block_k: int = 64
  block_q_dkv: int = 32            # backward, dK/dV kernel
  block_k_dkv: int = 64
  block_q_dq: int = 64             # backward, dQ kernel
  block_k_dq: int = 32
  num_warps: int = 8               # Triton only
  num_stages: int = 3
  bwd_num_warps: int = 8
  bwd_num_stages: int = 2
  approx_recip: bool = True        # Triton: rcp.approx.ftz.f32 for 1/(d²+ε); TPU: exact


def default_options(backend: Optional[str] = None, dtype=jnp.bfloat16, head_dim: int = 128,
                    interpret: Optional[bool] = None) -> Options:
  """The options `gravity_attention_pallas` uses when none are given.

  Args:
    backend: "triton", "mosaic_tpu", or None for the one matching `jax.default_backend()`
      ("triton" on the CPU, in interpret mode).
    dtype: the input dtype (float32 tiles are twice the bytes: smaller blocks).
    head_dim: the head dimension.
    interpret: run in Pallas interpret mode; None means "on the CPU".

  Returns:
    Options.
  """
  platform = jax.default_backend()
  if backend is None:
    backend = "mosaic_tpu" if platform == "tpu" else "triton"
  if interpret is None:
    interpret = platform == "cpu"
  if backend == "mosaic_tpu":
    return Options(backend=backend, interpret=interpret, block_q=512, block_k=512,
                   block_q_dkv=512, block_k_dkv=512, block_q_dq=512, block_k_dq=512,
                   approx_recip=False)
  if jnp.dtype(dtype).itemsize >= 4:
    # float32 products run as IEEE FMA loops (no tensor cores) whatever the tiles: small ones.
    return Options(backend=backend, interpret=interpret, block_q=64, block_k=32,
                   block_q_dkv=32, block_k_dkv=64, block_q_dq=64, block_k_dq=32,
                   num_warps=4, num_stages=2, bwd_num_warps=4, bwd_num_stages=1,
                   approx_recip=not interpret)
  if head_dim > 128:
    # Spill-free for head_dim 256 on sm_90 (pallas_notes.md). No wgmma tiling of the backward
    # avoids spills there, so it runs 32x32 tiles on mma.sync.
    return Options(backend=backend, interpret=interpret, block_q=64, block_k=32,
                   block_q_dkv=32, block_k_dkv=32, block_q_dq=32, block_k_dq=32,
                   num_warps=8, num_stages=2, bwd_num_warps=8, bwd_num_stages=1,
                   approx_recip=not interpret)
  return Options(backend=backend, interpret=interpret, approx_recip=not interpret)


_OPTIONS_OVERRIDE = [None]


def set_default_options(options: Optional[Options]):
  """Sets the options used when `gravity_attention_pallas` gets none (None: back to defaults).

  For benchmarks and tests; returns the previous override.
  """
  prev = _OPTIONS_OVERRIDE[0]
  _OPTIONS_OVERRIDE[0] = options
  return prev


# ----------------------------------------------------------------------------------------------
# Entry point.


def gravity_attention_pallas(cfg, diff, aux, options: Optional[Options] = None):
  """Fused gravity attention on the canonical form of `gravity._prepare`.

  Args:
    cfg: `gravity.Config` (static). Its block sizes belong to the XLA path and are ignored.
    diff: dict of differentiable arrays (q [b, tq, h, d], k [b, tk, kvh, d],
      v [b, tk, kvh, dv], m2 / pl_p / pl_a / alibi [h] or None, key_term [b, tk] or None,
      bias None).
    aux: dict of integer arrays (q_pos, k_pos, q_seg, k_seg, q_off; mask None).
    options: `Options`; None takes `default_options` (or `set_default_options`).

  Returns:
    [batch, q_len, heads, v_dim] in q's dtype.
  """
  if diff["bias"] is not None or aux["mask"] is not None:
    # A materialised [b, h, tq, tk] field is not fused (it is O(T²) memory anyway).
    return gravity._blockwise(cfg, diff, aux)  # pylint: disable=protected-access
  q, k, v = diff["q"], diff["k"], diff["v"]
  batch, q_len, heads, head_dim = q.shape
  k_len, kv_heads, v_dim = k.shape[1], k.shape[2], v.shape[3]
  opt = options or _OPTIONS_OVERRIDE[0] or default_options(dtype=q.dtype, head_dim=head_dim)
  if opt.backend not in ("triton", "mosaic_tpu"):
    raise UserError(f"Options.backend={opt.backend!r} is unknown; use 'triton' or "
                    "'mosaic_tpu'.")
  if q.dtype == jnp.float64 and not opt.interpret:
    raise UserError("the Pallas kernels take bfloat16, float16 or float32 inputs; cast "
                    "float64 inputs down or use implementation='xla'.")

  # Block sizes: powers of two, at least 16 (the smallest matrix-unit tile), at most the length.
  def clamp(block, length):
    cap = max(16, pl.next_power_of_2(length))
    if opt.backend == "mosaic_tpu":
      cap = max(128, cap)
    return int(min(block, cap))
  bq_f, bq_dkv, bq_dq = (clamp(b, q_len) for b in (opt.block_q, opt.block_q_dkv, opt.block_q_dq))
  bk_f, bk_dkv, bk_dq = (clamp(b, k_len) for b in (opt.block_k, opt.block_k_dkv, opt.block_k_dq))
  tqp = _round_up(q_len, max(bq_f, bq_dkv, bq_dq))
  tkp = _round_up(k_len, max(bk_f, bk_dkv, bk_dq))
  dp = max(16, pl.next_power_of_2(head_dim)) if opt.backend == "triton" else head_dim
  dvp = max(16, pl.next_power_of_2(v_dim)) if opt.backend == "triton" else v_dim

  st = _Static(score=cfg.score, eps=float(cfg.eps), scale=float(cfg.scale),
               causal=bool(cfg.causal), q_len=q_len, k_len=k_len, group=heads // kv_heads,
               has_seg=aux["q_seg"] is not None, has_kt=diff["key_term"] is not None,
               has_pl=diff["pl_p"] is not None, has_alibi=diff["alibi"] is not None,
               approx=bool(opt.approx_recip), bq=bq_f, bk=bk_f, bq_dkv=bq_dkv, bk_dkv=bk_dkv,
               bq_dq=bq_dq, bk_dq=bk_dq, opt=opt)

  pad_q, pad_k = tqp - q_len, tkp - k_len

  pad = gravity.pad_axis

  qp = pad(pad(q, 1, pad_q), 3, dp - head_dim)
  kp = pad(pad(k, 1, pad_k), 3, dp - head_dim)
  vp = pad(pad(v, 1, pad_k), 3, dvp - v_dim)
  kt = pad(diff["key_term"], 1, pad_k, 1 if cfg.score == "gravity" else 0)
  m2 = diff["m2"]
  if m2 is None:                        # inverse_square: M cancels; a dummy, never used.
    m2 = jnp.ones((heads,), jnp.float32)

  # Integer side inputs. Causal visibility is j <= qlim[i] with qlim = i + q_off[b]; the dK/dV
  # kernel's first useful query of key j is kfirst[j] = j - q_off[b].
  q_off = aux["q_off"].astype(jnp.int32)
  qi = jnp.arange(tqp, dtype=jnp.int32)
  ki = jnp.arange(tkp, dtype=jnp.int32)
  side = dict(
      qlim=qi[None, :] + q_off[:, None],
      kfirst=ki[None, :] - q_off[:, None],
      q_seg=pad(aux["q_seg"], 1, pad_q), k_seg=pad(aux["k_seg"], 1, pad_k),
      q_pos=None, k_pos=None)
  if st.has_pl or st.has_alibi:
    side["q_pos"] = pad(aux["q_pos"], 1, pad_q)
    side["k_pos"] = pad(aux["k_pos"], 1, pad_k)
  params = dict(q=qp, k=kp, v=vp, m2=m2, key_term=kt, pl_p=diff["pl_p"], pl_a=diff["pl_a"],
                alibi=diff["alibi"])
  out = _attention(st, params, side)
  return out[:, :q_len, :, :v_dim]


def _round_up(x, m):
  return -(-x // m) * m


class _Static(NamedTuple):
  """Static description of one kernel call."""
  score: str
  eps: float
  scale: float
  causal: bool
  q_len: int
  k_len: int
  group: int
  has_seg: bool
  has_kt: bool
  has_pl: bool
  has_alibi: bool
  approx: bool
  bq: int
  bk: int
  bq_dkv: int
  bk_dkv: int
  bq_dq: int
  bk_dq: int
  opt: Options


# ----------------------------------------------------------------------------------------------
# custom_vjp around the kernels.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(st, params, side):
  return _forward(st, params, side)[0]


def _norms(params):
  """float32 squared norms of the operands as they enter q·k: [b, h, tq], [b, kvh, tk]."""
  qn = jnp.sum(jnp.square(params["q"].astype(jnp.float32)), axis=-1).transpose(0, 2, 1)
  kn = jnp.sum(jnp.square(params["k"].astype(jnp.float32)), axis=-1).transpose(0, 2, 1)
  return qn, kn


def _head_params(st, params):
  """float32 [h, 4]: M², p, a, alibi slope (zeros where absent)."""
  heads = params["q"].shape[2]
  cols = [params[n] if params[n] is not None else jnp.zeros((heads,), jnp.float32)
          for n in _PARAMS]
  return jnp.stack([c.astype(jnp.float32) for c in cols], axis=1)


def _forward(st, params, side):
  qn, kn = _norms(params)
  hp = _head_params(st, params)
  if st.opt.backend == "triton":
    out, lse = _triton_forward(st, params, side, qn, kn, hp)
  else:
    from ban_jax.ops import _pallas_tpu  # pylint: disable=g-import-not-at-top
    out, lse = _pallas_tpu.tpu_forward(st, params, side, hp)
  return out, lse


def _attention_fwd(st, params, side):
  out, lse = _forward(st, params, side)
  return out, (params, side, out, lse)


def _attention_bwd(st, res, d_out):
  params, side, out, lse = res
  d_out = d_out.astype(params["q"].dtype)
  # delta_i = rowsum(dO ∘ O), from the output as returned: [b, h, tq] float32.
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  delta = delta.transpose(0, 2, 1)
  qn, kn = _norms(params)
  hp = _head_params(st, params)
  if st.opt.backend == "triton":
    dq, dk, dv, dkt, dpar = _triton_backward(st, params, side, qn, kn, hp, lse, delta, d_out)
  else:
    from ban_jax.ops import _pallas_tpu  # pylint: disable=g-import-not-at-top
    dq, dk, dv, dkt, dpar = _pallas_tpu.tpu_backward(st, params, side, hp, lse, delta, d_out)
  grads = dict(q=dq.astype(params["q"].dtype), k=dk.astype(params["k"].dtype),
               v=dv.astype(params["v"].dtype))
  grads["key_term"] = (None if params["key_term"] is None
                       else dkt.astype(params["key_term"].dtype))
  for i, name in enumerate(_PARAMS):
    if params[name] is None:
      grads[name] = None
    elif name == "m2" and st.score == "inverse_square":
      grads[name] = jnp.zeros_like(params[name])        # the dummy M² of inverse_square
    else:
      grads[name] = dpar[i].astype(params[name].dtype)
  return grads, None


_attention.defvjp(_attention_fwd, _attention_bwd)


# ----------------------------------------------------------------------------------------------
# Element-wise maths shared by both lowerings. Shapes: s, dist [bq, bk]; qn [bq, 1];
# kn, kt [1, bk]; per-head parameters are scalars (or broadcastable). Only broadcasting is
# used, so the transposed orientation ([bk, bq] tiles with qn [1, bq], kn [bk, 1]) works too.


def _plgpu():
  """Pallas's Triton backend: deprecated in JAX 0.11, to be removed in a later JAX."""
  try:
    from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(
        f"JAX {jax.__version__} has no Pallas Triton backend, which the GPU gravity kernel "
        "needs (JAX deprecated it in 0.11). Use implementation='xla', or a JAX that still "
        "ships jax.experimental.pallas.triton.") from e
  return plgpu


def _recip(x, st):
  if st.approx and st.opt.backend == "triton" and not st.opt.interpret:
    plgpu = _plgpu()
    return plgpu.elementwise_inline_asm(
        "rcp.approx.ftz.f32 $0, $1;", args=[x], constraints="=f,f", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, x.dtype)])[0]
  return 1.0 / x


def _logits(st, s, qn, kn, kt, dist, par):
  """Base-2 logits z·log2(e) [bq, bk] and the intermediates the backward reuses."""
  parts = {}
  if st.score == "dot":
    z = s * (par["m2"] * (st.scale * LOG2E))
    if kt is not None:
      z = z + kt * LOG2E
  else:
    d2_raw = qn + kn - 2.0 * s
    d2 = jnp.maximum(d2_raw, 0.0)
    parts["d2_raw"] = d2_raw
    if st.score == "gravity":
      r = _recip(d2 + st.eps, st)
      pot = r if kt is None else r * kt
      z = pot * (par["m2"] * LOG2E)
      parts.update(r=r, pot=pot)
    else:
      parts["d2"] = d2
      z = jnp.log(d2 + st.eps) * (-LOG2E)
      if kt is not None:
        z = z + kt * LOG2E
  if dist is not None:
    if st.has_pl:
      z = z - (par["pl_p"] * LOG2E) * jnp.log1p(par["pl_a"] * dist)
    if st.has_alibi:
      z = z - (par["alibi"] * LOG2E) * dist
  return z, parts


def _grad_terms(st, dz, s, parts, kt, dist, par, want):
  """Element-wise gradient terms [bq, bk] from dz = ∂L/∂z (natural-log logits).

  Returns a dict with "g" (∂L/∂d², zero where d² was clamped; gravity and inverse_square) or
  "ds" (∂L/∂(q·k); dot), and the summands of the small gradients named in `want` ("m2", "kt",
  "pl_p", "pl_a", "alibi").
  """
  out = {}
  m2 = par["m2"]
  if st.score == "dot":
    out["ds"] = dz * (m2 * st.scale)
    if "m2" in want:
      out["m2"] = dz * s * st.scale
    if "kt" in want:
      out["kt"] = dz
  else:
    if st.score == "gravity":
      r, pot = parts["r"], parts["pot"]
      g = dz * pot * r * (-m2)              # z = M² m_j r, ∂z/∂d² = -M² m_j r²
      if "m2" in want:
        out["m2"] = dz * pot
      if "kt" in want:
        out["kt"] = dz * r * m2
    else:
      r = _recip(parts["d2"] + st.eps, st)
      g = -dz * r
      if "kt" in want:
        out["kt"] = dz
    out["g"] = jnp.where(parts["d2_raw"] > 0.0, g, 0.0)
  if dist is not None:
    if st.has_pl:
      a_dist = par["pl_a"] * dist
      if "pl_p" in want:
        out["pl_p"] = -dz * jnp.log1p(a_dist)
      if "pl_a" in want:
        out["pl_a"] = -dz * (par["pl_p"] * dist) / (1.0 + a_dist)
    if st.has_alibi and "alibi" in want:
      out["alibi"] = -dz * dist
  return out


def _visible(st, k_idx, qlim, qseg, kseg, k_padded):
  """bool [bq, bk] visibility, or None when everything is visible.

  k_idx [1, bk] key indices; qlim [bq, 1] last visible key of each query (causal);
  qseg [bq, 1], kseg [1, bk] segment ids or None; k_padded: whether keys >= k_len exist.
  With k_idx, kseg [bk, 1] and qlim, qseg [1, bq] it returns the transpose.
  """
  vis = None

  def conj(a, b):
    return b if a is None else jnp.logical_and(a, b)
  if st.causal:
    vis = conj(vis, k_idx <= qlim)
  if k_padded:
    vis = conj(vis, k_idx < st.k_len)
  if st.has_seg:
    vis = conj(vis, jnp.logical_and(qseg == kseg, kseg != 0))
  return vis


def _dist(qpos, kpos):
  """|pos_i - pos_j| in float32 from [bq, 1] and [1, bk] positions."""
  return jnp.abs(qpos.astype(jnp.float32) - kpos.astype(jnp.float32))


def _precision(dtype):
  return lax.Precision.HIGHEST if jnp.dtype(dtype).itemsize >= 4 else None


def _dot(a, b, *, trans_a=False, trans_b=False):
  """a @ b with float32 accumulation (full precision for float32 operands)."""
  dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, precision=_precision(a.dtype),
                         preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------------------------
# Triton (GPU) lowering.


def _triton_params(opt, backward):
  plgpu = _plgpu()
  if backward:
    return plgpu.CompilerParams(num_warps=opt.bwd_num_warps, num_stages=opt.bwd_num_stages)
  return plgpu.CompilerParams(num_warps=opt.num_warps, num_stages=opt.num_stages)


def _hp_rows(hp):
  """[h, 4] -> [h, 4, 16]: each scalar replicated along a power-of-two row for Triton."""
  return jnp.broadcast_to(hp[:, :, None], hp.shape + (_LANES,))


def _load_par_triton(hp_ref, head=None):
  """Per-head scalars from a [4, 16] (or [group, 4, 16] with `head`) replicated block."""
  par = {}
  for i, name in enumerate(_PARAMS):
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


def _triton_forward(st, params, side, qn, kn, hp):
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
    s = _dot(q, kb, trans_b=True)
    kt = r["kt"][pl.ds(ks, bk)][None, :] if st.has_kt else None
    dist = _dist(qpos, r["k_pos"][pl.ds(ks, bk)][None, :]) if qpos is not None else None
    z, _ = _logits(st, s, qn, r["kn"][pl.ds(ks, bk)][None, :], kt, dist, par)
    vis = None
    if masked:
      k_idx = ks + jnp.arange(bk, dtype=jnp.int32)[None, :]
      kseg = r["k_seg"][pl.ds(ks, bk)][None, :] if st.has_seg else None
      vis = _visible(st, k_idx, qlim[:, None], qseg, kseg, k_padded)
    if vis is not None:
      z = jnp.where(vis, z, MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(z, axis=1))
    p = jnp.exp2(z - m_new[:, None])
    if vis is not None:
      p = jnp.where(vis, p, 0.0)
    alpha = jnp.exp2(m - m_new)
    l = alpha * l + jnp.sum(p, axis=1)
    vb = r["v"][pl.ds(ks, bk), :]
    o = alpha[:, None] * o + _dot(p.astype(vb.dtype), vb)
    return o, m_new, l

  n_full, n_end = _k_loop_bounds(st, bk, qlim, nk_valid)
  carry = (jnp.zeros((bq, o_ref.shape[-1]), jnp.float32),
           jnp.full((bq,), MASK_VALUE, jnp.float32), jnp.zeros((bq,), jnp.float32))
  carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
  o, m, l = lax.fori_loop(n_full, n_end, functools.partial(step, masked=True), carry)
  seen = l > 0.0
  l_safe = jnp.where(seen, l, 1.0)
  o_ref[...] = (o / l_safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log2(l_safe), 0.0)


def _triton_backward(st, params, side, qn, kn, hp, lse, delta, d_out):
  q, k, v = params["q"], params["k"], params["v"]
  batch, tqp, heads, dp = q.shape
  tkp, kv_heads, dvp = k.shape[1], k.shape[2], v.shape[3]
  group = st.group
  hp_rows = _hp_rows(hp)

  # dK, dV (and the key-mass gradient) per key block; loops over the group's query heads.
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
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  out_specs = [pl.BlockSpec((None, bk, None, dp), lambda j, b, c: (b, j, c, 0)),
               pl.BlockSpec((None, bk, None, dvp), lambda j, b, c: (b, j, c, 0))]
  if st.has_kt:
    out_shape.append(jax.ShapeDtypeStruct((batch, kv_heads, tkp), jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, bk), lambda j, b, c: (b, c, j)))
  kernel = functools.partial(_triton_dkdv_kernel, st=st, names=tuple(names),
                             nq_valid=-(-st.q_len // bq))
  res = pl.pallas_call(
      kernel, grid=(nk, batch, kv_heads), in_specs=specs, out_specs=out_specs,
      out_shape=out_shape, compiler_params=_triton_params(st.opt, True),
      interpret=st.opt.interpret, name="gravity_bwd_dkdv")(*arrays)
  dk, dv = res[0], res[1]
  dkt = jnp.sum(res[2], axis=1) if st.has_kt else None

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
  want = _small_grads(st)
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
  dpar = _collect_params(st, want, [jnp.sum(x, axis=(0, 2)) for x in res[1:]], heads)
  return dq, dk, dv, dkt, dpar


def _small_grads(st):
  """Names of the per-head parameters whose gradients the dQ kernel accumulates."""
  want = []
  if st.score != "inverse_square":
    want.append("m2")
  if st.has_pl:
    want += ["pl_p", "pl_a"]
  if st.has_alibi:
    want.append("alibi")
  return tuple(want)


def _collect_params(st, want, sums, heads):
  del st
  got = dict(zip(want, sums))
  return [got.get(name, jnp.zeros((heads,), jnp.float32)) for name in _PARAMS]


def _triton_dkdv_kernel(*refs, st, names, nq_valid):
  r = dict(zip(names, refs))
  outs = refs[len(names):]
  dk_ref, dv_ref = outs[0], outs[1]
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
  want = ("kt",) if st.has_kt else ()

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
    dk_acc, col, dv, dkt = carry
    qs = pl.multiple_of(i * bq, bq)
    qb = r["q"][pl.ds(qs, bq), head, :]
    dob = r["do"][pl.ds(qs, bq), head, :]
    qn = r["qn"][head, pl.ds(qs, bq)][None, :]
    lse = r["lse"][head, pl.ds(qs, bq)][None, :]
    delta = r["delta"][head, pl.ds(qs, bq)][None, :]
    s = _dot(kb, qb, trans_b=True)                       # [bk, bq]
    dist = _dist(kpos, r["q_pos"][pl.ds(qs, bq)][None, :]) if kpos is not None else None
    z, parts = _logits(st, s, qn, kn, kt, dist, par)
    p = jnp.exp2(z - lse)
    if masked:
      qlim = r["qlim"][pl.ds(qs, bq)][None, :]
      qseg = r["q_seg"][pl.ds(qs, bq)][None, :] if st.has_seg else None
      vis = _visible(st, k_idx, qlim, qseg, kseg, st.k_len % bk != 0)
      if vis is not None:
        p = jnp.where(vis, p, 0.0)
    dv = dv + _dot(p.astype(dob.dtype), dob)
    dp = _dot(vb, dob, trans_b=True)
    dz = p * (dp - delta)
    terms = _grad_terms(st, dz, s, parts, kt, dist, par, want)
    if st.score == "dot":
      dk_acc = dk_acc + _dot(terms["ds"].astype(qb.dtype), qb)
    else:
      g = terms["g"].astype(qb.dtype)
      col = col + jnp.sum(g.astype(jnp.float32), axis=1)
      dk_acc = dk_acc + _dot(g, qb)
    if st.has_kt:
      dkt = dkt + jnp.sum(terms["kt"], axis=1)
    return dk_acc, col, dv, dkt

  def head_step(head, carry):
    par = _load_par_triton(r["hp"], head)
    carry = lax.fori_loop(i_start, i_full,
                          functools.partial(q_step, head=head, par=par, masked=True), carry)
    return lax.fori_loop(i_full, nq_valid,
                         functools.partial(q_step, head=head, par=par, masked=False), carry)

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
    outs[2][...] = dkt


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
    s = _dot(qb, kb, trans_b=True)
    kt = r["kt"][pl.ds(ks, bk)][None, :] if st.has_kt else None
    dist = _dist(qpos, r["k_pos"][pl.ds(ks, bk)][None, :]) if qpos is not None else None
    z, parts = _logits(st, s, qn, r["kn"][pl.ds(ks, bk)][None, :], kt, dist, par)
    p = jnp.exp2(z - lse)
    if masked:
      k_idx = ks + jnp.arange(bk, dtype=jnp.int32)[None, :]
      kseg = r["k_seg"][pl.ds(ks, bk)][None, :] if st.has_seg else None
      vis = _visible(st, k_idx, qlim[:, None], qseg, kseg, k_padded)
      if vis is not None:
        p = jnp.where(vis, p, 0.0)
    dp = _dot(dob, vb, trans_b=True)
    dz = p * (dp - delta)
    terms = _grad_terms(st, dz, s, parts, kt, dist, par, want)
    if st.score == "dot":
      gk = gk + _dot(terms["ds"].astype(kb.dtype), kb)
    else:
      g = terms["g"].astype(kb.dtype)
      row = row + jnp.sum(g.astype(jnp.float32), axis=1)
      gk = gk + _dot(g, kb)
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
