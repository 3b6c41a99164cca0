"""What the Triton and the Mosaic TPU lowerings of the fused gravity kernels share.

`Options` and `default_options` (tiling and lowering), `Static` (the static description of one
kernel call) and the element-wise maths of a score tile, forward and backward.

Numerics (the same as the XLA paths): squared norms are taken in float32 from the operands as
they enter the q·k product, q·k accumulates in float32 (explicit HIGHEST precision for float32
inputs), d² is clamped at 0, the softmax keeps an online row max (logits are bounded by M²/ε
but M is learnable), and the backward combines the rank-1 term with G·K in float32 with the
row/column sums taken from the same rounded G that feeds the matrix product. Logits are kept in
base 2 (log2(e) is folded into the per-head scalars) so the exponentials are exp2.

Tile shapes of the element-wise functions: s, dist [bq, bk]; qn [bq, 1]; kn, kt [1, bk];
per-head parameters are scalars (or broadcastable). Only broadcasting is used, so the transposed
orientation ([bk, bq] tiles with qn [1, bq], kn [bk, 1]) works too.
"""

import math
from typing import NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ban_jax.ops.gravity import platform as target_platform

LOG2E = math.log2(math.e)
# A finite "minus infinity": masked logits never turn the running max into -inf, so
# exp2(m_old - m_new) never sees inf - inf.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
PARAMS = ("m2", "pl_p", "pl_a", "alibi")       # per-head scalars, in the order of `hp`


class Options(NamedTuple):
  """Lowering and tiling of the kernels (static).

  Block sizes are powers of two; they are clamped to the (padded) lengths. Fields left None take
  the defaults of `default_options` for the backend, dtype and head_dim.
  """
  backend: str = "triton"          # "triton" | "mosaic_tpu"
  interpret: bool = False
  # The bf16 / head_dim <= 128 defaults are the fastest tiles timed on an H200 (23 backward
  # and 11 forward variants, bench/results/attention_gpu_h200.json, pallas_notes.md). The
  # backward's spill (static count, pallas_registers.json) yet run 2x faster than the
  # spill-free 32x64 / 64x32 tiles chosen before any GPU timing.
  block_q: int = 128               # forward
  block_k: int = 64
  block_q_dkv: int = 32            # backward, dK/dV kernel (and the fused backward)
  block_k_dkv: int = 128
  block_q_dq: int = 128            # backward, dQ kernel
  block_k_dq: int = 64
  num_warps: int = 8               # Triton only
  num_stages: int = 3
  bwd_num_warps: int = 8
  bwd_num_stages: int = 2
  approx_recip: bool = True        # Triton: rcp.approx.ftz.f32 for 1/(d²+ε); TPU: exact
  # Triton: one backward kernel (per key block, tiles block_q_dkv x block_k_dkv) that adds
  # each query block's dQ into a float32 buffer with atomics, instead of a second kernel that
  # recomputes the probabilities per query block. Summation order varies run to run. Off: on
  # an H200 its best tiles ran fwd+bwd at 4k in 17.7 ms against the two kernels' 9.7 ms (the
  # dQ atomics cost more than the recompute they save; pallas_notes.md).
  fused_backward: bool = False


def default_options(backend: Optional[str] = None, dtype=jnp.bfloat16, head_dim: int = 128,
                    interpret: Optional[bool] = None) -> Options:
  """The options `gravity_attention_pallas` uses when none are given.

  Args:
    backend: "triton", "mosaic_tpu", or None for the one matching the platform traced for
      (`platform.current()`: the default backend, or the target of an ahead-of-time compile)
      ("triton" on the CPU, in interpret mode).
    dtype: the input dtype (float32 tiles are twice the bytes: smaller blocks).
    head_dim: the head dimension.
    interpret: run in Pallas interpret mode; None means "on the CPU".

  Returns:
    Options.
  """
  platform = target_platform.current()
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


def round_up(x, m):
  """The smallest multiple of m that is >= x."""
  return -(-x // m) * m


class Static(NamedTuple):
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


def plgpu():
  """Pallas's Triton backend: deprecated in JAX 0.11, to be removed in a later JAX."""
  try:
    from jax.experimental.pallas import triton as pl_triton  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"JAX {jax.__version__} has no Pallas Triton backend, which the GPU gravity kernel "
        "needs (JAX deprecated it in 0.11). Use implementation='xla', or a JAX that still "
        "ships jax.experimental.pallas.triton.") from e
  return pl_triton


def recip(x, st):
  """1 / x, as rcp.approx on the GPU when `st.approx` asks for it."""
  if st.approx and st.opt.backend == "triton" and not st.opt.interpret:
    return plgpu().elementwise_inline_asm(
        "rcp.approx.ftz.f32 $0, $1;", args=[x], constraints="=f,f", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, x.dtype)])[0]
  return 1.0 / x


def logits(st, s, qn, kn, kt, dist, par):
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
      r = recip(d2 + st.eps, st)
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


def grad_terms(st, dz, s, parts, kt, dist, par, want):
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
      r = recip(parts["d2"] + st.eps, st)
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


def visible(st, k_idx, qlim, qseg, kseg, k_padded):
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


def distance(qpos, kpos):
  """|pos_i - pos_j| in float32 from [bq, 1] and [1, bk] positions."""
  return jnp.abs(qpos.astype(jnp.float32) - kpos.astype(jnp.float32))


def _precision(dtype):
  # float32 inputs: no TF32 (GPU) or bf16 passes (TPU); narrower ones take the default.
  return lax.Precision.HIGHEST if jnp.dtype(dtype).itemsize >= 4 else None


def dot(a, b, *, trans_a=False, trans_b=False):
  """a @ b with float32 accumulation (full precision for float32 operands)."""
  dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, precision=_precision(a.dtype),
                         preferred_element_type=jnp.float32)


def small_grads(st):
  """Names of the per-head parameters whose gradients the dQ kernel accumulates."""
  want = []
  if st.score != "inverse_square":
    want.append("m2")
  if st.has_pl:
    want += ["pl_p", "pl_a"]
  if st.has_alibi:
    want.append("alibi")
  return tuple(want)


def collect_params(want, sums, heads):
  """The gradients of the PARAMS, in that order, from the `sums` [heads] of those in `want`."""
  got = dict(zip(want, sums))
  return [got.get(name, jnp.zeros((heads,), jnp.float32)) for name in PARAMS]


class Specs:
  """Collects (name, array, BlockSpec) triples, skipping absent (None) arrays."""

  def __init__(self):
    self.names, self.arrays, self.specs = [], [], []

  def add(self, name, x, spec):
    """Appends `x` and its `spec` under `name`, unless `x` is None."""
    if x is not None:
      self.names.append(name)
      self.arrays.append(x)
      self.specs.append(spec)

