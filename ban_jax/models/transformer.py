"""A decoder-only pre-norm transformer: the baseline every gravity variant is measured against."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ban_jax.layers.attention import SelfAttention


class Mlp(nn.Module):
  """Position-wise GELU feed-forward: [..., d_model] -> [..., d_model]."""
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(self.mlp_dim, use_bias=False, dtype=self.dtype, name="up")(x)
    return nn.Dense(x.shape[-1], use_bias=False, dtype=self.dtype, name="down")(nn.gelu(h))


class Block(nn.Module):
  """x + Attention(Norm(x)), then x + Mlp(Norm(x))."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  attention: str = "dot"
  positional: str = "rope"
  tagging: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, segment_ids, positions, deterministic):
    h = nn.RMSNorm(dtype=self.dtype, name="attn_norm")(x)
    h = SelfAttention(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                      head_dim=self.head_dim, attention=self.attention,
                      positional=self.positional, tagging=self.tagging, dtype=self.dtype,
                      name="attn")(
                          h, segment_ids=segment_ids, positions=positions)
    x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    h = Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(nn.RMSNorm(dtype=self.dtype,
                                                                   name="mlp_norm")(x))
    return x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)


class TransformerLM(nn.Module):
  """tokens [batch, length] -> logits [batch, length, vocab] (float32), causal.

  Input and output embeddings are tied.
  """
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  attention: str = "dot"
  positional: str = "rope"
  tagging: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, tokens, *, segment_ids=None, positions=None, deterministic=True):
    embed = nn.Embed(self.vocab_size, self.d_model, dtype=self.dtype,
                     embedding_init=nn.initializers.normal(1.0), name="embed")
    x = embed(tokens)
    block = nn.remat(Block, static_argnums=(4,)) if self.remat else Block
    for i in range(self.num_layers):
      x = block(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                head_dim=self.head_dim, mlp_dim=self.mlp_dim, attention=self.attention,
                positional=self.positional, tagging=self.tagging,
                dropout_rate=self.dropout_rate, dtype=self.dtype, name=f"block_{i}")(x, segment_ids, positions, deterministic)
    x = nn.RMSNorm(dtype=self.dtype, name="final_norm")(x)
    # Unit-variance embeddings as logits weights would make initial logits O(sqrt(d)): scale.
    return embed.attend(x * self.d_model ** -0.5).astype(jnp.float32)


def from_config(cfg, vocab_size: int) -> TransformerLM:
  return TransformerLM(
      vocab_size=vocab_size, d_model=cfg.d_model, num_layers=cfg.num_layers,
      num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
      mlp_dim=cfg.mlp_dim, attention=cfg.attention, positional=cfg.positional,
      tagging=cfg.get("tagging", False), dropout_rate=cfg.dropout_rate, dtype=jnp.dtype(cfg.dtype), remat=cfg.remat)
