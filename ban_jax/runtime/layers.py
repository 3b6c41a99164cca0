"""The models' layers in NumPy float32, one stream at a time (arrays carry no batch axis).

Each function mirrors its JAX counterpart term for term (named in its docstring), so that a
float32 export gives the JAX model's logits to rounding: RMSNorm (flax), RoPE
(`ops.rope`), the three attention scores with context tagging and the positional fields
(`ops.gravity` reference path, `layers.attention.SelfAttention._decode`), the branched
attractor (`layers.branches.BranchedAttractor`) and the transformer's GELU MLP.
`weights(name)` returns a float32 parameter by its flax path relative to the layer.
"""

from __future__ import annotations

import math

import numpy as np

from . import cache as cache_lib


def softplus(x):
  """log(1 + e^x), stable (jax.nn.softplus)."""
  return np.logaddexp(x, np.float32(0)).astype(np.float32)


def rms_norm(x, scale, eps: float = 1e-6):
  """flax RMSNorm: x [..., D] · rsqrt(mean(x²) + eps) · scale [D]."""
  mean2 = np.mean(np.square(x), axis=-1, keepdims=True)
  return x * (np.float32(1.0) / np.sqrt(mean2 + np.float32(eps)) * scale)


def gelu(x):
  """jax.nn.gelu(approximate=True), flax's nn.gelu."""
  c = np.float32(math.sqrt(2.0 / math.pi))
  return x * (np.float32(0.5) * (np.float32(1.0) + np.tanh(c * (x + np.float32(0.044715) * x**3))))


