"""The Branched Attractor Network language model (seed 000 §4).

BANLM: token embeddings -> `depth` BANBlocks -> RMSNorm -> logits [batch, length, vocab], causal.
A BANBlock is pre-norm: x + SelfAttention(norm(x)) for causal token mixing (dot-product or
gravity attention, whichever `attention` names), then x + BranchedAttractor(norm(x)) as the
per-position transformation in place of a transformer's MLP.
"""

from collections.abc import Mapping
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ban_jax.errors import UserError
from ban_jax.layers.attention import SelfAttention
from ban_jax.layers.branches import BranchedAttractor


class BANBlock(nn.Module):
  """Causal attention + branched attractor, each a pre-norm residual branch.

  Attributes: see `BANLM`.
  """
  width: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  num_branches: int
  branch_width: int | None
  attractor_steps: int
  alpha: float
  gamma: float
  threshold: float
  cap: float
  implicit_grad: bool
  init_scale: float
  routing: str
  load_balance_weight: float
  attention: str
  positional: str
  tagging: bool
  attention_options: Mapping[str, Any] | None
  dropout_rate: float
  dtype: Any
  unroll: Any = 1

  @nn.compact
  def __call__(self, x, segment_ids=None, positions=None, mask=None, deterministic=True):
    """Applies the block.

    Args:
      x: [batch, length, width] residual stream.
      segment_ids: optional int32 [batch, length] (0 = padding).
      positions: optional int32 [batch, length].
      mask: optional bool [batch, length], True at real tokens.
      deterministic: False enables dropout.

    Returns:
      [batch, length, width].
    """
    options = dict(self.attention_options or {})
    h = nn.RMSNorm(dtype=self.dtype, name="attention_norm")(x)
    h = SelfAttention(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                      head_dim=self.head_dim, attention=self.attention,
                      positional=self.positional, tagging=self.tagging, dtype=self.dtype,
                      name="attention", **options)(h, segment_ids=segment_ids, positions=positions)
    x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    h = nn.RMSNorm(dtype=self.dtype, name="attractor_norm")(x)
    h = BranchedAttractor(
        num_branches=self.num_branches, branch_width=self.branch_width,
        steps=self.attractor_steps, alpha=self.alpha, gamma=self.gamma,
        threshold=self.threshold, cap=self.cap, implicit_grad=self.implicit_grad,
        init_scale=self.init_scale, routing=self.routing,
        load_balance_weight=self.load_balance_weight, dtype=self.dtype, unroll=self.unroll,
        name="attractor")(h, mask=mask)
    return x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)


