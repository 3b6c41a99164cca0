"""A non-finite loss or gradient, caught at the step it happens: stop, or roll back past it.

Each train step returns a `finite` flag (steps.finite) with its metrics. The host reads the
flags with the metrics, at log steps and before every save, so there is no extra device sync,
and no checkpoint holds a state whose steps were not all verified finite. train.nan_policy:
  stop      one UserError naming the step and the newest checkpoint (all hold finite params);
  rollback  restore that checkpoint, skip the data-order batch of the failed step, go on; give
            up after train.max_rollbacks. Under a selection strategy the drawn batches replay
            as they were, so only a failure in the regular update is skipped past.
"""

import dataclasses

from absl import logging
import jax
import ml_collections

from ban_jax.errors import UserError

NAN_POLICIES = ("stop", "rollback")


@dataclasses.dataclass(frozen=True)
class Diverged:
  step: int        # 1-based: the update that produced the non-finite values
  loss: float
  grad_norm: float


class Guard:
  """Holds the metrics of the steps not yet logged, and decides what a divergence does."""

  def __init__(self, train: ml_collections.ConfigDict, ckpt, carried: list[dict]):
    self._policy = train.get("nan_policy", "stop")
    self._max = train.get("max_rollbacks", 3)
    self._ckpt = ckpt
    self._device = []             # metrics of dispatched steps, not yet read
    self._host = list(carried)    # read and verified, not yet logged
    self._skip = set()            # 0-based steps whose data-order batch is skipped
    self.rollbacks = 0

  def add(self, metrics: dict):
    self._device.append(metrics)

  def verify(self, done: int) -> Diverged | None:
    """Reads the metrics of the steps up to `done`; the first non-finite step, or None."""
    host, self._device = jax.device_get(self._device), []
    first = done - len(host)
    for i, m in enumerate(host):
      ok = bool(m.pop("finite", True))
      m = {k: float(v) for k, v in m.items()}
      if not ok:
        return Diverged(first + i + 1, m.get("loss", float("nan")),
                        m.get("grad_norm", float("nan")))
      self._host.append(m)
    return None

  def take(self) -> list[dict]:
    """The verified host metrics since the last log line (for the log line)."""
    host, self._host = self._host, []
    return host

  def unlogged(self) -> list[dict]:
    """The verified metrics a checkpoint carries, so a resumed run logs the same means."""
    return list(self._host)

  def skip_if_due(self, step: int, data_iterator):
    if step in self._skip:
      self._skip.discard(step)
      next(data_iterator)
      logging.warning("skipped the batch of step %d (it diverged before the rollback).",
                      step + 1)

  def recover(self, d: Diverged, plan, data, rng):
    """(state, step, data_iterator) to continue from, or UserError under `stop` or past the
    rollback limit."""
    self._ckpt.wait()
    newest = self._ckpt.latest_step()
    where = (f"{self._ckpt.directory}/{newest}" if newest is not None
             else "none (no checkpoint was saved yet)")
    what = f"training diverged at step {d.step} (loss {d.loss}, gradient norm {d.grad_norm})"
    if self._policy != "rollback":
      raise UserError(f"{what}; the newest checkpoint with finite parameters: {where}. Lower "
                      "optimizer.learning_rate (or raise optimizer.warmup_steps), or set "
                      "train.nan_policy=rollback to skip the batch, and rerun to resume.")
    self.rollbacks += 1
    if self.rollbacks > self._max:
      raise UserError(f"{what} after {self._max} rollbacks (train.max_rollbacks); the newest "
                      f"checkpoint with finite parameters: {where}. Lower "
                      "optimizer.learning_rate (or raise optimizer.warmup_steps) and rerun.")
    data_iterator = data.train.iterator()
    restored = self._ckpt.restore_latest(plan.abstract, data_iterator)
    state, step, carried = restored if restored else (plan.init(rng), 0, [])
    self._device, self._host = [], list(carried)
    self._skip.add(d.step - 1)
    logging.warning("%s; rolled back to step %d (checkpoint %s), skipping the batch of step %d "
                    "(rollback %d of %d).", what, step, where, d.step, self.rollbacks, self._max)
    return state, step, data_iterator
