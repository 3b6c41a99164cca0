"""Gravity Wells ("Information Gravity"): the pure, jit-able core.

A well is a training example whose strength says how often it is re-injected for an extra
gradient update. Wells form from the loss signal: when the loss drops faster than a threshold,
the examples responsible are strengthened by `gain * drop_rate`; each step a well batch is drawn
in proportion to strength; at each epoch end strengths decay toward a baseline and the weakest
die.

Everything here is a pure function over a `WellState` pytree that lives inside the train state
(so orbax checkpoints it with the parameters). All leaves are jax arrays of static shape; the two
configuration choices (`storage`, `per_example`) are static pytree metadata, and fields a
configuration does not use are None (no leaves).

Storage:
  * "dense": one strength per dataset example, slot `i` is example `i`. Exact and cheap for the
    bundled sample (~1e4 examples).
  * "table": a fixed-capacity table of (example index, strength). A well for an index already in
    the table is strengthened in place; a new well takes a slot only if it is stronger than the
    weakest entry, which it then replaces (the table always holds the strongest `capacity`
    wells it has seen). An update costs O(capacity * log(batch)) (a binary search of every slot
    among the sorted batch, and a top-k of the weakest `batch` slots).

Drop signal:
  * batch (the paper's signal): the batch loss against a bias-corrected EMA of past batch
    losses, `drop_rate = (ema - loss) / ema`; every example of the batch gets the same increment.
  * per-example (beyond the paper, dense storage only): each example's own relative loss drop
    since it was last seen, `(last_loss[i] - loss[i]) / last_loss[i]`.

Typical use inside a jitted train step:

  wells, m = wells_lib.update(wells, batch["index"], loss, threshold=0.02, gain=1.0)
  well_idx, has_wells = wells_lib.sample(wells, key, batch_size)   # skip the extra step if False
  ...
  wells = wells_lib.decay(wells, 0.5)                               # at epoch ends
"""

import math
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from ban_jax.training import wells_table

STORAGES = ("dense", "table")
DRAW_RULES = ("always", "recent")
_NEVER = 2**30      # since_formed before any well formed; saturates there

# Bin edges of `summary`'s strength histogram: bin 0 is (-inf, e0), bin i is [e(i-1), e(i)),
# the last bin is [e_last, inf). Strength is in units of `gain * drop_rate`.
DEFAULT_HISTOGRAM_EDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@flax.struct.dataclass
class WellState:
  """Wells and the running loss estimate that forms them.

  Attributes:
    strength: float32 [slots]; 0 means no well in that slot. Dense: slots = num_examples and
      slot i is example i. Table: slots = capacity.
    ids: int32 [capacity] example index per slot, -1 when the slot is empty (table storage);
      None for dense storage (the slot is the index).
    last_loss: float32 [num_examples] each example's loss when last seen (per-example signal);
      None otherwise.
    seen: bool [num_examples] whether `last_loss` holds a value (per-example signal); None
      otherwise.
    since_formed: int32 [] steps since a well last formed or grew (0: in the last `update`),
      kept only for the "recent" draw rule (see `draw_due`); None otherwise, so that
      checkpoints of the "always" rule keep their tree.
    ema: float32 [] the EMA accumulator of the batch loss, not bias-corrected.
    count: int32 [] how many finite batch losses the EMA has absorbed.
    storage: "dense" or "table" (static).
    per_example: whether wells form from per-example drops (static).
  """
  strength: jax.Array
  ids: jax.Array | None
  last_loss: jax.Array | None
  seen: jax.Array | None
  ema: jax.Array
  count: jax.Array
  since_formed: jax.Array | None = None
  storage: str = flax.struct.field(pytree_node=False, default="dense")
  per_example: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def num_slots(self) -> int:
    return self.strength.shape[0]


