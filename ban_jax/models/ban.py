"""The Branched Attractor Network language model (the Information Gravity paper).

BANLM: token embeddings -> `depth` BANBlocks -> RMSNorm -> logits [batch, length, vocab], causal.
A BANBlock is pre-norm: x + SelfAttention(norm(x)) for causal token mixing (dot-product or
gravity attention, whichever `config.attention.kind` names), then x + BranchedAttractor(norm(x))
as the per-position transformation in place of a transformer's MLP.
"""

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from ban_jax.layers.attention import AttentionConfig, SelfAttention
from ban_jax.layers.branches import AttractorConfig, BranchedAttractor
from ban_jax.layers.validation import check_int
from ban_jax.models.common import check_trunk
from ban_jax.models.common import read_then_attend
from ban_jax.models.common import reading_state
from ban_jax.models import scan


@dataclasses.dataclass(frozen=True)
class BANConfig:
  """The whole BAN (frozen, so hashable: a valid linen attribute).

  Built from the flat `config.model` block by `ban_jax.models.make_config`.

  Attributes:
    width: model width (residual stream); `model.d_model`.
    depth: number of BANBlocks; `model.num_layers`.
    attention: the token mixing, see `AttentionConfig`.
    attractor: the per-position branched attractor, see `AttractorConfig`.
    tie_embeddings: use the embedding matrix (scaled by width**-0.5) for the output logits, as
      the transformer baseline does.
    dropout_rate: dropout on the residual branches (only when deterministic=False), in [0, 1).
    dtype: computation dtype name, one of `ban_jax.models.common.DTYPES` (parameters stay
      float32; logits are float32). A dtype object is accepted and stored by name.
    remat: rematerialise each block in the backward pass (saves activation memory).
    scan_layers: run the blocks under one `nn.scan` (`ban_jax.models.scan`): one block traced
      and compiled instead of `depth`; parameters under `layers` with a leading layer axis.
  """
  width: int = 256
  depth: int = 6
  attention: AttentionConfig = AttentionConfig()
  attractor: AttractorConfig = AttractorConfig()
  tie_embeddings: bool = True
  dropout_rate: float = 0.0
  dtype: str = "float32"
  remat: bool = False
  scan_layers: bool = False

  # Field -> its name in the flat `config.model` block (`attention` and `attractor` take
  # theirs from AttentionConfig.FLAT_NAMES and AttractorConfig.FLAT_NAMES).
  FLAT_NAMES: ClassVar[dict[str, str]] = {
      "width": "d_model", "depth": "num_layers", "tie_embeddings": "tie_embeddings",
      "dropout_rate": "dropout_rate", "dtype": "dtype", "remat": "remat",
      "scan_layers": "scan_layers"}

  def __post_init__(self):
    object.__setattr__(self, "dtype", check_trunk(self))


