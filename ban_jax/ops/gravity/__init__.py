"""Gravity attention (the score of "Gravity-2") and its relatives, as pure functions.

Scores, for query i and key j of head h (M_h the per-head mass, m_j the per-key mass from
context tagging, b_h(i, j) the additive positional field, d²_ij = ‖q_i − k_j‖²):

| score            | logit z_ij                              | weights softmax_j(z)              |
|------------------|-----------------------------------------|-----------------------------------|
| "gravity"        | M_h² m_j / (d²_ij + ε) + b              | Gravity-2 exactly (m = 1, b = 0)  |
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

Implementations (`implementation=`), one module each:
- "reference" (`xla.reference`): materialises the [batch, heads, q_len, k_len] scores; autodiff
  for gradients. Run it under `jax.enable_x64(True)` on float64 inputs as the oracle of the tests.
- "xla" (`xla.blockwise`): blockwise over query and key blocks with an online softmax
  (`lax.map` / `fori_loop`), whole causal blocks above the diagonal skipped, and a `custom_vjp`
  whose backward recomputes each block, so memory is O(length × block), not O(length²). Works on
  every backend.
- "pallas" (`pallas.gravity_attention_pallas`): the fused GPU (Triton) / TPU (Mosaic) kernels;
  tiles and lowering from `pallas_options` (`pallas.Options`). Calls with a materialised `bias`
  or `mask` run "xla" instead.
- "auto": "pallas" on an NVIDIA GPU for 16-bit inputs with head_dim <= 128 and no
  materialised bias or mask (measured faster than "xla" there, forward and backward); on a TPU
  wherever the Mosaic kernel takes the call (compiled there, never run); "xla" everywhere
  else, decoding included (see `_auto_implementation`).

Module layout (imports run one way): this package → {canonical, xla, pallas}; xla → canonical
(argument validation and the canonical form); pallas → {canonical, triton, mosaic}; triton and
mosaic → pallas_common (what the two kernel families share). The backends never import each
other.

Positional fields are passed as parameters (`power_law`, `alibi_slopes`) and evaluated per
block from `positions`; a materialised `bias` (and `mask`) is accepted as the generic fallback,
at O(q_len × k_len) memory.

Derivatives (docs/derivatives.md, tested cell by cell): "xla" and "pallas" have their own
backward pass (custom_vjp): grad and vjp work, and so does jvp of grad (forward-over-reverse);
pure forward mode (jvp, jacfwd) does not, and raises a TypeError naming the ways out. Second
reverse derivatives (grad of grad) work on "xla" with causal=True or a mask (a differentiated
kernel runs its causal loops at full length, skipping blocks with lax.cond); "pallas" supports
first derivatives only and says so; "reference" supports every mode. `eps`, `causal`, `score` and the
block sizes are static (Python values).
"""

import contextlib

import jax
import jax.numpy as jnp

from ban_jax.ops.gravity import canonical
from ban_jax.ops.gravity import platform
from ban_jax.ops.gravity import xla
from ban_jax.ops.gravity.canonical import Config
from ban_jax.ops.gravity.canonical import DEFAULT_BLOCK_K
from ban_jax.ops.gravity.canonical import DEFAULT_BLOCK_Q
from ban_jax.ops.gravity.canonical import IMPLEMENTATIONS
from ban_jax.ops.gravity.canonical import SCORES
from ban_jax.ops.gravity.canonical import softplus_inverse

__all__ = ["Config", "DEFAULT_BLOCK_K", "DEFAULT_BLOCK_Q", "IMPLEMENTATIONS", "SCORES",
           "gravity_attention", "gravity_attention_decode", "gravity_attention_weights",
           "softplus_inverse"]


