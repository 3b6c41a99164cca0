"""Model factory: `get_model(config.model, vocab_size)` by `config.model.name`."""

import importlib

import flax.linen as nn
import ml_collections

from ban_jax.errors import UserError

# name -> module holding `from_config(model_config, vocab_size)`; imported on demand.
REGISTRY = {
    "transformer": "ban_jax.models.transformer",
    "ban": "ban_jax.models.ban",
}


def get_model(cfg: ml_collections.ConfigDict, vocab_size: int) -> nn.Module:
  """Builds the language model named by `cfg.name` (see REGISTRY)."""
  if cfg.name not in REGISTRY:
    raise UserError(f"model.name={cfg.name!r} is not one of {sorted(REGISTRY)}.")
  return importlib.import_module(REGISTRY[cfg.name]).from_config(cfg, vocab_size)