def init(size: int, *, storage: str = "dense", per_example: bool = False,
         track_formation: bool = False) -> WellState:
  """An empty WellState.

  Args:
    size: the number of dataset examples (dense storage) or the table capacity (table storage).
    storage: "dense" or "table".
    per_example: form wells from each example's own loss drop since it was last seen (needs
      dense storage: it keeps a last loss per example).
    track_formation: keep the steps since a well last formed or grew (`since_formed`), which
      the "recent" draw rule (`draw_due`) needs.

  Returns:
    A WellState with no wells and no loss history.
  """
  if storage not in STORAGES:
    raise ValueError(f"wells storage {storage!r} is unknown; use one of {STORAGES}.")
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    error = ValueError if isinstance(size, int) and not isinstance(size, bool) else TypeError
    raise error(f"wells size must be a positive int (examples or table capacity), got "
                f"{size!r}; set it from the dataset size or config.wells.capacity.")
  if per_example and storage != "dense":
    raise ValueError("per-example wells keep a last loss per dataset example and need "
                    "storage='dense'; set wells.storage='dense' or turn per-example off.")
  # Unused fields are None, not zero-size arrays: orbax refuses to save zero-size arrays.
  return WellState(
      strength=jnp.zeros((size,), jnp.float32),
      ids=jnp.full((size,), -1, jnp.int32) if storage == "table" else None,
      last_loss=jnp.zeros((size,), jnp.float32) if per_example else None,
      seen=jnp.zeros((size,), jnp.bool_) if per_example else None,
      ema=jnp.zeros((), jnp.float32),
      count=jnp.zeros((), jnp.int32),
      # Large enough that no window counts a formation before the first one.
      since_formed=jnp.array(_NEVER, jnp.int32) if track_formation else None,
      storage=storage,
      per_example=per_example)


