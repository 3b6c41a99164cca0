"""orbax checkpoints of the train state together with the grain iterator's position."""

import os

from absl import logging
import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ban_jax.errors import UserError
from ban_jax.models import scan
from ban_jax.training import disk
from ban_jax.training import integrity


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


class Corrupt(Exception):
  """A checkpoint step that cannot be trusted; the message is the reason, for one log line."""


class Checkpointer:
  """Keep-N, optionally asynchronous checkpoints in `directory`, one per saved step.

  Each step holds the items `state` (the TrainState pytree), `data` (the grain iterator state),
  so a resumed run continues with the exact batch it would have seen next, and `pending` (the
  host metrics of the steps since the last log line, so a resumed run logs the same means).
  Once a step is committed, `integrity.MANIFEST` records every file's checksum beside it.
  Restoring verifies the newest step and falls back to older ones (`restore_latest`).
  """

  def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool):
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self._dir = directory
    self._every = every_steps
    self._unsealed = []   # saved steps whose manifest waits for the save to commit
    self._mngr = self._open()

  def _open(self):
    return ocp.CheckpointManager(
        self._dir, options=self._options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "pending": ocp.JsonCheckpointHandler()})

  @property
  def directory(self) -> str:
    return self._dir

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def due(self, step: int) -> bool:
    return step % self._every == 0

  def save(self, step: int, state, data_iterator, *, pending=(), force: bool = False) -> bool:
    """Saves at multiples of `every_steps`, or whenever `force`; returns whether it saved.

    `pending`: JSON-able host metrics of the steps not yet logged. The caller has verified that
    `state` is finite.
    """
    if not force and not self.due(step):
      return False
    if step in self._mngr.all_steps():  # already saved (a forced save right after a due one)
      return False
    # orbax waits for the previous async save before starting a new one anyway; sealing it
    # here costs nothing more.
    self._seal()
    with disk.reporting(f"saving checkpoint step {step}", self._dir, before=step,
                        path=os.path.join(self._dir, str(step))):
      saved = self._mngr.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iterator),
          pending=ocp.args.JsonSave(list(pending))))
    if saved:
      self._unsealed.append(step)
    return saved

  def _seal(self):
    """Waits for in-flight saves, then writes the manifest of each step they committed.

    A save that failed in the background (a full disk) raises here, as a DiskError; orbax
    never committed it (its folder keeps orbax's temporary suffix), so no resume trusts it.
    """
    unsealed, self._unsealed = self._unsealed, []
    if unsealed:
      with disk.reporting(f"saving checkpoint step {unsealed[-1]}", self._dir,
                          path=os.path.join(self._dir, str(unsealed[-1])),
                          before=unsealed[0]):
        self._mngr.wait_until_finished()
    if jax.process_index() == 0:
      for step in unsealed:
        path = os.path.join(self._dir, str(step))
        if os.path.isdir(path):  # else already dropped by max_to_keep
          with disk.reporting(f"sealing checkpoint step {step}", self._dir,
                              path=os.path.join(path, integrity.MANIFEST)):
            integrity.write_manifest(path)

  def restore(self, step: int, abstract_state, data_iterator):
    """(state, pending) of `step` in the shapes and shardings of `abstract_state`.

    Raises:
      Corrupt: the step fails its manifest, does not restore, or holds non-finite parameters.
      UserError: the step is sound but was written by another model or optimizer.
    """
    path = os.path.join(self._dir, str(step))
    reason = integrity.verify(path)
    if reason:
      raise Corrupt(reason)
    try:
      meta = self._mngr.item_metadata(step)["state"]
    except Exception as e:  # orbax reports unreadable metadata in several types
      raise Corrupt(f"unreadable metadata ({type(e).__name__}: {_first_line(e)})") from e
    self._check_compatible(step, meta, abstract_state)
    args = dict(state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator))
    if os.path.isdir(os.path.join(path, "pending")):  # absent in older checkpoints
      args["pending"] = ocp.args.JsonRestore()
    try:
      restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # truncated or garbled files surface as many types, from asyncio too
      raise Corrupt(f"does not restore ({type(e).__name__}: {_first_line(e)})") from e
    state = restored["state"]
    if not all_finite(state.params):
      raise Corrupt("its parameters are not finite")
    return state, list(restored.get("pending") or [])

  def restore_latest(self, abstract_state, data_iterator):
    """(state, step, pending) of the newest step that restores, or None without checkpoints.

    Each newer step that fails is logged with its reason and moved to `corrupt/<step>` (kept,
    never deleted); if none restores, one UserError lists them all and nothing is moved.
    """
    failed = []
    for step in sorted(self._mngr.all_steps(), reverse=True):
      try:
        state, pending = self.restore(step, abstract_state, data_iterator)
      except Corrupt as e:
        failed.append((step, str(e)))
        continue
      for bad, reason in failed:
        self._move_aside(bad, reason)
      if failed:  # the manager caches its step list
        self._mngr.close()
        self._mngr = self._open()
      return state, step, pending
    if failed:
      tried = "; ".join(f"step {s}: {r}" for s, r in failed)
      raise UserError(f"no checkpoint in {self._dir} restores ({tried}); move them away to "
                      "start over in this workdir, or use a fresh --workdir.")
    return None

  def _move_aside(self, step: int, reason: str):
    src = os.path.join(self._dir, str(step))
    dst = os.path.join(self._dir, "corrupt", str(step))
    suffix = 1
    while os.path.exists(dst):
      dst, suffix = os.path.join(self._dir, "corrupt", f"{step}.{suffix}"), suffix + 1
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.replace(src, dst)
    logging.warning("checkpoint step %d is corrupt (%s): moved to %s; falling back to an older "
                    "step.", step, reason, dst)
  def _check_compatible(self, step, meta, abstract_state):
    want, have = _shapes(abstract_state), _shapes(meta)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = [(k, have[k], want[k]) for k in sorted(set(want) & set(have))
             if np.prod(have[k]) != np.prod(want[k]) or have[k] != want[k]]
    if missing or extra or wrong:
      layout = _scan_layout(want), _scan_layout(have)
      if layout[0] != layout[1]:
        version = integrity.check_version(os.path.join(self._dir, str(step))) or 1
        raise UserError(
            f"the checkpoint at {self._dir}/{step} (checkpoint format version {version}) holds "
            f"its layers {'scanned' if layout[1] else 'one by one'}, this config "
            f"{'scans them' if layout[0] else 'does not'}: resume with "
            f"--config.model.scan_layers={layout[1]} (the layout it was trained with), or "
            "use a fresh --workdir.")
      detail = (f"{wrong[0][0]} is {wrong[0][1]} there but {wrong[0][2]} in this config"
                if wrong else f"arrays differ: missing {missing[:2]}, unexpected {extra[:2]}")
      raise UserError(f"the checkpoint at {self._dir}/{step} was written by a different model "
                      f"or optimizer ({detail}); resume with the config it was trained with "
                      "(saved as config.json in the workdir) or use a fresh --workdir.")

  def wait(self):
    self._seal()

  def close(self):
    self._seal()
    self._mngr.close()


def _scan_layout(shapes: dict[str, tuple]) -> bool:
  """Whether a state's parameters are scanned (`ban_jax.models.scan`): `params/layers/...`."""
  return any(k.startswith(f"params/{scan.LAYERS}/") for k in shapes)


def all_finite(tree) -> bool:
  """Whether every leaf of `tree` is finite (one device reduction, one host read)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return bool(jax.device_get(jnp.all(jnp.stack(leaves)))) if leaves else True


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return text[0][:200] if text else ""


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
    integrity.check_version(os.path.join(directory, str(step)))
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    except Exception as e:  # orbax reports unreadable files in several types
      raise UserError(f"checkpoint {directory}/{step} is unreadable ({type(e).__name__}: {e}); "
                      "read an older step or retrain.") from e
  finally:
    mngr.close()
  return jax.device_get(restored["state"]["params"]), step
