"""A decoder-only pre-norm transformer: the baseline every gravity variant is measured against."""

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from ban_jax.layers.attention import AttentionConfig, SelfAttention
from ban_jax.layers.validation import check_int
from ban_jax.models.common import check_trunk
from ban_jax.models.common import read_then_attend
from ban_jax.models.common import reading_state
from ban_jax.models import scan


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """The whole transformer (frozen, so hashable: a valid linen attribute).

  Built from the flat `config.model` block by `ban_jax.models.make_config`.

  Attributes:
    width: model width (residual stream); `model.d_model`.
    depth: number of blocks; `model.num_layers`.
    mlp_dim: hidden width of the feed-forward layer.
    attention: the token mixing, see `AttentionConfig`.
    dropout_rate: dropout on the residual branches (only when deterministic=False), in [0, 1).
    dtype: computation dtype name, one of `ban_jax.models.common.DTYPES` (parameters stay
      float32; logits are float32). A dtype object is accepted and stored by name.
    remat: rematerialise each block in the backward pass (saves activation memory).
    scan_layers: run the blocks under one `nn.scan`, as `BANConfig.scan_layers`.
  """
  width: int = 256
  depth: int = 6
  mlp_dim: int = 1024
  attention: AttentionConfig = AttentionConfig()
  dropout_rate: float = 0.0
  dtype: str = "float32"
  remat: bool = False
  scan_layers: bool = False

  # Field -> its name in the flat `config.model` block (`attention` takes its fields from
  # AttentionConfig.FLAT_NAMES).
  FLAT_NAMES: ClassVar[dict[str, str]] = {
      "width": "d_model", "depth": "num_layers", "mlp_dim": "mlp_dim",
      "dropout_rate": "dropout_rate", "dtype": "dtype", "remat": "remat",
      "scan_layers": "scan_layers"}

  def __post_init__(self):
    check_int("model.mlp_dim", self.mlp_dim)
    object.__setattr__(self, "dtype", check_trunk(self))


class Mlp(nn.Module):
  """Position-wise GELU feed-forward: [..., d_model] -> [..., d_model]."""
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(self.mlp_dim, use_bias=False, dtype=self.dtype, name="up")(x)
    return nn.Dense(x.shape[-1], use_bias=False, dtype=self.dtype, name="down")(nn.gelu(h))


class Block(nn.Module):
  """x + Attention(Norm(x)), then x + Mlp(Norm(x)): [batch, length, width] -> the same.

  With `scanned`, returns `(x, None)`, the form `nn.scan` iterates.
  """
  config: TransformerConfig
  scanned: bool = False

  @nn.compact
  def __call__(self, x, segment_ids, positions, deterministic, surprisal=None, quiet=False,
               kv=None, token_surprisal=None):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    h = nn.RMSNorm(dtype=dtype, name="attn_norm")(x)
    h = SelfAttention(cfg.attention, dtype=dtype, name="attn")(
        h, segment_ids=segment_ids, positions=positions, surprisal=surprisal, quiet=quiet, kv=kv,
        token_surprisal=token_surprisal)
    x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    h = Mlp(cfg.mlp_dim, dtype=dtype, name="mlp")(nn.RMSNorm(dtype=dtype, name="mlp_norm")(x))
    x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return (x, None) if self.scanned else x


class TransformerLM(nn.Module):
  """tokens int32 [batch, length] -> logits float32 [batch, length, vocab], causal.

  Input and output embeddings are tied.

  Attributes:
    vocab_size: number of token ids.
    config: the `TransformerConfig`.
  """
  vocab_size: int
  config: TransformerConfig = TransformerConfig()
  # The unscanned per-layer name (`ban_jax.models.scan` converts to and from it).
  LAYER_FORMAT: ClassVar[str] = "block_{}"

  @nn.compact
  def __call__(self, tokens, *, segment_ids=None, positions=None, deterministic=True, kv=None,
               token_surprisal=None):
    """As `ban_jax.models.ban.BANLM.__call__`: logits float32 [batch, length, vocab]."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    embed = nn.Embed(self.vocab_size, cfg.width, dtype=dtype,
                     embedding_init=nn.initializers.normal(1.0), name="embed")
    # static_argnums counts `self`: 4 is `deterministic`, 6 `quiet` and 7 `kv`, static.
    static = (4, 6, 7)
    if cfg.scan_layers:
      blocks = [scan.scanned(Block, cfg.depth, 7, remat_static=static if cfg.remat else None)(
          cfg, scanned=True, name=scan.LAYERS)]
    else:
      block = nn.remat(Block, static_argnums=static) if cfg.remat else Block
      blocks = [block(cfg, name=self.LAYER_FORMAT.format(i)) for i in range(cfg.depth)]
    final_norm = nn.RMSNorm(dtype=dtype, name="final_norm")

    def trunk(surprisal, quiet):
      x = embed(tokens)
      for layer in blocks:
        x = layer(x, segment_ids, positions, deterministic, surprisal, quiet, kv,
                  token_surprisal)
        x = x[0] if cfg.scan_layers else x
      # Unit-variance embeddings as logits weights would make initial logits O(sqrt(d)): scale.
      return embed.attend(final_norm(x) * cfg.width ** -0.5).astype(jnp.float32)

    reading = reading_state(self, kv, cfg.attention, tokens.shape[0], self.vocab_size)
    return read_then_attend(trunk, tokens, segment_ids, cfg.attention, positions=positions,
                            reading=reading)
