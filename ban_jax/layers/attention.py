"""Causal self-attention for the language models, with gravity attention as an option.

`SelfAttention(AttentionConfig(...))` is the models' attention layer: projections, GQA, the
score (`kind="dot" | "gravity" | "inverse_square"`, `ban_jax.ops.gravity`), the positional
scheme (`positional="rope" | "alibi" | "power_law" | "none"`), optional context tagging, and a
decode cache. It lifts into any model on its own, e.g.
`SelfAttention(AttentionConfig(num_heads=4, head_dim=16, kind="gravity"))`.
To plug gravity attention into a flax model built on `nn.MultiHeadDotProductAttention` or
`nnx.MultiHeadAttention` instead, see `ban_jax.layers.attention_fn`.
"""

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ban_jax.layers.positional import POSITIONALS
from ban_jax.layers.positional import PowerLawField
from ban_jax.layers.tagging import ContextTagging
from ban_jax.layers.tagging import SurprisalTagging
from ban_jax.layers.validation import check_choice, check_int, check_range
from ban_jax.ops import gravity as gravity_ops
from ban_jax.ops import kv_cache as kv_ops
from ban_jax.ops import positional as pos_ops
from ban_jax.ops import rope

# What `AttentionConfig.kind` may name: the op's scores, the plain baseline first.
ATTENTIONS = ("dot",) + tuple(s for s in gravity_ops.SCORES if s != "dot")
# What `AttentionConfig.tagging_source` may name: a learned function of the hidden state
# (`ContextTagging`), or of the token's own surprisal under the model (`SurprisalTagging`).
TAGGING_SOURCES = ("hidden", "surprisal")
# The raw `gravity_mass_log` parameter starts here, so M = softplus(0.5) ≈ 0.974 and the
# largest logit M²/ε ≈ 9.5 (with M = 0.5 it would be 2.5, too flat for a head to single out one
# token among hundreds).
DEFAULT_MASS_INIT = 0.5
# Where `SelfAttention` sows its attention weights, float32 [batch, heads, q_len, k_len], when
# the caller makes this collection mutable (`apply(..., mutable=[WEIGHTS_COLLECTION])`).
WEIGHTS_COLLECTION = "attention_weights"


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """Settings of `SelfAttention` (frozen, so hashable: a valid linen attribute).

  Attributes:
    num_heads: query heads.
    num_kv_heads: key/value heads; must divide `num_heads` (GQA when smaller). None: num_heads.
    head_dim: width of one head. None: the input width // num_heads.
    kind: the score: "dot", "gravity" (the Gravity-2 paper's M²/(‖q−k‖² + ε)) or
      "inverse_square" (the same without the mass).
    positional: "rope", "alibi", "power_law" (learnable per head, the AGF paper) or "none".
    tagging: give every key a mass m_j > 0 used as `key_mass`.
    tagging_source: what the mass is a function of: "hidden" (softplus(Dense(h)),
      `ContextTagging`) or "surprisal" (softplus(w·s_j + b) of the token's stop-gradient
      surprisal, `SurprisalTagging`; the model then reads each window twice, see
      `ban_jax.models.common.read_then_attend`).
    mass_init: initial raw `gravity_mass_log` (M = softplus(raw)); "gravity" only, since the
      mass cancels in "inverse_square" and "dot" stays the plain baseline.
    eps: the softening ε of the distance, > 0.
    implementation: "auto", "xla", "reference" or "pallas" for the gravity op ("auto": the
      fused kernel on an NVIDIA GPU for bf16/f16 activations, else "xla"; see
      `ban_jax.ops.gravity`). With "auto", plain dot-product attention (no tagging, RoPE or no positions, not decoding) runs
      `jax.nn.dot_product_attention` (cuDNN where available); there, padding rows (segment 0)
      get finite but meaningless outputs instead of zeros.
    block_size: query and key block of the "xla" implementation.
    rope_max_wavelength: RoPE's longest wavelength.
  """
  num_heads: int = 4
  num_kv_heads: int | None = None
  head_dim: int | None = None
  kind: str = "dot"
  positional: str = "rope"
  tagging: bool = False
  tagging_source: str = "hidden"
  mass_init: float = DEFAULT_MASS_INIT
  eps: float = 0.1
  implementation: str = "auto"
  block_size: int = gravity_ops.DEFAULT_BLOCK_K
  rope_max_wavelength: float = 10_000.0

  # Field -> its name in the flat `config.model` block; the other fields are set through
  # `config.model.attention_options`.
  FLAT_NAMES: ClassVar[dict[str, str]] = {
      "num_heads": "num_heads", "num_kv_heads": "num_kv_heads", "head_dim": "head_dim",
      "kind": "attention", "positional": "positional", "tagging": "tagging",
      "tagging_source": "tagging_source"}

  def __post_init__(self):
    name = lambda field: "model." + self.FLAT_NAMES.get(field, f"attention_options.{field}")
    check_int(name("num_heads"), self.num_heads)
    if self.num_kv_heads is not None:
      check_int(name("num_kv_heads"), self.num_kv_heads)
      if self.num_heads % self.num_kv_heads:
        raise ValueError(f"model.num_heads={self.num_heads} must be a multiple of "
                         f"model.num_kv_heads={self.num_kv_heads}.")
    if self.head_dim is not None:
      check_int(name("head_dim"), self.head_dim)
    check_choice(name("kind"), self.kind, ATTENTIONS)
    check_choice(name("positional"), self.positional, POSITIONALS)
    check_choice(name("tagging_source"), self.tagging_source, TAGGING_SOURCES)
    check_choice(name("implementation"), self.implementation, gravity_ops.IMPLEMENTATIONS)
    check_range(name("eps"), self.eps, 0.0, float("inf"), low_open=True)
    check_int(name("block_size"), self.block_size)
    check_range(name("rope_max_wavelength"), self.rope_max_wavelength, 0.0, float("inf"),
                low_open=True)

  @property
  def uses_surprisal(self) -> bool:
    """Whether the key masses come from the tokens' surprisal (a first reading pass)."""
    return self.tagging and self.tagging_source == "surprisal"

  @property
  def kv_heads(self) -> int:
    """The number of key/value heads (`num_kv_heads`, or `num_heads` when None)."""
    return self.num_kv_heads or self.num_heads