def _check_concrete(name: str, value: Any, lo: float, hi: float, hi_open: bool = False):
  """Raises ValueError when a Python number is outside [lo, hi] (or [lo, hi)); traced: no-op."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    bad = value < lo or value > hi or (hi_open and value >= hi) or math.isnan(value)
    if bad:
      interval = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
      raise ValueError(f"wells {name} must lie in {interval}, got {value}; fix config.wells.")


def _first_occurrence(indices: jax.Array, valid: jax.Array) -> jax.Array:
  """bool [batch]: valid and the first occurrence of its index in the batch.

  Duplicates in one batch count once, so an index is never strengthened twice (or inserted into
  the table twice) by one step.
  """
  key = jnp.where(valid, indices, -1)
  order = jnp.argsort(key, stable=True)
  s = key[order]
  first_sorted = jnp.concatenate([jnp.ones((1,), jnp.bool_), s[1:] != s[:-1]])
  return jnp.zeros_like(valid).at[order].set(first_sorted) & valid


def _bias_corrected_ema(ema: jax.Array, count: jax.Array, decay) -> jax.Array:
  correction = 1.0 - jnp.power(jnp.asarray(decay, jnp.float32), count.astype(jnp.float32))
  return jnp.where(count > 0, ema / jnp.maximum(correction, 1e-30), 0.0)


def _relative_drop(reference: jax.Array, loss: jax.Array) -> jax.Array:
  """(reference - loss) / reference, 0 where the reference is not positive."""
  ok = reference > 0
  return jnp.where(ok, (reference - loss) / jnp.where(ok, reference, 1.0), 0.0)


def update(wells: WellState, indices: jax.Array, loss: jax.Array, *, threshold, gain,
           ema_decay=0.9, warmup_steps: int | None = None):
  """Forms and strengthens wells from one training step's loss.

  Batch signal (the paper's): `drop_rate = (ema - loss) / ema`, the relative drop of this step's
  loss below the bias-corrected EMA of the previous steps' losses (the current loss is folded in
  afterwards, so a batch is not compared with itself). When `drop_rate > threshold`, every
  distinct valid index of the batch gains `gain * drop_rate`. No well forms until the EMA has
  absorbed `warmup_steps` losses (default: round(1 / (1 - ema_decay)), one EMA time constant).

  Per-example signal (`wells.per_example`): example i's drop rate is
  `(last_loss[i] - loss[i]) / last_loss[i]` against its own loss when it was last passed to
  `update`; past the threshold it gains `gain * drop_rate[i]`. An example seen for the first time
  only records its loss. The batch EMA is still kept (of the mean valid example loss), for
  logging only.

  Call it with the regular batch only, not with the extra well batch. A non-finite loss is
  ignored (no well forms, the EMA and last losses are left alone).

  Args:
    wells: the current WellState.
    indices: int [batch] dataset example indices; negative (padding) or, for dense storage,
      >= num_examples entries are ignored. An index repeated in a batch counts once.
    loss: float [] the batch loss, or float [batch] per-example losses (required by the
      per-example signal; the batch signal then uses their mean over valid entries). Losses must
      be positive (cross-entropy): the drop rate is relative.
    threshold: float >= 0; a well forms where drop_rate > threshold.
    gain: float >= 0; strength += gain * drop_rate.
    ema_decay: float in [0, 1); the EMA's decay per step.
    warmup_steps: int or None; see above.

  Returns:
    (new WellState, metrics) with float32 [] metrics: "formed" (1.0 if any well formed or grew
    this step), "num_strengthened" (distinct examples strengthened), "drop_rate" (the batch drop
    rate; per-example: the mean over the examples seen before, 0 if none), "loss_ema" (the
    bias-corrected EMA after this step).
  """
  _check_concrete("gain", gain, 0.0, math.inf)
  _check_concrete("threshold", threshold, 0.0, math.inf)
  _check_concrete("ema_decay", ema_decay, 0.0, 1.0, hi_open=True)
  indices = jnp.asarray(indices)
  loss = jnp.asarray(loss, jnp.float32)
  if indices.ndim != 1 or not jnp.issubdtype(indices.dtype, jnp.integer):
    error = ValueError if jnp.issubdtype(indices.dtype, jnp.integer) else TypeError
    raise error(f"wells.update needs integer example indices of shape [batch], got "
                f"{indices.dtype} {indices.shape}; pass the batch's dataset indices.")
  batch = indices.shape[0]
  if loss.shape not in ((), (batch,)):
    raise ValueError(f"wells.update needs loss of shape [] or [{batch}] (one per index), got "
                     f"{loss.shape}; pass the batch loss or the per-example losses.")
  if wells.per_example and loss.shape != (batch,):
    raise ValueError("per-example wells need per-example losses of shape [batch]; pass the "
                     "per-example loss (the per-token loss averaged per example).")
  if warmup_steps is None:
    if isinstance(ema_decay, (int, float)):
      warmup_steps = round(1.0 / (1.0 - ema_decay))
    else:
      raise ValueError("wells.update needs an explicit warmup_steps when ema_decay is traced.")
  indices = indices.astype(jnp.int32)
  valid = indices >= 0
  if wells.storage == "dense":
    valid &= indices < wells.num_slots
  first = _first_occurrence(indices, valid)
  gain = jnp.asarray(gain, jnp.float32)
  threshold = jnp.asarray(threshold, jnp.float32)

  # The batch loss and its running estimate.
  if loss.ndim == 0:
    batch_loss = loss
  else:
    w = (valid & jnp.isfinite(loss)).astype(jnp.float32)
    batch_loss = jnp.sum(jnp.where(w > 0, loss, 0.0)) / jnp.maximum(jnp.sum(w), 1.0)
    batch_loss = jnp.where(jnp.sum(w) > 0, batch_loss, jnp.nan)
  finite = jnp.isfinite(batch_loss)
  previous = _bias_corrected_ema(wells.ema, wells.count, ema_decay)
  batch_drop = jnp.where(finite & (wells.count > 0), _relative_drop(previous, batch_loss), 0.0)
  decay = jnp.asarray(ema_decay, jnp.float32)
  ema = jnp.where(finite, decay * wells.ema + (1.0 - decay) * batch_loss, wells.ema)
  count = wells.count + finite.astype(jnp.int32)

  last_loss, seen = wells.last_loss, wells.seen
  if wells.per_example:
    safe = jnp.where(valid, indices, 0)
    ok = first & jnp.isfinite(loss)
    was_seen = seen[safe] & ok
    drop = jnp.where(was_seen, _relative_drop(last_loss[safe], loss), 0.0)      # [batch]
    form = was_seen & (drop > threshold)
    write = jnp.where(ok, indices, wells.num_slots)                # out of range -> dropped
    last_loss = last_loss.at[write].set(loss, mode="drop")
    seen = seen.at[write].set(True, mode="drop")
    n_seen = jnp.sum(was_seen)
    drop_metric = jnp.sum(drop) / jnp.maximum(n_seen, 1).astype(jnp.float32)
  else:
    warm = finite & (wells.count >= warmup_steps)
    form = first & warm & (batch_drop > threshold)
    drop = jnp.broadcast_to(batch_drop, (batch,))
    drop_metric = batch_drop
  inc = jnp.where(form, gain * drop, 0.0)                          # [batch]
  form &= inc > 0         # only a real drop (with a positive gain) makes or grows a well

  if wells.storage == "dense":
    write = jnp.where(form, indices, wells.num_slots)
    strength = wells.strength.at[write].add(inc, mode="drop")
    ids = wells.ids
  else:
    strength, ids = wells_table.strengthen(wells.strength, wells.ids, indices, inc, form)

  n_formed = jnp.sum(form)
  since = wells.since_formed
  if since is not None:
    since = jnp.where(n_formed > 0, 0, jnp.minimum(since, _NEVER - 1) + 1).astype(jnp.int32)
  new = wells.replace(strength=strength, ids=ids, last_loss=last_loss, seen=seen, ema=ema,
                      count=count, since_formed=since)
  metrics = {
      "formed": (n_formed > 0).astype(jnp.float32),
      "num_strengthened": n_formed.astype(jnp.float32),
      "drop_rate": drop_metric.astype(jnp.float32),
      "loss_ema": _bias_corrected_ema(ema, count, ema_decay).astype(jnp.float32),
  }
  return new, metrics


def slot_ids(wells: WellState) -> jax.Array:
  """int32 [slots]: the example index held in each slot (-1: empty table slot)."""
  if wells.storage == "dense":
    return jnp.arange(wells.num_slots, dtype=jnp.int32)
  return wells.ids


def sample(wells: WellState, key: jax.Array, batch_size: int):
  """Draws a well batch, each index independently with probability strength / total strength.

  Draws are with replacement (so each draw's probability is exactly proportional to strength,
  and the shape is static even with fewer wells than `batch_size`). Inverse-CDF sampling:
  O(slots + batch_size * log(slots)), no [batch, slots] buffer. Jit it with
  `static_argnames="batch_size"`; it never syncs with the host.

  Args:
    wells: the current WellState.
    key: a PRNG key.
    batch_size: static int, the number of indices to draw.

  Returns:
    (indices, has_wells): int32 [batch_size] example indices and a bool [] that is False when
    there is no well yet; the indices are then all 0 and the caller must skip the extra update.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    error = (ValueError if isinstance(batch_size, int) and not isinstance(batch_size, bool)
             else TypeError)
    raise error(f"wells.sample needs a positive static int batch_size, got {batch_size!r}.")
  strength = jnp.maximum(wells.strength, 0.0)
  positive = strength > 0
  has_wells = jnp.any(positive)
  cdf = jnp.cumsum(strength)
  target = jax.random.uniform(key, (batch_size,), jnp.float32) * cdf[-1]
  slot = jnp.searchsorted(cdf, target, side="right")
  # Rounding can put a target at or past the total; the last well is the right answer then.
  last = wells.num_slots - 1 - jnp.argmax(positive[::-1])
  slot = jnp.minimum(slot, last)
  indices = jnp.where(has_wells, slot_ids(wells)[slot], 0).astype(jnp.int32)
  return indices, has_wells


