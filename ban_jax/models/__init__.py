"""The language models and their one entry from a config: `get_model(config.model, vocab)`.

`make_config` turns the flat `config.model` block (configs/wiki.py) into the model's frozen
config dataclass, `BANConfig` or `TransformerConfig`, which the model passes down whole; each
layer takes its own part (`AttentionConfig`, `AttractorConfig`). Bad values raise ValueError
(TypeError for a wrong type) naming the flat field, e.g. "model.attention='cosine' is not one
of ('dot', 'gravity', 'inverse_square')".
"""

from collections.abc import Mapping
import dataclasses
from typing import Any

import flax.linen as nn

from ban_jax.layers.attention import AttentionConfig
from ban_jax.layers.branches import AttractorConfig
from ban_jax.models.ban import BANConfig, BANLM
from ban_jax.models.transformer import TransformerConfig, TransformerLM

# config.model.name -> (config dataclass, model, the layer configs it holds by field name).
_MODELS = {
    "ban": (BANConfig, BANLM, {"attention": AttentionConfig, "attractor": AttractorConfig}),
    "transformer": (TransformerConfig, TransformerLM, {"attention": AttentionConfig}),
}
MODEL_NAMES = tuple(_MODELS)
ModelConfig = BANConfig | TransformerConfig

# The flat field holding AttentionConfig's remaining fields as a mapping.
_OPTIONS = "attention_options"


def _plain(block) -> dict[str, Any]:
  items = block.items() if hasattr(block, "items") else dict(block).items()
  return {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in items}


def _take(flat: dict[str, Any], cls) -> dict[str, Any]:
  """Pops `cls`'s flat fields out of `flat` as {field: value}."""
  return {field: flat.pop(name) for field, name in cls.FLAT_NAMES.items() if name in flat}


def make_config(model_block: Mapping[str, Any]) -> ModelConfig:
  """Builds the model's config dataclass from the flat `config.model` block.

  Args:
    model_block: an ml_collections.ConfigDict (or mapping) with `name` (one of MODEL_NAMES)
      and that model's flat fields: d_model, num_layers, num_heads, num_kv_heads, head_dim,
      attention, positional, tagging, attention_options (a mapping of further AttentionConfig
      fields: mass_init, eps, implementation, block_size, rope_max_wavelength), dropout_rate,
      dtype, remat; the BAN adds tie_embeddings and the AttractorConfig fields (num_branches,
      branch_width, attractor_steps, alpha, gamma, threshold, cap, implicit_grad, init_scale,
      routing, load_balance_weight, unroll); the transformer adds mlp_dim. Missing fields take
      the dataclasses' defaults.

  Returns:
    A `BANConfig` or `TransformerConfig`.

  Raises:
    ValueError: an unknown name or field, or a bad value (the message names the field).
    TypeError: a value of the wrong type.
  """
  flat = _plain(model_block)
  name = flat.pop("name", None)
  if name not in _MODELS:
    raise ValueError(f"model.name={name!r} is not one of {MODEL_NAMES}.")
  cls, _, parts = _MODELS[name]
  valid = {*cls.FLAT_NAMES.values(), *(n for p in parts.values() for n in p.FLAT_NAMES.values())}
  if "attention" in parts:
    valid.add(_OPTIONS)
  unknown = sorted(set(flat) - valid)
  if unknown:
    raise ValueError(f"model.{unknown[0]} is not a setting of the {name} model; remove it or "
                     f"use one of {sorted(valid)}.")
  options = flat.pop(_OPTIONS, None) or {}
  kwargs = {}
  for field, part in parts.items():
    kwargs[field] = part(**_take(flat, part))
  if options:
    option_fields = sorted(f.name for f in dataclasses.fields(AttentionConfig)
                           if f.name not in AttentionConfig.FLAT_NAMES)
    bad = sorted(set(options) - set(option_fields))
    if bad:
      raise ValueError(f"model.{_OPTIONS}.{bad[0]} is not an attention option; use one of "
                       f"{option_fields}.")
    kwargs["attention"] = dataclasses.replace(kwargs["attention"], **options)
  return cls(**_take(flat, cls), **kwargs)


def get_model(model_block: Mapping[str, Any] | ModelConfig, vocab_size: int) -> nn.Module:
  """Builds the (unbound) language model.

  Args:
    model_block: the flat `config.model` block (see `make_config`), or a config dataclass.
    vocab_size: the tokenizer's vocabulary size.

  Returns:
    A `BANLM` or `TransformerLM`: int32 tokens [batch, length] -> float32 logits
    [batch, length, vocab_size].
  """
  config = model_block
  if not isinstance(config, (BANConfig, TransformerConfig)):
    config = make_config(model_block)
  model = next(m for c, m, _ in _MODELS.values() if isinstance(config, c))
  return model(vocab_size=vocab_size, config=config)
