"""The train-state pytree: everything a step reads and writes, and everything a checkpoint holds."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """One pytree, so one orbax item, one sharding rule and one donated jit argument.

  Attributes:
    step: int32 [], optimizer steps taken.
    params: the model's parameters.
    opt_state: the optax state.
    rng: uint32 [2], the run's base key; a step's key is fold_in(rng, step).
    selection: the batch-selection strategy's state (`training/selection.py`): the WellState
      for Gravity Wells, each example's last loss for loss_rank, None otherwise.
    queue: the DrawQueue of draws pending for the next two steps (`training/queue.py`), None
      when the strategy draws nothing.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  selection: Any = None
  queue: Any = None