def draw_due(wells: WellState, rule: str = "always", window: int = 1) -> jax.Array:
  """bool []: whether this step's well batch earns an extra update.

  * "always" (the first implementation's rule): whenever any well exists. Once a few wells
    have formed, nearly every step takes an extra update whatever the threshold.
  * "recent": only when a well formed or grew in the last `window` calls of `update`
    (`window=1`: in this step's). The threshold then governs compute: a batch whose loss drops
    by more than the threshold earns the extra update, drawn from all wells by strength.

  Args:
    wells: the WellState after this step's `update` (built with `track_formation=True` for
      "recent").
    rule: "always" or "recent".
    window: int >= 1, the steps a formation keeps drawing ("recent" only).

  Returns:
    bool []; `sample`'s has_wells is still needed (no well, no batch).
  """
  if rule not in DRAW_RULES:
    raise ValueError(f"wells draw rule {rule!r} is unknown; use one of {DRAW_RULES}.")
  has_wells = jnp.any(wells.strength > 0)
  if rule == "always":
    return has_wells
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise ValueError(f"wells draw window must be an int >= 1, got {window!r}; fix "
                     "config.wells.draw_window.")
  if wells.since_formed is None:
    raise ValueError("the 'recent' draw rule needs a WellState that tracks formation; build "
                     "it with wells.init(..., track_formation=True).")
  return has_wells & (wells.since_formed < window)


