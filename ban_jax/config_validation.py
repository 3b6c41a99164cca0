"""Checks a config whole, before anything is read or written, so bad values fail in one line.

Each block's choices and ranges live beside the code that implements them (the model configs,
the selection strategies, the data sources); this module asks each and turns what they raise
into a `UserError` that the CLI prints as one line.
"""

import ml_collections

from ban_jax import models
from ban_jax.data import sources
from ban_jax.errors import UserError
from ban_jax.models.common import DTYPES
from ban_jax.training import divergence
from ban_jax.training import selection

BLOCKS = ("data", "model", "train", "optimizer", "eval", "checkpoint", "mesh", "wells")
CHOICES = {
    "data.source": sources.SOURCES,
    "data.tokenizer": sources.TOKENIZERS,
    "model.dtype": DTYPES,
}
POSITIVE = ("data.seq_len", "train.steps", "train.batch_size", "train.log_every",
            "eval.every_steps", "eval.batch_size", "checkpoint.every_steps", "checkpoint.keep")


def _show(value) -> str:
  """A value on one line (a ConfigDict's repr spans several)."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return repr(value)[:200]


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> models.ModelConfig:
  """Raises UserError naming the first bad field and what would be valid.

  Returns:
    The model's config dataclass, built once here from `config.model`.
  """
  for block in BLOCKS:
    if block not in config:
      raise UserError(f"config has no '{block}' block; start from configs/wiki.py.")
  for key, choices in CHOICES.items():
    value = _get(config, key)
    if value not in choices:
      raise UserError(f"{key}={_show(value)} is not one of {choices}.")
  for key in POSITIVE:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise UserError(f"{key}={_show(value)} must be a positive integer.")
  policy = config.train.get("nan_policy", "stop")
  if policy not in divergence.NAN_POLICIES:
    raise UserError(f"train.nan_policy={_show(policy)} is not one of {divergence.NAN_POLICIES}.")
  rollbacks = config.train.get("max_rollbacks", 3)
  if isinstance(rollbacks, bool) or not isinstance(rollbacks, int) or rollbacks < 0:
    raise UserError(f"train.max_rollbacks={_show(rollbacks)} must be a non-negative integer.")
  profile_steps = config.train.get("profile_steps", 0)
  if not isinstance(profile_steps, int) or profile_steps < 0:
    raise UserError(f"train.profile_steps={_show(profile_steps)} must be a non-negative integer "
                    "(steps to trace; 0 for none).")
  refresh = config.train.get("lock_refresh_s", 60.0)
  if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or not refresh > 0:
    raise UserError(f"train.lock_refresh_s={_show(refresh)} must be a positive number of seconds "
                    "(how often a run refreshes its workdir lock).")
  if config.optimizer.warmup_steps >= config.train.steps:
    raise UserError(f"optimizer.warmup_steps={config.optimizer.warmup_steps} must be smaller "
                    f"than train.steps={config.train.steps} (the schedule would never decay); "
                    f"e.g. --config.optimizer.warmup_steps={config.train.steps // 10}.")
  try:
    model_config = models.make_config(config.model)
    selection.check_config(config.wells)
  except (ValueError, TypeError) as e:
    # One line: a ConfigDict value in the message prints over several.
    raise UserError(" ".join(str(e).split())) from e
  return model_config
