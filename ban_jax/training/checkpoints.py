"""orbax checkpoints of the train state together with the grain iterator's position."""

import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from ban_jax.errors import UserError


def _key_name(entry) -> str:
  for attr in ("name", "key", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _shapes(tree) -> dict[str, tuple]:
  """{"opt_state/1/0/mu/embed/embedding": shape}: saved metadata stores attributes as dict keys,
  so paths are compared by their names alone."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key_name(e) for e in path): tuple(getattr(leaf, "shape", ()) or ())
          for path, leaf in flat}


class Checkpointer:
  """Keep-N, optionally asynchronous checkpoints in `directory`, one per saved step.

  Each step holds two items: `state` (the TrainState pytree) and `data` (the grain iterator
  state), so a resumed run continues with the exact batch it would have seen next.
  """

  def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self._dir = directory
    self._every = every_steps
    self._mngr = ocp.CheckpointManager(
        directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state, data_iterator, *, force: bool = False) -> bool:
    """Saves at multiples of `every_steps`, or whenever `force`; returns whether it saved."""
    if not force and step % self._every:
      return False
    return self._mngr.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)))

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores `step` into the shapes and shardings of `abstract_state`; moves the iterator."""
    try:
      meta = self._mngr.item_metadata(step)["state"]
    except Exception as e:  # orbax reports unreadable metadata in several types
      raise UserError(f"checkpoint {self._dir}/{step} is unreadable ({type(e).__name__}: {e}); "
                      "delete it or use a fresh --workdir.") from e
    self._check_compatible(step, meta, abstract_state)
    restored = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored["state"]

  def _check_compatible(self, step, meta, abstract_state):
    want, have = _shapes(abstract_state), _shapes(meta)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = [(k, have[k], want[k]) for k in sorted(set(want) & set(have))
             if np.prod(have[k]) != np.prod(want[k]) or have[k] != want[k]]
    if missing or extra or wrong:
      detail = (f"{wrong[0][0]} is {wrong[0][1]} there but {wrong[0][2]} in this config"
                if wrong else f"arrays differ: missing {missing[:2]}, unexpected {extra[:2]}")
      raise UserError(f"the checkpoint at {self._dir}/{step} was written by a different model "
                      f"or optimizer ({detail}); resume with the config it was trained with "
                      "(saved as config.json in the workdir) or use a fresh --workdir.")

  def wait(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()


def read_params(directory: str, step: int | None = None) -> tuple[dict, int]:
  """(params, step) of a run's checkpoint, for evaluation and inference (no optimizer needed).

  Reads only the `state` item, without a target: the arrays come back as host numpy in the
  saved tree, whatever mesh wrote them. `step` None takes the newest checkpoint.
  """
  if not os.path.isdir(directory):
    raise UserError(f"{directory} does not exist: no checkpoints to read; point at the workdir "
                    "of a run that saved at least one (checkpoint.every_steps).")
  mngr = ocp.CheckpointManager(directory, item_handlers={"state": ocp.StandardCheckpointHandler()})
  try:
    steps = mngr.all_steps()
    if not steps:
      raise UserError(f"{directory} holds no finished checkpoint; train the run further or "
                      "point at another workdir.")
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise UserError(f"{directory} has no checkpoint of step {step}; it has {sorted(steps)}.")
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    except Exception as e:  # orbax reports unreadable files in several types
      raise UserError(f"checkpoint {directory}/{step} is unreadable ({type(e).__name__}: {e}); "
                      "read an older step or retrain.") from e
  finally:
    mngr.close()
  return jax.device_get(restored["state"]["params"]), step