def decay(wells: WellState, factor, baseline=0.0, floor=1e-3) -> WellState:
  """Moves every existing well toward `baseline`; wells that fall below `floor` die.

  strength <- baseline + factor * (strength - baseline) for slots with strength > 0; a slot
  that is not a well stays empty (otherwise every example would become a well). A well whose
  new strength is below `floor` is removed (strength 0, and its table slot freed). With
  baseline >= floor wells never die; they converge to the baseline.

  Args:
    wells: the current WellState.
    factor: float in [0, 1]; 1 keeps strengths, 0 sets them to the baseline.
    baseline: float >= 0, the strength wells decay toward.
    floor: float >= 0, the smallest strength a well keeps; a new well has strength
      > gain * threshold, so a floor well below that is natural.

  Returns:
    The decayed WellState (loss history untouched).
  """
  _check_concrete("decay factor", factor, 0.0, 1.0)
  _check_concrete("decay baseline", baseline, 0.0, math.inf)
  _check_concrete("decay floor", floor, 0.0, math.inf)
  factor = jnp.asarray(factor, jnp.float32)
  baseline = jnp.asarray(baseline, jnp.float32)
  active = wells.strength > 0
  decayed = baseline + factor * (wells.strength - baseline)
  alive = active & (decayed >= floor)
  strength = jnp.where(alive, decayed, 0.0)
  ids = wells.ids if wells.storage == "dense" else jnp.where(alive, wells.ids, -1)
  return wells.replace(strength=strength, ids=ids)


def summary(wells: WellState, edges: Sequence[float] = DEFAULT_HISTOGRAM_EDGES):
  """Scalars and a fixed-bin histogram for logging.

  Args:
    wells: the current WellState.
    edges: static increasing bin edges (len E); the histogram has E + 1 bins: (-inf, e0),
      [e0, e1), ..., [e_last, inf).

  Returns:
    A dict: "active" int32 [] wells with strength > 0; "total_strength", "max_strength",
    "mean_strength" (over active wells, 0 if none) float32 []; "histogram" int32 [E + 1]
    counts of active wells per bin.
  """
  edges = tuple(float(e) for e in edges)
  if any(b <= a for a, b in zip(edges, edges[1:])):
    raise ValueError(f"wells histogram edges must increase strictly, got {edges}.")
  s = wells.strength
  active = s > 0
  n = jnp.sum(active).astype(jnp.int32)
  total = jnp.sum(jnp.where(active, s, 0.0))
  bins = jnp.searchsorted(jnp.asarray(edges, jnp.float32), s, side="right")
  hist = jnp.zeros((len(edges) + 1,), jnp.int32).at[bins].add(active.astype(jnp.int32))
  return {
      "active": n,
      "total_strength": total,
      "max_strength": jnp.max(jnp.where(active, s, 0.0)),
      "mean_strength": total / jnp.maximum(n, 1).astype(jnp.float32),
      "histogram": hist,
  }
