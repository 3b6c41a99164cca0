"""What to train on next: the batch-selection strategies behind `config.wells.mode`.

  * "off"       the data order alone.
  * "wells"     Gravity Wells ("Information Gravity"): wells form from the loss signal
                (`ban_jax.training.wells`); a well batch, drawn in proportion to strength, gets
                one extra update in every step once wells exist (`wells.draw="always"`) or only
                in the `wells.draw_window` steps after a well formed or grew ("recent");
                strengths decay at every epoch end.
  * "uniform"   the control for wells' extra compute: the extra update uses a uniformly random
                batch, in the steps listed by `wells.inject_steps` (a wells run's injection log)
                or in every step.
  * "loss_rank" online batch selection by loss rank (Loshchilov & Hutter, 2015): the regular
                batch itself is drawn with probability falling exponentially in the rank of each
                example's last seen loss (selection pressure `rank_pressure` between the first
                and the last rank); no extra updates.

A strategy is chosen once, by `from_config`. The step asks it for its selection state at step 0
(`init`) and, after each update, for the new selection state and the next draw (`after_step`);
the host asks it which batches a step takes (`draws`, `uses_extra_batch`,
`replaces_regular_batch`). Draws travel through the two-slot queue of `training/queue.py`.
"""

import dataclasses
import json
import math
import os
from typing import Any, ClassVar

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ban_jax.errors import UserError
from ban_jax.training import plots
from ban_jax.training import wells as wells_lib
from ban_jax.training import workdir as workdir_lib

MODES = ("off", "wells", "uniform", "loss_rank")

# (field, low, high) of the `wells` block, checked whenever a strategy is on.
_RANGES = (("threshold", 0.0, math.inf), ("gain", 0.0, math.inf), ("ema_decay", 0.0, 0.999999),
           ("decay", 0.0, 1.0), ("baseline", 0.0, math.inf), ("floor", 0.0, math.inf))


def check_config(cfg: ml_collections.ConfigDict):
  """Raises ValueError naming the first bad field of the `wells` block and its valid values."""
  if cfg.mode not in MODES:
    raise ValueError(f"wells.mode={cfg.mode!r} is not one of {MODES}.")
  if cfg.storage not in wells_lib.STORAGES:
    raise ValueError(f"wells.storage={cfg.storage!r} is not one of {wells_lib.STORAGES}.")
  if cfg.mode == "off":
    return
  for key, lo, hi in _RANGES:
    if not lo <= cfg[key] <= hi:
      raise ValueError(f"wells.{key}={cfg[key]} must lie in [{lo}, {hi}].")
  if cfg.per_example and cfg.storage != "dense":
    raise ValueError("wells.per_example=True needs wells.storage='dense' (it keeps each "
                     "example's last loss).")
  if cfg.storage == "table" and (not isinstance(cfg.capacity, int) or cfg.capacity < 1):
    raise ValueError(f"wells.capacity={cfg.capacity!r} must be a positive integer.")
  if cfg.mode == "wells" and cfg.get("draw", "always") not in wells_lib.DRAW_RULES:
    raise ValueError(f"wells.draw={cfg.draw!r} is not one of {wells_lib.DRAW_RULES}.")
  window = cfg.get("draw_window", 1)
  if cfg.mode == "wells" and (isinstance(window, bool) or not isinstance(window, int)
                              or window < 1):
    raise ValueError(f"wells.draw_window={window!r} must be an integer >= 1.")
  if cfg.mode == "loss_rank" and cfg.rank_pressure < 1:
    raise ValueError(f"wells.rank_pressure={cfg.rank_pressure} must be >= 1.")


