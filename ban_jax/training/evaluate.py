"""Bits per byte on the validation split and the held-out text."""

import functools
import math

import jax
import ml_collections

from ban_jax.data import pipeline
from ban_jax.parallel import mesh as mesh_lib
from ban_jax.training import steps


def evaluate(eval_fn, params, split: pipeline.Split, batch_size: int, max_batches: int,
             sharding) -> dict[str, float]:
  """bits/byte and loss (nats/token) over a split."""
  totals = {"nats": 0.0, "bytes": 0.0, "tokens": 0.0}
  for batch in pipeline.eval_batches(split, batch_size, max_batches):
    local = mesh_lib.process_slice(batch)
    sums = jax.device_get(eval_fn(params, mesh_lib.global_batch(local, sharding)))
    for k in totals:
      totals[k] += float(sums[k])
  return {"bits_per_byte": totals["nats"] / math.log(2) / max(totals["bytes"], 1.0),
          "loss": totals["nats"] / max(totals["tokens"], 1.0)}


class Evaluator:
  """params -> {"eval/...": ..., "heldout/...": ...} for one run's splits."""

  def __init__(self, plan, validation: pipeline.Split, heldout: pipeline.Split | None,
               cfg: ml_collections.ConfigDict):
    self._fn = jax.jit(functools.partial(steps.eval_step, model=plan.model,
                                         token_bytes=plan.step_kw["token_bytes"]),
                       in_shardings=(plan.state_sharding.params, plan.batch_sharding))
    self._sharding = plan.batch_sharding
    self._splits = [("eval", validation, cfg.max_batches)]
    if heldout is not None:
      self._splits.append(("heldout", heldout, cfg.heldout_max_batches))
    self._batch_size = cfg.batch_size

  def __call__(self, params) -> dict[str, float]:
    results = {}
    for prefix, split, max_batches in self._splits:
      results.update({f"{prefix}/{k}": v for k, v in evaluate(
          self._fn, params, split, self._batch_size, max_batches, self._sharding).items()})
    return results