class BANLM(nn.Module):
  """The Branched Attractor Network as a causal language model.

  Attributes:
    vocab_size: number of token ids.
    width: model width (residual stream).
    depth: number of BANBlocks.
    num_heads: attention query heads.
    num_kv_heads: attention key/value heads (None: num_heads).
    head_dim: attention head width (None: width // num_heads).
    num_branches: N branches per position.
    branch_width: width of a branch (None: width).
    attractor_steps: fixed number of attractor steps.
    alpha: attractor step size in (0, 1].
    gamma: scale of the peripheral influence in the attractor drive.
    threshold: influence gate threshold, a fraction of the focus drive's norm.
    cap: influence cap, a fraction of the focus drive's norm (the seed's 15%).
    implicit_grad: implicit (fixed-point) gradients instead of backprop through the loop.
    init_scale: spectral norm of the attractor's W at initialisation.
    routing: "scale" or "straight_through" (how the salience scorer gets gradients).
    load_balance_weight: weight of the per-layer load-balance loss.
    attention: score function passed to `SelfAttention` ("dot", "gravity", "inverse_square").
    positional: positional scheme passed to `SelfAttention` ("rope", ...).
    tagging: context tagging (a learned mass per key) in `SelfAttention`.
    attention_options: further keyword arguments for `SelfAttention` (e.g. eps,
      implementation, mass_init).
    tie_embeddings: use the embedding matrix (scaled by width**-0.5) for the output logits, as
      the transformer baseline does.
    dropout_rate: dropout on the residual branches (only when deterministic=False).
    remat: rematerialise each block in the backward pass (saves activation memory).
    dtype: computation dtype (parameters stay float32; logits are float32).
    unroll: `lax.fori_loop` unrolling of the attractor (True for FLOP counting).
  """
  vocab_size: int
  width: int = 256
  depth: int = 6
  num_heads: int = 4
  num_kv_heads: int | None = None
  head_dim: int | None = None
  num_branches: int = 4
  branch_width: int | None = None
  attractor_steps: int = 6
  alpha: float = 0.5
  gamma: float = 1.0
  threshold: float = 0.02
  cap: float = 0.15
  implicit_grad: bool = False
  init_scale: float = 0.5
  routing: str = "scale"
  load_balance_weight: float = 0.01
  attention: str = "dot"
  positional: str = "rope"
  tagging: bool = False
  attention_options: Mapping[str, Any] | None = None
  tie_embeddings: bool = True
  dropout_rate: float = 0.0
  remat: bool = False
  dtype: Any = "float32"
  unroll: Any = 1

  def _validate(self):
    for name in ("vocab_size", "width", "depth", "num_heads", "attractor_steps"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise UserError(f"model.{name} must be a positive integer, got {value!r}.")
    if self.head_dim is None and self.width % self.num_heads:
      raise UserError(f"model.width={self.width} is not divisible by num_heads="
                      f"{self.num_heads}; change one or set model.head_dim.")
    kv = self.num_kv_heads or self.num_heads
    if self.num_heads % kv:
      raise UserError(f"model.num_kv_heads={kv} must divide num_heads={self.num_heads}.")
    if not 0 <= self.dropout_rate < 1:
      raise UserError(f"model.dropout_rate must lie in [0, 1), got {self.dropout_rate!r}.")

  @nn.compact
  def __call__(self, tokens, *, segment_ids=None, positions=None, deterministic=True):
    """Maps tokens to per-position logits, causally.

    Args:
      tokens: int32 [batch, length].
      segment_ids: optional int32 [batch, length]; packed documents, 0 = padding.
      positions: optional int32 [batch, length]; position within the document.
      deterministic: False enables dropout (rng stream "dropout").

    Returns:
      float32 logits [batch, length, vocab_size].
    """
    self._validate()
    dtype = jnp.dtype(self.dtype)
    mask = None if segment_ids is None else segment_ids != 0
    embed = nn.Embed(self.vocab_size, self.width, dtype=dtype,
                     embedding_init=nn.initializers.normal(1.0), name="embed")
    x = embed(tokens)
    block = nn.remat(BANBlock, static_argnums=(5,)) if self.remat else BANBlock
    for i in range(self.depth):
      x = block(
          width=self.width, num_heads=self.num_heads,
          num_kv_heads=self.num_kv_heads or self.num_heads,
          head_dim=self.head_dim or self.width // self.num_heads,
          num_branches=self.num_branches, branch_width=self.branch_width,
          attractor_steps=self.attractor_steps, alpha=self.alpha, gamma=self.gamma,
          threshold=self.threshold, cap=self.cap, implicit_grad=self.implicit_grad,
          init_scale=self.init_scale, routing=self.routing,
          load_balance_weight=self.load_balance_weight, attention=self.attention,
          positional=self.positional, tagging=self.tagging,
          attention_options=self.attention_options, dropout_rate=self.dropout_rate,
          dtype=dtype, unroll=self.unroll, name=f"layer_{i}")(
              x, segment_ids, positions, mask, deterministic)
    x = nn.RMSNorm(dtype=dtype, name="final_norm")(x)
    if self.tie_embeddings:
      # Unit-variance embeddings as output weights would give O(sqrt(width)) logits: scale.
      logits = embed.attend(x * self.width ** -0.5)
    else:
      logits = nn.Dense(self.vocab_size, use_bias=False, dtype=dtype, name="logits")(x)
    return logits.astype(jnp.float32)


# config.model field names shared with the transformer baseline -> BANLM attribute names.
CONFIG_ALIASES = {"d_model": "width", "num_layers": "depth"}


def from_config(cfg, vocab_size: int) -> BANLM:
  """Builds a BANLM from `config.model` (every field but `name` is a BANLM attribute).

  Args:
    cfg: an ml_collections.ConfigDict (or mapping) of BANLM attributes; `d_model` and
      `num_layers` are accepted for `width` and `depth`.
    vocab_size: the tokenizer's vocabulary size.

  Returns:
    The (unbound) BANLM.
  """
  known = {f.name for f in dataclasses.fields(BANLM)} - {"parent", "name", "vocab_size"}
  kwargs = {}
  items = cfg.items() if hasattr(cfg, "items") else dict(cfg).items()
  for key, value in items:
    if key == "name":
      continue
    attribute = CONFIG_ALIASES.get(key, key)
    if attribute not in known:
      raise UserError(f"model.{key} is not a setting of the BAN model; remove it or use one of "
                      f"{sorted(known)}.")
    if attribute in kwargs:
      raise UserError(f"model.{key} and another field both set BAN's {attribute}; keep one.")
    if hasattr(value, "to_dict"):
      value = value.to_dict()
    kwargs[attribute] = value
  return BANLM(vocab_size=vocab_size, **kwargs)


def param_count(model: nn.Module, length: int = 8) -> int:
  """Counts a model's parameters without allocating them (through `jax.eval_shape`).

  Args:
    model: a language model following the ban_jax model interface.
    length: the dummy sequence length used to trace the model.

  Returns:
    The number of scalar parameters.
  """
  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  shapes = jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)["params"]
  return sum(int(x.size) for x in jax.tree.leaves(shapes))