class BANBlock(nn.Module):
  """Causal attention + branched attractor, each a pre-norm residual branch.

  Attributes:
    config: the model's `BANConfig`.
    scanned: return `(x, None)`, the form `nn.scan` iterates (`ban_jax.models.scan`).
  """
  config: BANConfig
  scanned: bool = False

  @nn.compact
  def __call__(self, x, segment_ids=None, positions=None, mask=None, deterministic=True,
               surprisal=None, quiet=False, kv=None, token_surprisal=None):
    """Applies the block.

    Args:
      x: [batch, length, width] residual stream.
      segment_ids: optional int32 [batch, length] (0 = padding).
      positions: optional int32 [batch, length].
      mask: optional bool [batch, length], True at real tokens.
      deterministic: False enables dropout.
      surprisal: optional float [batch, length], for surprisal tagging (see `SelfAttention`).
      quiet: sow nothing (a first reading pass).
      kv, token_surprisal: decode against a key/value cache (see `SelfAttention`).

    Returns:
      [batch, length, width] (with `scanned`, that and None).
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    h = nn.RMSNorm(dtype=dtype, name="attention_norm")(x)
    h = SelfAttention(cfg.attention, dtype=dtype, name="attention")(
        h, segment_ids=segment_ids, positions=positions, surprisal=surprisal, quiet=quiet, kv=kv,
        token_surprisal=token_surprisal)
    x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    h = nn.RMSNorm(dtype=dtype, name="attractor_norm")(x)
    h = BranchedAttractor(cfg.attractor, dtype=dtype, name="attractor")(h, mask=mask,
                                                                       quiet=quiet)
    x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return (x, None) if self.scanned else x


class BANLM(nn.Module):
  """The Branched Attractor Network as a causal language model.

  Attributes:
    vocab_size: number of token ids.
    config: the `BANConfig`.
  """
  vocab_size: int
  config: BANConfig = BANConfig()
  # The unscanned per-layer name (`ban_jax.models.scan` converts to and from it).
  LAYER_FORMAT: ClassVar[str] = "layer_{}"

  @nn.compact
  def __call__(self, tokens, *, segment_ids=None, positions=None, deterministic=True, kv=None,
               token_surprisal=None):
    """Maps tokens to per-position logits, causally.

    Args:
      tokens: int32 [batch, length].
      segment_ids: optional int32 [batch, length]; packed documents, 0 = padding.
      positions: optional int32 [batch, length]; position within the document.
      deterministic: False enables dropout (rng stream "dropout").
      kv: a `ban_jax.ops.kv_cache.KVSpec` to decode against the "cache" collection: the tokens
        continue what earlier calls stored (see `ban_jax.inference.decode`).
      token_surprisal: float [batch, length], while decoding: the new tokens' surprisal under
        the model, for the "gravity" cache policy.

    Returns:
      float32 logits [batch, length, vocab_size].
    """
    check_int("vocab_size", self.vocab_size)
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    mask = None if segment_ids is None else segment_ids != 0
    embed = nn.Embed(self.vocab_size, cfg.width, dtype=dtype,
                     embedding_init=nn.initializers.normal(1.0), name="embed")
    # static_argnums counts `self`: 5 is `deterministic`, 7 `quiet` and 8 `kv`, static.
    static = (5, 7, 8)
    if cfg.scan_layers:
      blocks = [scan.scanned(BANBlock, cfg.depth, 8, remat_static=static if cfg.remat else None)(
          cfg, scanned=True, name=scan.LAYERS)]
    else:
      block = nn.remat(BANBlock, static_argnums=static) if cfg.remat else BANBlock
      blocks = [block(cfg, name=self.LAYER_FORMAT.format(i)) for i in range(cfg.depth)]
    final_norm = nn.RMSNorm(dtype=dtype, name="final_norm")
    head = None if cfg.tie_embeddings else nn.Dense(self.vocab_size, use_bias=False,
                                                    dtype=dtype, name="logits")

    def trunk(surprisal, quiet):
      x = embed(tokens)
      for layer in blocks:
        x = layer(x, segment_ids, positions, mask, deterministic, surprisal, quiet, kv,
                  token_surprisal)
        x = x[0] if cfg.scan_layers else x
      x = final_norm(x)
      if head is None:
        # Unit-variance embeddings as output weights would give O(sqrt(width)) logits: scale.
        return embed.attend(x * cfg.width ** -0.5).astype(jnp.float32)
      return head(x).astype(jnp.float32)

    reading = reading_state(self, kv, cfg.attention, tokens.shape[0], self.vocab_size)
    return read_then_attend(trunk, tokens, segment_ids, cfg.attention, positions=positions,
                            reading=reading)


def with_unroll(model: BANLM, unroll: Any = True) -> BANLM:
  """The same model with the attractor loop unrolled (XLA counts a loop body once)."""
  attractor = dataclasses.replace(model.config.attractor, unroll=unroll)
  return model.clone(config=dataclasses.replace(model.config, attractor=attractor))