def gravity_attention(query, key, value, mass=None, *, eps: float = 0.1, causal: bool = True,
                      segment_ids=None, positions=None, key_mass=None, bias=None, mask=None,
                      power_law=None, alibi_slopes=None, q_offset=None, score: str = "gravity",
                      implementation: str = "auto", block_q: int = DEFAULT_BLOCK_Q,
                      block_k: int = DEFAULT_BLOCK_K, pallas_options=None):
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
    pallas_options: `ban_jax.ops.gravity.pallas.Options` (lowering and tiles) of the "pallas"
      implementation; None takes its defaults for the platform, dtype and head_dim.

  Returns:
    [batch, q_len, heads, v_dim] in the promoted dtype of query, key and value.
  """
  cfg, diff, aux = canonical.prepare(
      query, key, value, mass, eps=eps, causal=causal, segment_ids=segment_ids,
      positions=positions, key_mass=key_mass, bias=bias, mask=mask, power_law=power_law,
      alibi_slopes=alibi_slopes, q_offset=q_offset, score=score, block_q=block_q,
      block_k=block_k)
  impl = _auto_implementation(cfg, diff, aux) if implementation == "auto" else implementation
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} is unknown; use one of "
                     f"{IMPLEMENTATIONS}.")
  if impl == "reference":
    return xla.reference(cfg, diff, aux)
  # A materialised [b, h, tq, tk] bias or mask is not fused (it is O(T²) memory anyway).
  if impl == "pallas" and diff["bias"] is None and aux["mask"] is None:
    # Imported here so that a JAX without Pallas still runs the other implementations.
    try:
      from ban_jax.ops.gravity import pallas  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"implementation='pallas' cannot import the Pallas kernels ({e}); use "
                        "implementation='xla'.") from e
    with _forward_mode_hint(impl):
      return pallas.gravity_attention_pallas(cfg, diff, aux, options=pallas_options)
  with _forward_mode_hint(impl):
    return xla.blockwise(cfg, diff, aux)


@contextlib.contextmanager
def _forward_mode_hint(impl: str):
  """JAX's error for jax.jvp of a custom_vjp names no way out; this one does."""
  try:
    yield
  except TypeError as e:
    if "forward-mode autodiff" not in str(e):
      raise
    raise TypeError(
        f"gravity_attention(implementation={impl!r}) has its own backward pass: it supports "
        "jax.grad / jax.vjp / jax.jacrev and jax.jvp of a jax.grad, but not pure forward mode "
        "(jax.jvp, jax.jacfwd, hessians by jacfwd(jacrev)); use jax.jacrev, or "
        "implementation='reference' (O(q_len x k_len) memory) for forward mode.") from None


