"""Fused Pallas kernels for gravity attention, forward and backward.

`gravity_attention_pallas(cfg, diff, aux)` is what `gravity_attention(...,
implementation="pallas")` calls with the canonical form of `canonical.prepare`. It covers every
score ("gravity", "inverse_square", "dot"), causal masking with whole masked blocks skipped,
GQA (key/value heads are read per group, never repeated in memory), `segment_ids`, `key_mass`,
`q_offset`, and the positional fields `power_law` and `alibi_slopes`, evaluated inside the kernel
from the positions and the per-head parameters. Gradients flow to q, k, v, the mass, the key
masses and the positional parameters through a `custom_vjp` whose backward recomputes the
scores blockwise (two kernels: dK/dV per key block, dQ per query block). A materialised `bias`
or `mask` is not fused: `gravity_attention` sends such calls to the XLA blockwise path.

Lowerings (`Options.backend`, by default the one of the platform):
- "triton" (`triton.py`): Pallas on Triton (NVIDIA GPUs). The key loop runs inside the kernel.
- "mosaic_tpu" (`mosaic.py`): Pallas on Mosaic TPU. The key (or query) loop is the last grid
  axis, with VMEM scratch accumulators. Its calls go through `sharding.py`, which XLA's
  partitioner asks how to split them on a mesh of several devices: one kernel call per batch
  shard, per-head parameters replicated, their gradients summed across shards. Compiled for
  TPU topologies by libtpu (tests), never run on a TPU.
On the CPU both run in Pallas interpret mode (slow; for tests).

Padding: lengths are padded to whole blocks and head dims to a power of two (≥ 16) for Triton;
padded keys are masked, padded queries are sliced off (their cotangent is zero, so they add
nothing to the gradients).
"""

import functools
from typing import Optional

import jax
from jax.experimental import pallas as pl
import jax.numpy as jnp

from ban_jax.ops.gravity.canonical import Config
from ban_jax.ops.gravity.canonical import differentiated
from ban_jax.ops.gravity.canonical import pad_axis
from ban_jax.ops.gravity.pallas_common import default_options
from ban_jax.ops.gravity.pallas_common import Options
import ban_jax.ops.gravity.pallas_common as pc
import ban_jax.ops.gravity.sharding as tpu_sharding
import ban_jax.ops.gravity.triton as triton

__all__ = ["Options", "default_options", "gravity_attention_pallas"]

