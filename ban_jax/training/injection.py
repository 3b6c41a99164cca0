"""Extra updates and batch selection driven from the device: Gravity Wells and its controls.

Modes (`config.wells.mode`):
  * "wells"     seed 000 §5: wells form from the loss signal (`ban_jax.training.wells`); each
                step a well batch, drawn in proportion to strength, gets one extra update;
                strengths decay at every epoch end.
  * "uniform"   the control for wells' extra compute: the extra update uses a uniformly random
                batch, in the steps listed by `wells.inject_steps` (a wells run's injection
                log) or in every step.
  * "loss_rank" online batch selection by loss rank (Loshchilov & Hutter, 2015): the regular
                batch itself is drawn with probability falling exponentially in the rank of each
                example's last seen loss (selection pressure `rank_pressure` between the first
                and the last rank); no extra updates.

Indices are sampled on the device and only they travel to the host, which reads the windows by
index (random access through the grain source). The batch drawn at step s is used at step s+2:
a two-slot queue in the train state holds the pending draws, so the host fetches step s+1's
batch while step s runs, and a resumed run continues with exactly the pending batches.
"""

import math
from typing import Any

import flax.struct
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ban_jax.errors import UserError
from ban_jax.training import steps as steps_lib
from ban_jax.training import wells as wells_lib
from ban_jax.training.state import TrainState

MODES = ("off", "wells", "uniform", "loss_rank")


@flax.struct.dataclass
class Runtime:
  """The part of the train state the selection modes own.

  Attributes:
    wells: WellState (mode "wells"), else None.
    last_loss: float32 [num_examples], each example's last seen loss, +inf when unseen
      (mode "loss_rank"), else None.
    queue_index: int32 [2, batch]: draws pending for the next two steps.
    queue_active: bool [2]: whether each pending draw is to be used.
  """
  wells: Any
  last_loss: Any
  queue_index: jax.Array
  queue_active: jax.Array


def init(cfg: ml_collections.ConfigDict, num_examples: int, batch_size: int,
         rng: jax.Array) -> Runtime:
  """The runtime at step 0; loss_rank's first two batches are uniformly random."""
  wells = None
  last_loss = None
  if cfg.mode == "wells":
    size = num_examples if cfg.storage == "dense" else cfg.capacity
    wells = wells_lib.init(size, storage=cfg.storage, per_example=cfg.per_example)
  if cfg.mode == "loss_rank":
    last_loss = jnp.full([num_examples], jnp.inf, jnp.float32)
  index = jax.random.randint(rng, [2, batch_size], 0, num_examples, jnp.int32)
  active = jnp.full([2], cfg.mode == "loss_rank")
  return Runtime(wells, last_loss, index, active)


def load_inject_steps(path: str, total_steps: int) -> np.ndarray | None:
  """bool [total_steps + 2]: the steps whose extra update is active (None: every step)."""
  if not path:
    return None
  import json  # pylint: disable=g-import-not-at-top
  try:
    with open(path) as f:
      steps = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"wells.inject_steps={path} is not a readable JSON list of steps ({e}).") from e
  flags = np.zeros([total_steps + 2], bool)
  flags[[s for s in steps if 0 <= s < total_steps + 2]] = True
  return flags


def _rank_draw(key, last_loss, batch_size, pressure):
  """Indices drawn with p(rank r) ∝ pressure^(−r/N); rank 0 = highest loss (unseen first)."""
  n = last_loss.shape[0]
  k1, k2 = jax.random.split(key)
  tiebreak = jax.random.uniform(k1, [n])
  order = jnp.lexsort((tiebreak, -last_loss))     # by loss descending, ties at random
  logits = -math.log(pressure) * jnp.arange(n, dtype=jnp.float32) / n
  ranks = jax.random.categorical(k2, logits, shape=[batch_size])
  return order[ranks].astype(jnp.int32)


