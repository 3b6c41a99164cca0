"""Before a run trusts the fused TPU attention kernel: one batch against the XLA path.

The Mosaic TPU kernel has been compiled for TPUs but never run on one (docs/design.md §5). So
when "auto" would use it (a TPU, the gravity op in the model), the run's first act is to score
one validation batch twice, with the kernel and with `implementation="xla"`, from the state it
starts from. If the two losses differ by more than the activations' rounding allows, it logs a
warning and trains on the XLA path (`model.attention_options.implementation=xla` is the same
switch by hand).
"""

import copy

from absl import logging
import jax
import ml_collections

from ban_jax.data import pipeline
from ban_jax.ops.gravity import platform
from ban_jax.training import evaluate

# Relative difference of the batch's loss allowed between the two paths.
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 2e-2}


def uses_kernel(config: ml_collections.ConfigDict) -> bool:
  """Whether "auto" sends this model's attention to the fused kernel on this platform."""
  m = config.model
  impl = m.get("attention_options", {}).get("implementation", "auto")
  if impl != "auto" or platform.current() != "tpu":
    return False
  # The layer sends plain dot-product attention (RoPE or none, no tags) to
  # jax.nn.dot_product_attention, not to the gravity op (layers/attention.py).
  return not (m.attention == "dot" and not m.tagging and m.positional in ("rope", "none"))


def with_xla(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the attention op on the XLA path (its other attention options kept)."""
  config = copy.deepcopy(config)
  with config.unlocked():
    options = dict(config.model.get("attention_options", {}))
    options["implementation"] = "xla"
    config.model.attention_options = ml_collections.ConfigDict(options)
  return config


def compare(plan, xla_plan, params, split: pipeline.Split, batch_size: int) -> dict:
  """Both paths' loss on the split's first batch: {"kernel", "xla", "relative"}."""
  losses = {}
  for name, p in (("kernel", plan), ("xla", xla_plan)):
    losses[name] = evaluate.evaluate(p.jit_eval_step(), params, split, batch_size, 1,
                                     p.batch_sharding)["loss"]
  losses["relative"] = abs(losses["kernel"] - losses["xla"]) / max(abs(losses["xla"]), 1e-12)
  return losses


def check_or_fall_back(config, plan, xla_plan, params, split, batch_size):
  """(config, plan) to train with: the kernel's if it agrees with XLA on one batch, else XLA's.

  `plan` and `xla_plan` are `setup.build` of `config` and of `with_xla(config)`.
  """
  losses = compare(plan, xla_plan, params, split, batch_size)
  tolerance = TOLERANCE.get(config.model.dtype, 2e-2)
  if losses["relative"] <= tolerance:
    logging.info("fused attention kernel checked against XLA on one batch: loss %.6f vs %.6f "
                 "(relative %.1e)", losses["kernel"], losses["xla"], losses["relative"])
    return config, plan
  logging.warning(
      "the fused attention kernel disagrees with the XLA path on this %s (loss %.6f vs %.6f, "
      "relative %.1e > %.0e): training on the XLA path. Please report it; "
      "--config.model.attention_options.implementation=xla skips this check.",
      jax.devices()[0].device_kind, losses["kernel"], losses["xla"], losses["relative"],
      tolerance)
  return with_xla(config), xla_plan