@dataclasses.dataclass(frozen=True, eq=False)
class Strategy:
  """What to train on next, and how to learn from the losses seen.

  Class attributes:
    draws: whether the strategy draws batches (through the queue) at all.
    uses_extra_batch: whether a step may take an extra update on the drawn batch.
    replaces_regular_batch: whether the drawn batch replaces the data order's batch.
    keeps_strengths: whether the selection state is a WellState (strengths worth plotting).
  """
  draws: ClassVar[bool] = False
  uses_extra_batch: ClassVar[bool] = False
  replaces_regular_batch: ClassVar[bool] = False
  keeps_strengths: ClassVar[bool] = False
  # For the plan a run logs before training: what this strategy adds to the main data stream.
  extra_note: ClassVar[str] = "no extra updates"

  def init(self) -> Any:
    """The selection state at step 0 (a pytree of arrays, or None)."""
    return None

  def after_step(self, selection, *, step: jax.Array, index: jax.Array,
                 example_loss: jax.Array, batch_loss: jax.Array, key: jax.Array):
    """Learns from the losses of the regular batch and draws a batch for two steps later.

    Args:
      selection: the strategy's state.
      step: int32 [], the step just taken (0-based).
      index: int32 [batch], the regular batch's example indices.
      example_loss: float32 [batch], each example's mean token loss.
      batch_loss: float32 [], the batch's mean token loss.
      key: the PRNG key for the draw.

    Returns:
      (selection, draw_index int32 [batch], draw_active bool [], metrics).
    """
    raise NotImplementedError(f"{type(self).__name__} draws no batches.")


@dataclasses.dataclass(frozen=True, eq=False)
class Off(Strategy):
  """The data order alone: no selection state, no draws, the plain train step."""


@dataclasses.dataclass(frozen=True, eq=False)
class Wells(Strategy):
  """Gravity Wells: an extra update on a batch drawn in proportion to well strength."""
  draws: ClassVar[bool] = True
  uses_extra_batch: ClassVar[bool] = True
  extra_note: ClassVar[str] = ("wells add up to one extra update per step on a well batch, not "
                               "counted in epochs")
  keeps_strengths: ClassVar[bool] = True
  num_examples: int
  steps_per_epoch: int
  threshold: float
  gain: float
  ema_decay: float
  warmup_steps: int
  decay: float
  baseline: float
  floor: float
  storage: str
  capacity: int
  per_example: bool
  draw: str = "always"
  draw_window: int = 1

  def init(self) -> wells_lib.WellState:
    size = self.num_examples if self.storage == "dense" else self.capacity
    return wells_lib.init(size, storage=self.storage, per_example=self.per_example,
                          track_formation=self.draw == "recent")

  def after_step(self, selection, *, step, index, example_loss, batch_loss, key):
    loss_signal = example_loss if self.per_example else batch_loss
    wells, metrics = wells_lib.update(selection, index, loss_signal, threshold=self.threshold,
                                      gain=self.gain, ema_decay=self.ema_decay,
                                      warmup_steps=self.warmup_steps)
    epoch_end = (step + 1) % self.steps_per_epoch == 0
    wells = lax.cond(epoch_end,
                     lambda w: wells_lib.decay(w, self.decay, self.baseline, self.floor),
                     lambda w: w, wells)
    draw_index, _ = wells_lib.sample(wells, key, index.shape[0])
    draw_active = wells_lib.draw_due(wells, self.draw, self.draw_window)
    summary = {k: v for k, v in wells_lib.summary(wells).items() if k != "histogram"}
    metrics = {f"wells/{k}": v for k, v in {**metrics, **summary}.items()}
    return wells, draw_index, draw_active, metrics


@dataclasses.dataclass(frozen=True, eq=False)
class Uniform(Strategy):
  """An extra update on a uniformly random batch, in every step or in the listed steps."""
  draws: ClassVar[bool] = True
  uses_extra_batch: ClassVar[bool] = True
  extra_note: ClassVar[str] = ("uniform adds one extra update on a random batch per step (or in "
                               "the steps of wells.inject_steps), not counted in epochs")
  num_examples: int
  inject_flags: np.ndarray | None = None   # bool [total_steps + 2]; None: every step

  def after_step(self, selection, *, step, index, example_loss, batch_loss, key):
    draw_index = jax.random.randint(key, index.shape, 0, self.num_examples, jnp.int32)
    if self.inject_flags is None:
      draw_active = jnp.array(True)
    else:
      draw_active = jnp.asarray(self.inject_flags)[step + 2]
    return selection, draw_index, draw_active, {}


