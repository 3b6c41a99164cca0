"""Bits per byte on the validation split and the held-out text, beside gzip/bz2/xz's."""

import math
import time

from absl import logging
import jax
import ml_collections

from ban_jax.data import pipeline
from ban_jax.data import yardsticks
from ban_jax.parallel import mesh as mesh_lib


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


def yardstick_metrics(split: pipeline.Split, batch_size: int, max_batches: int,
                      tokenizer) -> dict[str, float]:
  """{"<compressor>_bits_per_byte": ...} on exactly the bytes `evaluate` scores (host only)."""
  data = pipeline.scored_bytes(split, batch_size, max_batches, tokenizer)
  return {f"{name}_bits_per_byte": v for name, v in yardsticks.bits_per_byte(data).items()}


class Evaluator:
  """params -> {"eval/...": ..., "heldout/...": ...} for one run's splits.

  With a tokenizer, each split's results also hold gzip/bz2/xz bits/byte of the same bytes.
  """

  def __init__(self, plan, validation: pipeline.Split, heldout: pipeline.Split | None,
               cfg: ml_collections.ConfigDict, tokenizer=None):
    self._fn = plan.jit_eval_step()
    self._sharding = plan.batch_sharding
    self._splits = [("eval", validation, cfg.max_batches)]
    if heldout is not None:
      self._splits.append(("heldout", heldout, cfg.heldout_max_batches))
    self._batch_size = cfg.batch_size
    # The splits and the batches chosen from them are fixed for the run: compress once.
    self._yardsticks = {}
    if tokenizer is not None:
      start = time.perf_counter()
      for prefix, split, max_batches in self._splits:
        self._yardsticks.update({f"{prefix}/{k}": v for k, v in yardstick_metrics(
            split, self._batch_size, max_batches, tokenizer).items()})
      logging.info("compressor yardsticks (%.1fs): %s", time.perf_counter() - start,
                   ", ".join(f"{k} {v:.4f}" for k, v in sorted(self._yardsticks.items())))

  @property
  def yardsticks(self) -> dict[str, float]:
    """{"eval/gzip_bits_per_byte": ..., ...}: the same in every call's results."""
    return dict(self._yardsticks)

  def __call__(self, params) -> dict[str, float]:
    results = {}
    for prefix, split, max_batches in self._splits:
      results.update({f"{prefix}/{k}": v for k, v in evaluate(
          self._fn, params, split, self._batch_size, max_batches, self._sharding).items()})
    results.update(self._yardsticks)
    return results