def gravity_attention_decode(query, key_cache, value_cache, mass=None, *, index, eps=0.1,
                             segment_ids=None, positions=None, key_mass=None,
                             power_law=None, alibi_slopes=None, score="gravity",
                             implementation="auto", block_k=DEFAULT_BLOCK_K,
                             pallas_options=None):
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
    pallas_options: as in `gravity_attention`.

  Returns:
    [batch, new, heads, v_dim].
  """
  if implementation == "auto":
    # A few query rows against a long cache: the kernel has not been timed on that shape.
    implementation = "xla"
  if segment_ids is not None and not isinstance(segment_ids, (tuple, list)):
    raise TypeError("segment_ids for decoding must be a pair (query ids [batch, new], cache ids "
                    "[batch, max_len]).")
  if positions is not None and not isinstance(positions, (tuple, list)):
    raise TypeError("positions for decoding must be a pair (query positions [batch, new], "
                    "cache positions [batch, max_len]).")
  return gravity_attention(query, key_cache, value_cache, mass, eps=eps, causal=True,
                           segment_ids=segment_ids, positions=positions, key_mass=key_mass,
                           power_law=power_law, alibi_slopes=alibi_slopes, q_offset=index,
                           score=score, implementation=implementation,
                           block_q=query.shape[1], block_k=block_k,
                           pallas_options=pallas_options)


def gravity_attention_weights(query, key, value, mass=None, *, eps: float = 0.1,
                              causal: bool = True, segment_ids=None, positions=None,
                              key_mass=None, bias=None, mask=None, power_law=None,
                              alibi_slopes=None, q_offset=None, score: str = "gravity"):
  """`gravity_attention` that also returns its weights (materialised; for short query blocks).

  KV-cache policies score cached keys by the attention they receive; this is the exact
  reference computation with its softmax kept; `flax`-style attention dropout and
  `sow_weights` use it too. Arguments as in `gravity_attention`.

  Returns:
    (out [batch, q_len, heads, v_dim], weights float32 [batch, heads, q_len, k_len]; rows
    that see no key are all zero).
  """
  cfg, diff, aux = canonical.prepare(
      query, key, value, mass, eps=eps, causal=causal, segment_ids=segment_ids,
      positions=positions, key_mass=key_mass, bias=bias, mask=mask, power_law=power_law,
      alibi_slopes=alibi_slopes, q_offset=q_offset, score=score)
  return xla.reference_with_weights(cfg, diff, aux)


def _auto_implementation(cfg: Config, diff, aux) -> str:
  """The implementation "auto" picks for one call (its canonical form).

  GPU (decided on an H200, bench/results/attention_gpu_h200.json; docs/design.md): "pallas"
  for bfloat16/float16 inputs with head_dim and v_dim <= 128 and no materialised bias or mask,
  on one GPU (several: "xla", the Triton kernel is not wrapped per shard).
  There the kernel ran forward+backward 1.7-2.0x faster than "xla" at the default preset's
  shape (B 64, T 512, 8 heads x 32) and 3.7x at T = 4096 (16 heads x 128). float32 stays on
  "xla": the kernel's float32 products run without tensor cores and tied "xla" at the smoke
  preset's shape; head dims above 128 were not timed. If this JAX has no Pallas Triton backend,
  "xla".
  TPU: "xla" on v2 and v3 (Mosaic does not compile the kernel's bf16 matmuls there); on later
  TPUs "pallas" (the Mosaic kernel) wherever it takes the call: float32 or bfloat16 inputs (all
  three the same dtype; float16 fails Mosaic's compiler, float64 is refused), head_dim and v_dim
  <= 256 (the largest compiled), no materialised bias or mask, and a call it can be split for:
  one device, or a mesh that `sharding.partition_plan` sees at trace time (`jax.set_mesh`
  around the jit, or Explicit mesh axes), since XLA cannot partition a Mosaic kernel by itself.
  Otherwise "xla". This is a default by capability, not by speed: the Mosaic kernel has only
  been compiled for TPU topologies by libtpu (v5e, in tests), never run on a TPU, so it is
  neither timed nor checked for numbers there (interpret mode on the CPU checks its maths).
  CPU: "xla".
  """
  del cfg
  target = platform.current()       # the default backend, or an ahead-of-time target
  if target == "tpu":
    return _auto_tpu(diff, aux)
  if target != "gpu":
    return "xla"
  q, k, v = diff["q"], diff["k"], diff["v"]
  if (jnp.dtype(q.dtype).itemsize != 2 or q.dtype != k.dtype or k.dtype != v.dtype
      or q.shape[-1] > 128 or v.shape[-1] > 128
      or diff["bias"] is not None or aux["mask"] is not None):
    return "xla"
  if _trace_devices() > 1:
    # Several GPUs: XLA cannot partition the Triton kernel and it is not wrapped per shard
    # (the TPU kernel is, `sharding.py`); measured on one GPU only.
    return "xla"
  try:
    from ban_jax.ops.gravity import pallas_common  # pylint: disable=g-import-not-at-top
    pallas_common.plgpu()
  except ImportError:
    return "xla"
  return "pallas"


def _trace_devices() -> int:
  """The devices the trace in progress is for: its mesh (an ahead-of-time target too), else
  this host's."""
  mesh = jax.sharding.get_abstract_mesh()
  return jax.device_count() if mesh.empty else mesh.size


def _auto_tpu(diff, aux) -> str:
  """The TPU branch of `_auto_implementation`."""
  if platform.device_kind().startswith(("TPU v2", "TPU v3")):
    # Mosaic rejects the kernel's bf16 matmuls there ("CompileTimeMosaicUnsupportedRhsType",
    # compiling the default preset for a v2-8).
    return "xla"
  q, k, v = diff["q"], diff["k"], diff["v"]
  if (q.dtype not in (jnp.float32, jnp.bfloat16) or q.dtype != k.dtype or k.dtype != v.dtype
      or q.shape[-1] > 256 or v.shape[-1] > 256
      or diff["bias"] is not None or aux["mask"] is not None):
    return "xla"
  try:
    from ban_jax.ops.gravity import sharding  # pylint: disable=g-import-not-at-top
  except ImportError:
    return "xla"
  if _trace_devices() > 1 and sharding.partition_plan(q) is None:
    return "xla"
  return "pallas"
