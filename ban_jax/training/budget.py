"""What a run will cost before it starts: epochs over its data, extra updates, FLOPs.

`train_and_evaluate` logs this plan and writes it to `plan.json`; tests and benchmarks call
the same pure functions with a config and a window count, without training.
"""

from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from ban_jax.errors import UserError
from ban_jax.training import selection
from ban_jax.training import steps

# More passes than this over the training windows and the model mostly memorises them.
MAX_EPOCHS = 10


def planned_epochs(config: ml_collections.ConfigDict, num_train_windows: int) -> float:
  """train.steps / steps per epoch of the main data stream (selection's extra updates excluded).

  Args:
    config: a run config (train.steps, train.batch_size).
    num_train_windows: windows of data.seq_len tokens in the train split:
      `len(build_data(config).train.split.windows)`, or without packing,
      `(num_tokens - 1) // config.data.seq_len` for a split of `num_tokens` tokens counted with
      each document's BOS and EOS (`split.windows.num_tokens`).
  """
  per_epoch = num_train_windows // config.train.batch_size
  if per_epoch == 0:
    raise UserError(f"train.batch_size={config.train.batch_size} exceeds the "
                    f"{num_train_windows} training windows; lower the batch size or "
                    "data.seq_len.")
  return config.train.steps / per_epoch


def _extra_updates(config: ml_collections.ConfigDict, strategy: selection.Strategy
                   ) -> tuple[int, str]:
  """(most extra updates, a sentence), as the selection strategy states them."""
  return (config.train.steps if strategy.uses_extra_batch else 0), strategy.extra_note


def analytic_flops(config: ml_collections.ConfigDict, num_params: int) -> float:
  """Training FLOPs per step, 6·params·tokens + 6·layers·seq_len·(heads·head_dim)·tokens.

  Kaplan et al.'s estimate (forward 2N + 2·layers·L·d_attn per token, backward twice that);
  BAN's branches and attractor steps are only in it through their parameters.
  """
  m, tokens = config.model, config.train.batch_size * config.data.seq_len
  attention = 6 * m.num_layers * config.data.seq_len * m.num_heads * m.head_dim
  return float(6 * num_params * tokens + attention * tokens)


def train_step_flops(plan, config: ml_collections.ConfigDict,
                     num_params: int) -> tuple[float, str]:
  """(FLOPs of one regular update, how they were counted).

  XLA's cost analysis of the lowered (not compiled) plain train step: it costs a trace, no
  compile. Where the backend only analyses compiled code (GPU), the analytic estimate instead,
  since a second compile of the step would cost more than the number is worth.
  """
  b, length = config.train.batch_size, config.data.seq_len
  tokens = jax.ShapeDtypeStruct((b, length), jnp.int32)
  batch = dict(inputs=tokens, targets=tokens, segment_ids=tokens, positions=tokens,
               weights=jax.ShapeDtypeStruct((b, length), jnp.float32),
               index=jax.ShapeDtypeStruct((b,), jnp.int32))
  try:
    cost = plan.jit_step(steps.train_step).lower(plan.abstract, batch).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and cost.get("flops", 0) > 0:
      return float(cost["flops"]), "XLA cost analysis of the lowered train step"
  except Exception as e:  # pylint: disable=broad-except
    # Only a number for the log: never let counting stop the run.
    logging.info("XLA cost analysis unavailable (%s); estimating FLOPs.", e)
  return analytic_flops(config, num_params), "analytic 6·params·tokens + attention"


def plan_summary(config: ml_collections.ConfigDict, num_train_windows: int, *,
                 strategy: selection.Strategy | None = None, num_params: int | None = None,
                 flops_per_step: float | None = None, flops_source: str = "") -> dict[str, Any]:
  """What a run will do, from its config and its data's size alone (pure; no training).

  Args:
    config: the run config.
    num_train_windows: see `planned_epochs`.
    strategy: the run's selection strategy (None: made from config.wells).
    num_params, flops_per_step, flops_source: filled in when known (None: left out).

  Returns:
    {"tokens_per_epoch", "steps_per_epoch", "tokens_per_step", "steps", "planned_epochs",
     "extra_updates_max", "extra_updates", "num_params", "flops_per_step", "flops_source"}.
  """
  tokens_per_step = config.train.batch_size * config.data.seq_len
  per_epoch = num_train_windows // config.train.batch_size
  if strategy is None:
    strategy = selection.from_config(config.wells, num_examples=num_train_windows,
                                     steps_per_epoch=max(per_epoch, 1),
                                     total_steps=config.train.steps)
  extra_max, extra_text = _extra_updates(config, strategy)
  summary = {
      "steps": config.train.steps,
      "steps_per_epoch": per_epoch,
      "tokens_per_step": tokens_per_step,
      "tokens_per_epoch": per_epoch * tokens_per_step,
      "planned_epochs": planned_epochs(config, num_train_windows),
      "extra_updates_max": extra_max,
      "extra_updates": extra_text,
  }
  if num_params is not None:
    summary["num_params"] = int(num_params)
  if flops_per_step is not None:
    summary.update(flops_per_step=float(flops_per_step), flops_source=flops_source)
  return summary


def announce(plan, config: ml_collections.ConfigDict, strategy: selection.Strategy,
             num_train_windows: int, num_params: int) -> dict[str, Any]:
  """Counts the step's FLOPs, logs the run's plan and returns it (see `plan_summary`)."""
  flops, source = train_step_flops(plan, config, num_params)
  summary = plan_summary(config, num_train_windows, strategy=strategy, num_params=num_params,
                         flops_per_step=flops, flops_source=source)
  log_plan(summary)
  return summary


def log_plan(summary: dict[str, Any]):
  """One info block with the plan; one warning if it trains for more than MAX_EPOCHS epochs."""
  lines = [f"plan: {summary['steps']:,} steps of {summary['tokens_per_step']:,} tokens",
           f"  tokens per epoch: {summary['tokens_per_epoch']:,} "
           f"({summary['steps_per_epoch']:,} steps)",
           f"  planned epochs: {summary['planned_epochs']:.2f} (main data stream only)",
           f"  extra updates: {summary['extra_updates']}"]
  if "num_params" in summary:
    lines.append(f"  parameters: {summary['num_params']:,}")
  if "flops_per_step" in summary:
    lines.append(f"  training FLOPs per step: {summary['flops_per_step']:.3e} "
                 f"({summary['flops_source']})")
  logging.info("\n".join(lines))
  epochs = summary["planned_epochs"]
  if epochs > MAX_EPOCHS:
    logging.warning("this run makes %.1f passes over the training data (more than %d): it will "
                    "mostly memorise it. Lower train.steps, or train.batch_size × data.seq_len, "
                    "or train on more data.", epochs, MAX_EPOCHS)
