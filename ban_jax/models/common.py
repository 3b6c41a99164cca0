"""What the language models share: their dtype names and a parameter count."""

import jax
import jax.numpy as jnp

from ban_jax.layers.validation import check_choice
from ban_jax.layers.validation import check_int
from ban_jax.layers.validation import check_range
from ban_jax.ops import surprisal as surprisal_ops

# What `config.model.dtype` may name (the activations' dtype; parameters stay float32).
DTYPES = ("float32", "bfloat16", "float16")


def dtype_name(name: str, value) -> str:
  """Checks a dtype (a name or a numpy/jax dtype) against DTYPES and returns its name.

  The configs keep the name, not the dtype object, so they compare and print as the config
  block does.
  """
  try:
    value = jnp.dtype(value).name
  except TypeError as e:
    raise ValueError(f"{name}={value!r} is not one of {DTYPES}.") from e
  check_choice(name, value, DTYPES)
  return value


def param_count(model, length: int = 8) -> int:
  """Counts a model's parameters without allocating them (through `jax.eval_shape`).

  Args:
    model: a language model following the ban_jax model interface (int32 tokens
      [batch, length] in).
    length: the dummy sequence length used to trace the model.

  Returns:
    The number of scalar parameters.
  """
  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  shapes = jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)["params"]
  return sum(int(x.size) for x in jax.tree.leaves(shapes))


def check_trunk(config) -> str:
  """Checks what every model config shares (width, depth, heads, dropout, dtype).

  Args:
    config: a BANConfig or TransformerConfig (width, depth, attention, dropout_rate, dtype).

  Returns:
    The dtype's name, for the frozen dataclass to store.
  """
  check_int("model.d_model", config.width)
  check_int("model.num_layers", config.depth)
  if config.attention.head_dim is None and config.width % config.attention.num_heads:
    raise ValueError(f"model.d_model={config.width} is not divisible by model.num_heads="
                     f"{config.attention.num_heads}; change one or set model.head_dim.")
  check_range("model.dropout_rate", config.dropout_rate, 0.0, 1.0, high_open=True)
  return dtype_name("model.dtype", config.dtype)


def read_then_attend(trunk, tokens, segment_ids, attention_config, *, positions=None,
                     reading=None):
  """The model's logits, reading the window twice when key masses come from surprisal.

  With `attention_config.uses_surprisal`, a first pass without tags (and without sowing
  anything) predicts every token; each token's surprisal under that prediction, stop-gradient,
  becomes its key mass in the second pass, whose logits are returned. Otherwise one pass. The
  first pass is a full forward: it shows in XLA's FLOPs and in the benchmarks' budgets.

  Args:
    trunk: (surprisal or None, quiet: bool) -> float logits [batch, length, vocab]; the same
      module instances (same parameters) in both calls.
    tokens: int [batch, length].
    segment_ids: optional int [batch, length].
    attention_config: the model's `AttentionConfig`.
    positions: optional int [batch, length]; while decoding, a row whose first position is
      above 0 continues a text, so its first token's surprisal comes from `reading`.
    reading: while decoding, a variable (`.value`, float [batch, vocab]) holding the reading
      pass's logits at the last token of the previous call; updated here.

  Returns:
    float logits [batch, length, vocab].
  """
  if not attention_config.uses_surprisal:
    return trunk(None, False)
  first = trunk(None, True)
  previous = None
  if reading is not None:
    continues = positions[:, 0] > 0 if positions is not None else None
    previous = (reading.value, continues)
    reading.value = first[:, -1]
  surprisal = surprisal_ops.token_surprisal(first, tokens, segment_ids, previous=previous)
  return trunk(jax.lax.stop_gradient(surprisal), False)


def reading_state(module, kv, attention_config, batch: int, vocab_size: int):
  """While decoding a surprisal-tagged model: the cache variable holding the reading pass's
  last logits (float32 [batch, vocab]) that `read_then_attend` carries; None otherwise."""
  if kv is None or not attention_config.uses_surprisal:
    return None
  return module.variable("cache", "read_last_logits", jnp.zeros, (batch, vocab_size),
                         jnp.float32)
