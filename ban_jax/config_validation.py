"""Checks a config before anything is read or written, so bad values fail in one clear line."""

import ml_collections

from ban_jax.errors import UserError

CHOICES = {
    "data.source": ("bundled", "dump", "tfds"),
    "data.tokenizer": ("bytes", "spm"),
    "model.attention": ("dot", "gravity", "inverse_square"),
    "model.positional": ("rope", "alibi", "power_law", "none"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "wells.mode": ("off", "wells", "uniform", "loss_rank"),
    "wells.storage": ("dense", "table"),
}
POSITIVE = ("data.seq_len", "train.steps", "train.batch_size", "train.log_every",
            "eval.every_steps", "eval.batch_size", "checkpoint.every_steps", "checkpoint.keep")
BLOCKS = ("data", "model", "train", "optimizer", "eval", "checkpoint", "mesh", "wells")


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict):
  """Raises UserError naming the first bad field and what would be valid."""
  for block in BLOCKS:
    if block not in config:
      raise UserError(f"config has no '{block}' block; start from configs/wiki.py.")
  for key, choices in CHOICES.items():
    try:
      value = _get(config, key)
    except KeyError:
      continue  # a model that does not use the field
    if value not in choices:
      raise UserError(f"{key}={value!r} is not one of {choices}.")
  for key in POSITIVE:
    value = _get(config, key)
    if not isinstance(value, int) or value <= 0:
      raise UserError(f"{key}={value!r} must be a positive integer.")
  model = config.model
  if "num_heads" in model and "num_kv_heads" in model and (
      model.num_kv_heads <= 0 or model.num_heads % model.num_kv_heads):
    raise UserError(f"model.num_heads={model.num_heads} must be a multiple of "
                    f"model.num_kv_heads={model.num_kv_heads}.")
  if config.optimizer.warmup_steps >= config.train.steps:
    raise UserError(f"optimizer.warmup_steps={config.optimizer.warmup_steps} must be smaller "
                    f"than train.steps={config.train.steps} (the schedule would never decay); "
                    f"e.g. --config.optimizer.warmup_steps={config.train.steps // 10}.")
  wells = config.wells
  if wells.mode != "off":
    for key, lo, hi in (("threshold", 0.0, float("inf")), ("gain", 0.0, float("inf")),
                        ("ema_decay", 0.0, 0.999999), ("decay", 0.0, 1.0),
                        ("baseline", 0.0, float("inf")), ("floor", 0.0, float("inf"))):
      if not lo <= wells[key] <= hi:
        raise UserError(f"wells.{key}={wells[key]} must lie in [{lo}, {hi}].")
    if wells.per_example and wells.storage != "dense":
      raise UserError("wells.per_example=True needs wells.storage='dense' (it keeps each "
                      "example's last loss).")
    if wells.mode == "loss_rank" and wells.rank_pressure < 1:
      raise UserError(f"wells.rank_pressure={wells.rank_pressure} must be >= 1.")