def gravity_attention_pallas(cfg: Config, diff, aux, options: Optional[Options] = None):
  """Fused gravity attention on the canonical form of `canonical.prepare`.

  Args:
    cfg: `canonical.Config` (static). Its block sizes belong to the XLA path and are ignored.
    diff: dict of differentiable arrays (q [b, tq, h, d], k [b, tk, kvh, d],
      v [b, tk, kvh, dv], m2 / pl_p / pl_a / alibi [h] or None, key_term [b, tk] or None,
      bias None).
    aux: dict of integer arrays (q_pos, k_pos, q_seg, k_seg, q_off; mask None).
    options: `Options` (lowering and tiles); None takes `default_options` for the platform,
      dtype and head_dim.

  Returns:
    [batch, q_len, heads, v_dim] in q's dtype.
  """
  if diff["bias"] is not None or aux["mask"] is not None:
    # A materialised [b, h, tq, tk] field is O(T²) memory anyway: not worth a fused variant.
    raise ValueError("the Pallas kernels do not take a materialised bias or mask; use "
                     "implementation='xla' (gravity_attention does so itself).")
  q, k, v = diff["q"], diff["k"], diff["v"]
  batch, q_len, heads, head_dim = q.shape
  k_len, kv_heads, v_dim = k.shape[1], k.shape[2], v.shape[3]
  opt = options or default_options(dtype=q.dtype, head_dim=head_dim)
  if opt.backend not in ("triton", "mosaic_tpu"):
    raise ValueError(f"Options.backend={opt.backend!r} is unknown; use 'triton' or "
                     "'mosaic_tpu'.")
  if q.dtype == jnp.float64 and not opt.interpret:
    raise TypeError("the Pallas kernels take bfloat16, float16 or float32 inputs; cast "
                    "float64 inputs down or use implementation='xla'.")

  # Block sizes: powers of two, at least 16 (the smallest matrix-unit tile), at most the length.
  def clamp(block, length):
    cap = max(16, pl.next_power_of_2(length))
    if opt.backend == "mosaic_tpu":
      cap = max(128, cap)
    return int(min(block, cap))
  bq_f, bq_dkv, bq_dq = (clamp(b, q_len) for b in (opt.block_q, opt.block_q_dkv, opt.block_q_dq))
  bk_f, bk_dkv, bk_dq = (clamp(b, k_len) for b in (opt.block_k, opt.block_k_dkv, opt.block_k_dq))
  tqp = pc.round_up(q_len, max(bq_f, bq_dkv, bq_dq))
  tkp = pc.round_up(k_len, max(bk_f, bk_dkv, bk_dq))
  dp = max(16, pl.next_power_of_2(head_dim)) if opt.backend == "triton" else head_dim
  dvp = max(16, pl.next_power_of_2(v_dim)) if opt.backend == "triton" else v_dim

  st = pc.Static(score=cfg.score, eps=float(cfg.eps), scale=float(cfg.scale),
               causal=bool(cfg.causal), q_len=q_len, k_len=k_len, group=heads // kv_heads,
               has_seg=aux["q_seg"] is not None, has_kt=diff["key_term"] is not None,
               has_pl=diff["pl_p"] is not None, has_alibi=diff["alibi"] is not None,
               approx=bool(opt.approx_recip), bq=bq_f, bk=bk_f, bq_dkv=bq_dkv, bk_dkv=bk_dkv,
               bq_dq=bq_dq, bk_dq=bk_dq, opt=opt)

  pad_q, pad_k = tqp - q_len, tkp - k_len

  pad = pad_axis

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
          for n in pc.PARAMS]
  return jnp.stack([c.astype(jnp.float32) for c in cols], axis=1)


def _forward(st, params, side):
  qn, kn = _norms(params)
  hp = _head_params(st, params)
  if st.opt.backend == "triton":
    out, lse = triton.forward(st, params, side, qn, kn, hp)
  else:
    out, lse = tpu_sharding.forward(st, params, side, hp)
  return out, lse


_SECOND_ORDER = ("gravity_attention(implementation='pallas') supports first derivatives only "
                 "(grad, vjp): its kernels are not differentiable themselves. For grad of grad "
                 "or jvp of grad use implementation='xla' (same blockwise memory) or "
                 "'reference'.")


def _attention_fwd(st, params, side):
  if differentiated(params, side):
    raise NotImplementedError(_SECOND_ORDER)
  out, lse = _forward(st, params, side)
  return out, (params, side, out, lse)


def _attention_bwd(st, res, d_out):
  params, side, out, lse = res
  if differentiated(res, d_out):
    raise NotImplementedError(_SECOND_ORDER)
  d_out = d_out.astype(params["q"].dtype)
  # delta_i = rowsum(dO ∘ O), from the output as returned: [b, h, tq] float32.
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  delta = delta.transpose(0, 2, 1)
  qn, kn = _norms(params)
  hp = _head_params(st, params)
  if st.opt.backend == "triton":
    dq, dk, dv, dkt, dpar = triton.backward(st, params, side, qn, kn, hp, lse, delta, d_out)
  else:
    dq, dk, dv, dkt, dpar = tpu_sharding.backward(st, params, side, hp, lse, delta,
                                                  d_out)
  grads = dict(q=dq.astype(params["q"].dtype), k=dk.astype(params["k"].dtype),
               v=dv.astype(params["v"].dtype))
  grads["key_term"] = (None if params["key_term"] is None
                       else dkt.astype(params["key_term"].dtype))
  for i, name in enumerate(pc.PARAMS):
    if params[name] is None:
      grads[name] = None
    elif name == "m2" and st.score == "inverse_square":
      grads[name] = jnp.zeros_like(params[name])        # the dummy M² of inverse_square
    else:
      grads[name] = dpar[i].astype(params[name].dtype)
  return grads, None


_attention.defvjp(_attention_fwd, _attention_bwd)
