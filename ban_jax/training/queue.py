"""The two-slot queue of drawn batches, on the device and on the host.

A batch drawn at step s is trained on at step s + 2. The state keeps the two pending draws, so a
resumed run continues with exactly the batches it had drawn; the host reads step s + 1's batch
(random access through the grain source) while step s runs, and only indices cross over.
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class DrawQueue:
  """Draws pending for the next two steps (the TrainState's `queue`).

  Attributes:
    index: int32 [2, batch], the example indices of each pending draw.
    active: bool [2], whether each pending draw is to be used.
  """
  index: jax.Array
  active: jax.Array

  @classmethod
  def init(cls, key: jax.Array, num_examples: int, batch_size: int, active: bool) -> "DrawQueue":
    """Two uniformly random draws, active or not (there is nothing to select from yet)."""
    index = jax.random.randint(key, [2, batch_size], 0, num_examples, jnp.int32)
    return cls(index=index, active=jnp.full([2], active))

  def push(self, index: jax.Array, active: jax.Array) -> "DrawQueue":
    """Drops the draw just used (slot 0) and queues a new one behind the other."""
    return DrawQueue(index=jnp.stack([self.index[1], index]),
                     active=jnp.stack([self.active[1], active]))


class HostQueue:
  """Turns the pending device draws into host batches, read by index.

  `next` gives the batches of the coming step: (regular,) for a strategy that draws nothing or
  trains on its draws instead of the data order, and (regular, extra) for one that adds an extra
  update on its draw (zeros when the draw is inactive; the step then skips it).
  """

  def __init__(self, strategy, queue: DrawQueue | None, dataset):
    self._strategy = strategy
    self._data = dataset
    self._pending = []
    self._zeros = None
    if queue is not None:
      index, active = jax.device_get((queue.index, queue.active))
      self._pending = [(index[0], active[0]), (index[1], active[1])]

  def next(self, data_iterator) -> tuple[dict[str, np.ndarray], ...]:
    if not self._strategy.draws:
      return (next(data_iterator),)
    index, active = self._pending.pop(0)
    # Drawn two steps back: waiting for it does not wait for the step just dispatched.
    index, active = np.asarray(index), bool(np.asarray(active))
    # Draws are global (replicated); each process reads only its rows.
    index = index.reshape(jax.process_count(), -1)[jax.process_index()]
    if self._strategy.replaces_regular_batch:
      return (self._data.fetch(index),)
    batch = next(data_iterator)
    if active:
      return batch, self._data.fetch(index)
    if self._zeros is None:
      self._zeros = {k: np.zeros_like(v) for k, v in batch.items()}
    return batch, self._zeros

  def push(self, draw):
    """Queues the (index, active) a step returned; None from a strategy that draws nothing."""
    if draw is not None:
      self._pending.append(draw)