class SelfAttention(nn.Module):
  """Multi-head causal self-attention with grouped key/value heads.

  Attributes:
    config: the `AttentionConfig`.
    dtype: computation dtype.
  """
  config: AttentionConfig = AttentionConfig()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, segment_ids=None, positions=None, surprisal=None, quiet=False,
               kv: kv_ops.KVSpec | None = None, token_surprisal=None):
    """Attends causally within each segment.

    Args:
      x: [batch, length, features].
      segment_ids: int [batch, length]; packed documents do not attend to each other and 0 is
        padding. None: one document.
      positions: int [batch, length], position within the document (RoPE and the positional
        fields). None: 0, 1, ... (while decoding: continuing from the last cached position).
      surprisal: float [batch, length], each token's stop-gradient surprisal (nats), for
        `tagging_source="surprisal"`; None there means an untagged first reading pass.
      quiet: sow nothing (the first reading pass must not count twice in diagnostics); while
        decoding, also keep this pass's own cache.
      kv: decode against a bounded key/value cache (`ban_jax.ops.kv_cache.KVSpec`) kept in the
        "cache" collection: `apply(..., kv=spec, mutable=["cache"])` takes the next tokens (a
        prompt, then one at a time), attends to every cached slot and to themselves, and
        stores them, evicting by the spec's policy when the slots are full. One document per
        batch row (`segment_ids` is ignored). The first such call creates the cache.
      token_surprisal: float [batch, length], while decoding: each new token's surprisal under
        the model (the loop knows it from the previous step's logits), kept per slot for the
        "gravity" policy. None: 0.

    Returns:
      [batch, length, features].
    """
    cfg = self.config
    batch, length, features = x.shape
    head_dim = cfg.head_dim or features // cfg.num_heads
    prefix = "read_" if quiet else ""
    if positions is None:
      start = 0
      if kv is not None and self.has_variable("cache", prefix + "slots"):
        start = jnp.max(self.get_variable("cache", prefix + "slots")["position"]) + 1
      positions = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32),
                                   (batch, length))

    dense = lambda heads, name: nn.DenseGeneral(
        (heads, head_dim), use_bias=False, dtype=self.dtype, name=name)
    q = dense(cfg.num_heads, "query")(x)
    k = dense(cfg.kv_heads, "key")(x)
    v = dense(cfg.kv_heads, "value")(x)
    if cfg.positional == "rope":
      q = rope.apply(q, positions, max_wavelength=cfg.rope_max_wavelength)
      k = rope.apply(k, positions, max_wavelength=cfg.rope_max_wavelength)
    key_mass = None
    if cfg.uses_surprisal:
      if surprisal is not None:
        key_mass = SurprisalTagging(name="tagging")(surprisal)
    elif cfg.tagging:
      key_mass = ContextTagging(dtype=self.dtype, name="tagging")(x)

    mass = None
    if cfg.kind == "gravity":
      raw = self.param("gravity_mass_log", nn.initializers.constant(cfg.mass_init),
                       (cfg.num_heads,), jnp.float32)
      mass = nn.softplus(raw)
      if not quiet:
        self.sow("diagnostics", "gravity_mass_mean", jnp.mean(mass))
    power_law = alibi = None
    if cfg.positional == "power_law":
      power_law = PowerLawField(cfg.num_heads, name="power_law")()
    elif cfg.positional == "alibi":
      alibi = jnp.asarray(pos_ops.alibi_slopes(cfg.num_heads))

    op_args = dict(eps=cfg.eps, power_law=power_law, alibi_slopes=alibi, score=cfg.kind,
                   implementation=cfg.implementation, block_k=cfg.block_size)
    if kv is not None:
      out = self._decode(q, k, v, mass, key_mass, positions, kv, token_surprisal, prefix,
                         op_args)
    elif (cfg.kind == "dot" and cfg.implementation == "auto" and not cfg.tagging
          and cfg.positional in ("rope", "none")):
      mask = None
      if segment_ids is not None:
        mask = ((segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
                & (segment_ids[:, None, None, :] != 0))
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True)
    else:
      out = gravity_ops.gravity_attention(q, k, v, mass, causal=True, segment_ids=segment_ids,
                                          positions=positions, key_mass=key_mass,
                                          block_q=cfg.block_size, **op_args)
    if kv is None and not quiet and self.is_mutable_collection(WEIGHTS_COLLECTION):
      # Opt-in (a diagnostic asks for the collection): the weights are materialised,
      # [batch, heads, length, length], which training must never pay for.
      _, weights = gravity_ops.gravity_attention_weights(
          q, k, v, mass, eps=cfg.eps, causal=True, segment_ids=segment_ids,
          positions=positions, key_mass=key_mass, power_law=power_law, alibi_slopes=alibi,
          score=cfg.kind)
      self.sow(WEIGHTS_COLLECTION, "weights", weights)
    return nn.DenseGeneral(features, axis=(-2, -1), use_bias=False, dtype=self.dtype,
                           name="out")(out)

  def _decode(self, q, k, v, mass, key_mass, positions, kv, token_surprisal, prefix, op_args):
    """Attends to the cached slots and the new tokens; stores the new tokens, evicting."""
    batch, length = q.shape[:2]
    slots = self.variable("cache", prefix + "slots", kv_ops.empty, batch, kv.slots,
                          k.shape[2], k.shape[3], v.shape[3], k.dtype)
    candidates = kv_ops.concat(slots.value, kv_ops.new_entries(k, v, positions, key_mass,
                                                              token_surprisal))
    # Empty slots get segment 0 (invisible); the new tokens see the slots and, causally, each
    # other (key j is visible to query i iff j <= i + kv.slots).
    filled = (candidates["position"] >= 0).astype(jnp.int32)
    out, weights = gravity_ops.gravity_attention_weights(
        q, candidates["k"], candidates["v"], mass, eps=op_args["eps"], causal=True,
        q_offset=kv.slots, segment_ids=(jnp.ones((batch, length), jnp.int32), filled),
        positions=(positions, candidates["position"]),
        key_mass=None if key_mass is None else candidates["key_mass"],
        power_law=op_args["power_law"], alibi_slopes=op_args["alibi_slopes"],
        score=op_args["score"])
    candidates = kv_ops.observe(candidates, weights)
    slots.value = kv_ops.select(kv, candidates, positions[:, -1])
    return out


# The gravity layer under the name the Gravity-2 paper uses; the same module.
GravityAttention = SelfAttention