def rank_draw(key: jax.Array, last_loss: jax.Array, batch_size: int, pressure: float):
  """Indices drawn with p(rank r) ∝ pressure^(−r/N); rank 0 = highest loss (unseen first)."""
  n = last_loss.shape[0]
  k1, k2 = jax.random.split(key)
  tiebreak = jax.random.uniform(k1, [n])
  order = jnp.lexsort((tiebreak, -last_loss))     # by loss descending, ties at random
  logits = -math.log(pressure) * jnp.arange(n, dtype=jnp.float32) / n
  ranks = jax.random.categorical(k2, logits, shape=[batch_size])
  return order[ranks].astype(jnp.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class LossRank(Strategy):
  """Trains on batches drawn by the rank of each example's last seen loss.

  The selection state is float32 [num_examples], each example's last seen loss (+inf: unseen).
  """
  draws: ClassVar[bool] = True
  replaces_regular_batch: ClassVar[bool] = True
  extra_note: ClassVar[str] = ("no extra updates; loss_rank draws every batch by loss rank, so "
                               "epochs count batches, not passes over every window")
  num_examples: int
  pressure: float

  def init(self) -> jax.Array:
    return jnp.full([self.num_examples], jnp.inf, jnp.float32)

  def after_step(self, selection, *, step, index, example_loss, batch_loss, key):
    last_loss = selection.at[index].set(example_loss)
    draw_index = rank_draw(key, last_loss, index.shape[0], self.pressure)
    seen = jnp.mean(jnp.isfinite(last_loss).astype(jnp.float32))
    return last_loss, draw_index, jnp.array(True), {"rank/seen_fraction": seen}


def load_inject_steps(path: str, total_steps: int) -> np.ndarray | None:
  """bool [total_steps + 2]: the steps whose extra update is active (None: every step)."""
  if not path:
    return None
  try:
    with open(path) as f:
      steps = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"wells.inject_steps={path} is not a readable JSON list of steps ({e}).") from e
  flags = np.zeros([total_steps + 2], bool)
  flags[[s for s in steps if 0 <= s < total_steps + 2]] = True
  return flags


def from_config(cfg: ml_collections.ConfigDict, *, num_examples: int, steps_per_epoch: int,
                total_steps: int) -> Strategy:
  """The strategy of the `wells` config block, for a dataset of `num_examples` windows."""
  check_config(cfg)
  if cfg.mode == "wells":
    return Wells(num_examples=num_examples, steps_per_epoch=steps_per_epoch,
                 threshold=cfg.threshold, gain=cfg.gain, ema_decay=cfg.ema_decay,
                 warmup_steps=cfg.warmup_steps, decay=cfg.decay, baseline=cfg.baseline,
                 floor=cfg.floor, storage=cfg.storage, capacity=cfg.capacity,
                 per_example=cfg.per_example, draw=cfg.get("draw", "always"),
                 draw_window=cfg.get("draw_window", 1))
  if cfg.mode == "uniform":
    return Uniform(num_examples=num_examples,
                   inject_flags=load_inject_steps(cfg.inject_steps, total_steps))
  if cfg.mode == "loss_rank":
    return LossRank(num_examples=num_examples, pressure=cfg.rank_pressure)
  return Off()


class SelectionLog:
  """What selection leaves in the workdir: the steps that took an extra update, and a plot of
  the wells' strengths over training (process 0 keeps them)."""

  def __init__(self, strategy: Strategy, first_step: int, top: int = 12):
    self._strategy = strategy
    self._first_step = first_step
    self._top = top
    self.injected_steps = []
    self.steps, self.snapshots = [], []

  def record(self, done: int, host_metrics: list[dict], state) -> np.ndarray | None:
    """Notes the steps up to `done`; returns the live wells' strengths (None without wells)."""
    first = done - len(host_metrics)
    self.injected_steps += [first + i for i, m in enumerate(host_metrics) if m.get("injected")]
    if not self._strategy.keeps_strengths:
      return None
    wells = state.selection
    strength = np.asarray(jax.device_get(wells.strength))
    ids = np.asarray(jax.device_get(wells_lib.slot_ids(wells)))
    keep = strength > 0
    self.steps.append(done)
    self.snapshots.append(dict(zip(ids[keep].tolist(), strength[keep].tolist())))
    return strength[keep]

  def save(self, workdir: str, steps_per_epoch: int):
    if not self._strategy.draws:
      return
    # Steps (0-based) whose extra update ran: the uniform control replays this list.
    workdir_lib.write_json(
        os.path.join(workdir, f"injected_steps_from_{self._first_step}.json"),
        self.injected_steps)
    if self._strategy.keeps_strengths:
      plots.well_strengths(self.steps, self.snapshots,
                           os.path.join(workdir, "well_strengths.png"),
                           top=self._top, steps_per_epoch=steps_per_epoch)