def train_step(state: TrainState, batch, extra, *, model, tx, schedule, z_loss, token_bytes,
               cfg: ml_collections.ConfigDict, steps_per_epoch: int, num_examples: int,
               inject_flags: np.ndarray | None):
  """One step with the configured selection mode.

  Args:
    state: TrainState whose `wells` is a Runtime.
    batch: the regular batch (for loss_rank: the batch drawn two steps earlier).
    extra: the batch of queue slot 0 (wells/uniform); ignored when that slot is inactive.

  Returns:
    (state, metrics, draw): `draw` = (index int32 [batch], active bool []) just sampled, to be
    used two steps later (the host fetches it; the state keeps it in its queue).
  """
  rt: Runtime = state.wells
  step = state.step
  key = jax.random.fold_in(state.rng, step)
  loss_grad = jax.value_and_grad(steps_lib.loss_fn, has_aux=True)
  kw = dict(model=model, z_loss=z_loss, token_bytes=token_bytes)

  (_, (metrics, example_loss)), grads = loss_grad(state.params, batch,
                                                  jax.random.fold_in(key, 0), **kw)
  updates, opt_state = tx.update(grads, state.opt_state, state.params, train_step=step)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads), learning_rate=schedule(step))

  active = rt.queue_active[0] if cfg.mode in ("wells", "uniform") else jnp.array(False)

  def extra_update(carry):
    params, opt_state = carry
    (_, (m, _)), g = loss_grad(params, extra, jax.random.fold_in(key, 1), **kw)
    u, opt_state = tx.update(g, opt_state, params, train_step=step)
    return optax.apply_updates(params, u), opt_state, m["loss"]

  params, opt_state, extra_loss = lax.cond(
      active, extra_update, lambda c: (*c, jnp.float32(jnp.nan)), (params, opt_state))
  metrics["injected"] = active.astype(jnp.float32)
  metrics["grad_evals"] = 1.0 + metrics["injected"]
  if cfg.mode in ("wells", "uniform"):
    metrics["extra_loss"] = extra_loss

  wells = rt.wells
  last_loss = rt.last_loss
  draw_key = jax.random.fold_in(key, 2)
  if cfg.mode == "wells":
    loss_signal = example_loss if cfg.per_example else metrics["loss"]
    wells, wm = wells_lib.update(wells, batch["index"], loss_signal, threshold=cfg.threshold,
                                 gain=cfg.gain, ema_decay=cfg.ema_decay,
                                 warmup_steps=cfg.warmup_steps)
    epoch_end = (step + 1) % steps_per_epoch == 0
    wells = lax.cond(epoch_end,
                     lambda w: wells_lib.decay(w, cfg.decay, cfg.baseline, cfg.floor),
                     lambda w: w, wells)
    draw_index, draw_active = wells_lib.sample(wells, draw_key, batch["index"].shape[0])
    summary = wells_lib.summary(wells)
    metrics.update({f"wells/{k}": v for k, v in wm.items()})
    metrics.update({f"wells/{k}": v for k, v in summary.items() if k != "histogram"})
  elif cfg.mode == "uniform":
    draw_index = jax.random.randint(draw_key, batch["index"].shape, 0, num_examples, jnp.int32)
    if inject_flags is None:
      draw_active = jnp.array(True)
    else:
      draw_active = jnp.asarray(inject_flags)[step + 2]
  else:  # loss_rank
    last_loss = last_loss.at[batch["index"]].set(example_loss)
    draw_index = _rank_draw(draw_key, last_loss, batch["index"].shape[0], cfg.rank_pressure)
    draw_active = jnp.array(True)
    metrics["rank/seen_fraction"] = jnp.mean(jnp.isfinite(last_loss).astype(jnp.float32))

  rt = Runtime(wells=wells, last_loss=last_loss,
               queue_index=jnp.stack([rt.queue_index[1], draw_index]),
               queue_active=jnp.stack([rt.queue_active[1], draw_active]))
  state = state.replace(step=step + 1, params=params, opt_state=opt_state, wells=rt)
  return state, metrics, (draw_index, draw_active)


class HostQueue:
  """The host's side of the queue: turns pending device draws into batches read by index."""

  def __init__(self, state: TrainState, mode: str, dataset):
    index, active = jax.device_get((state.wells.queue_index, state.wells.queue_active))
    self._pending = [(index[0], active[0]), (index[1], active[1])]
    self._mode = mode
    self._data = dataset
    self._zeros = None

  def next(self, data_iterator):
    """(regular batch, extra batch) for the coming step, as host numpy dicts."""
    index, active = self._pending.pop(0)
    # Drawn two steps back: waiting for it does not wait for the step just dispatched.
    index, active = np.asarray(index), bool(np.asarray(active))
    # Draws are global (replicated); each process reads only its rows.
    index = np.asarray(index).reshape(jax.process_count(), -1)[jax.process_index()]
    if self._mode == "loss_rank":
      batch = self._data.fetch(index)
      return batch, batch
    batch = next(data_iterator)
    if active:
      return batch, self._data.fetch(index)
    if self._zeros is None:
      self._zeros = {k: np.zeros_like(v) for k, v in batch.items()}
    return batch, self._zeros

  def push(self, draw):
    self._pending.append(draw)


class StrengthTrace:
  """Well strengths over training, for the trajectory plot (process 0 keeps it)."""

  def __init__(self, top: int = 12):
    self.steps, self.snapshots = [], []
    self._top = top

  def record(self, step: int, state: TrainState) -> np.ndarray:
    """Keeps the wells alive at `step`; returns their strengths (float [active])."""
    w = state.wells.wells
    strength = np.asarray(jax.device_get(w.strength))
    ids = (np.arange(len(strength)) if w.ids is None
           else np.asarray(jax.device_get(w.ids)))
    keep = strength > 0
    self.steps.append(step)
    self.snapshots.append(dict(zip(ids[keep].tolist(), strength[keep].tolist())))
    return strength[keep]

  def save(self, path: str, steps_per_epoch: int):
    from ban_jax.training import plots  # pylint: disable=g-import-not-at-top
    plots.well_strengths(self.steps, self.snapshots, path, top=self._top,
                         steps_per_epoch=steps_per_epoch)