def rope(x, positions, max_wavelength: float):
  """`ops.rope.apply`: x [L, heads, head_dim], positions int [L] -> the same shape."""
  half = x.shape[-1] // 2
  freq = np.float32(max_wavelength) ** (-np.arange(half, dtype=np.float32) / np.float32(half))
  angle = positions.astype(np.float32)[:, None, None] * freq
  sin, cos = np.sin(angle), np.cos(angle)
  x1, x2 = x[..., :half], x[..., half:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """`ops.positional.alibi_slopes`: float32 [num_heads]."""
  def geometric(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]
  low = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = geometric(low)
  if low < num_heads:
    slopes += geometric(2 * low)[0::2][: num_heads - low]
  return np.asarray(slopes, np.float32)


def attention(x, weights, cfg: dict, slots: dict, positions, spec, token_surprisal):
  """`SelfAttention` decoding L new tokens against one layer's cache.

  Args:
    x: float32 [L, D], the normalised residual stream of the new tokens.
    weights: name -> float32 parameter, relative to the attention layer.
    cfg: the model's attention config (num_heads, num_kv_heads, head_dim, kind, positional,
      tagging, eps, rope_max_wavelength).
    slots: the layer's cache (`cache.empty`), S slots.
    positions: int [L], the new tokens' positions.
    spec: the `cache.Spec`.
    token_surprisal: float [L] or None (0), the tokens' surprisal under the model.

  Returns:
    (out float32 [L, D], the updated cache).
  """
  heads, head_dim = cfg["num_heads"], cfg["head_dim"]
  kv_heads = cfg["num_kv_heads"] or heads
  group = heads // kv_heads
  q, k, v = (project(x, weights(f"{name}/kernel")) for name in ("query", "key", "value"))
  if cfg["positional"] == "rope":
    q = rope(q, positions, cfg["rope_max_wavelength"])
    k = rope(k, positions, cfg["rope_max_wavelength"])
  key_mass = None
  if cfg["tagging"]:
    key_mass = softplus(x @ weights("tagging/mass/kernel") + weights("tagging/mass/bias"))[:, 0]
  candidates = cache_lib.concat(
      slots, cache_lib.new_entries(k, v, positions, key_mass, token_surprisal))
  length, n = x.shape[0], candidates["position"].shape[0]
  per_head = lambda a: a.reshape(kv_heads, group)[:, :, None, None]

  # Batched matmuls over the kv heads (BLAS), not einsum: [kv, group·L, hd] @ [kv, hd, n].
  qg = q.reshape(length, kv_heads, group, head_dim).transpose(1, 2, 0, 3)     # [kv, g, L, hd]
  keys = candidates["k"].transpose(1, 0, 2)                                  # [kv, n, hd]
  values = candidates["v"].transpose(1, 0, 2)
  s = np.matmul(qg.reshape(kv_heads, group * length, head_dim), keys.transpose(0, 2, 1))
  s = s.reshape(kv_heads, group, length, n)
  kind = cfg["kind"]
  if kind == "dot":
    z = s * np.float32(1.0 / math.sqrt(head_dim))
  else:
    qn = np.sum(qg * qg, axis=-1)                                            # [kv, g, L]
    kn = np.sum(keys * keys, axis=-1)                                        # [kv, n]
    d2 = np.maximum(qn[..., None] + kn[:, None, None, :] - np.float32(2.0) * s, np.float32(0))
    if kind == "gravity":
      potential = np.float32(1.0) / (d2 + np.float32(cfg["eps"]))
      if key_mass is not None:
        potential = potential * candidates["key_mass"]
      m2 = softplus(weights("gravity_mass_log")) ** 2
      z = per_head(m2) * potential
    else:
      z = -np.log(d2 + np.float32(cfg["eps"]))
  if kind != "gravity" and key_mass is not None:
    z = z + np.log(candidates["key_mass"])
  if cfg["positional"] in ("power_law", "alibi"):
    dist = np.abs(positions[:, None].astype(np.int64)
                  - candidates["position"][None, :].astype(np.int64)).astype(np.float32)
    if cfg["positional"] == "power_law":
      p, a = softplus(weights("power_law/power")), softplus(weights("power_law/scale"))
      z = z - per_head(p) * np.log1p(per_head(a) * dist)
    else:
      z = z - per_head(alibi_slopes(heads)) * dist

  # Every filled slot is visible; the new tokens see each other causally (index j <= i + S).
  slots_count = n - length
  visible = ((candidates["position"] >= 0)[None, :]
             & (np.arange(n)[None, :] <= np.arange(length)[:, None] + slots_count))
  z = np.where(visible, z, -np.inf)
  m = np.max(z, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, np.float32(0))
  e = np.where(visible, np.exp(z - m), np.float32(0))
  total = np.sum(e, axis=-1, keepdims=True)
  w = (e / np.where(total > 0, total, np.float32(1))).astype(np.float32)
  out = np.matmul(w.reshape(kv_heads, group * length, n), values)           # [kv, g·L, hd]
  out = out.reshape(kv_heads, group, length, head_dim).transpose(2, 0, 1, 3)
  out = out.reshape(length, heads * head_dim) @ weights("out/kernel").reshape(heads * head_dim,
                                                                              -1)
  candidates = cache_lib.observe(candidates, w.reshape(heads, length, n))
  return out, cache_lib.select(spec, candidates, int(positions[-1]))


def project(x, kernel):
  """x [L, D] @ kernel [D, heads, head_dim] -> [L, heads, head_dim] (one BLAS matmul)."""
  return (x @ kernel.reshape(kernel.shape[0], -1)).reshape((x.shape[0],) + kernel.shape[1:])


def influence_gate(signal, reference, threshold: float, cap: float):
  """`ops.attractor.influence_gate`: zero when ‖m‖ ≤ threshold·‖h‖, else capped at cap·‖h‖."""
  signal_norm = np.sqrt(np.sum(np.square(signal), axis=-1))
  reference_norm = np.sqrt(np.sum(np.square(reference), axis=-1))
  is_open = signal_norm > threshold * reference_norm
  limit = np.float32(cap) * reference_norm
  denominator = np.where(signal_norm > 0, signal_norm, np.float32(1))
  scale = np.where(signal_norm > limit, limit / denominator, np.float32(1))
  return np.where(is_open[:, None], signal * scale[:, None], np.float32(0)), is_open


def branched_attractor(x, weights, cfg: dict):
  """`BranchedAttractor` (forward value): x float32 [L, D] normalised -> [L, D].

  Every branch's drive b_n = x W_n + c_n is computed: the salience scores need all of them and
  so does the peripheral message (one tanh per branch), which is why every token reads every
  branch's kernel (docs/design.md: branch offload).
  """
  n = cfg["num_branches"]
  # One matmul per branch ([N, L, d]), viewed as [L, N, d]: no copy of the kernels.
  branches = np.matmul(x[None], weights("branches/kernel")).transpose(1, 0, 2)
  branches = branches + weights("branches/bias")
  scores = branches @ weights("salience/vector") + weights("salience/bias")          # [L, N]
  focus = np.argmax(scores, axis=-1)
  shifted = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
  probs = shifted / np.sum(shifted, axis=-1, keepdims=True)
  rows = np.arange(x.shape[0])
  h = branches[rows, focus]
  drive = h
  if n > 1:
    peripheral = np.tanh(branches)
    others = probs.copy()
    others[rows, focus] = 0.0
    message = np.matmul(others[:, None, :], peripheral)[:, 0] @ weights("gate/proj/kernel")
    influence, _ = influence_gate(message, h, cfg["threshold"], cfg["cap"])
    drive = h + np.float32(cfg["gamma"]) * influence
  w = weights("attractor/w")
  alpha = np.float32(cfg["alpha"])
  z = np.tanh(h)
  for _ in range(cfg["steps"]):
    z = (np.float32(1) - alpha) * z + alpha * np.tanh(z @ w + drive)
  y = z @ weights("out/kernel")
  if cfg["routing"] == "scale":
    y = y * probs[rows, focus][:, None]
  # "straight_through" multiplies by π_f / stop_gradient(π_f): 1 in the forward pass.
  return y


def mlp(x, weights):
  """The transformer's `Mlp`: x [L, D] -> down(gelu(up(x))) [L, D]."""
  return gelu(x @ weights("up/kernel")) @ weights("down/kernel")
