"""A full or failing disk: one error naming the path and the checkpoint a rerun resumes from.

Writes fail in several layers: Python's own files (metrics, manifests, config) raise OSError;
orbax's array writes go through tensorstore, which raises ValueError with the OS error code in
its message ("No space left on device [os_error_code='28']"), from a background thread when
saves are asynchronous, surfacing at the next save or at close. All of them are recognised
here, and turned into one `DiskError`.
"""

import contextlib
import errno
import os
import re

from ban_jax.errors import UserError

ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
          errno.EIO: "input/output error", errno.EROFS: "read-only file system"}
_CODE = re.compile(r"os_error_code='?(\d+)")


class DiskError(UserError):
  """A write that failed for lack of space or a failing device.

  The message names the newest checkpoint when it is read, not when the write failed: an
  asynchronous save in flight at the failure may still commit while the run stops, and a
  rerun resumes from it.
  """

  def __init__(self, what: str, checkpoints: str, before: int | None):
    super().__init__(what)
    self._what, self._checkpoints, self._before = what, checkpoints, before

  def __str__(self):
    newest = newest_checkpoint(self._checkpoints, before=self._before)
    return (f"{self._what}; {newest}. Free space (or fix the device), then rerun the same "
            "command.")


def _chain(e: BaseException):
  seen = set()
  todo = [e]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def errno_of(e: BaseException) -> int | None:
  """The disk errno (of `ERRNOS`) behind `e` or anything in its chain, else None."""
  for err in _chain(e):
    if isinstance(err, DiskError):
      return None  # already reported
    if isinstance(err, OSError) and err.errno in ERRNOS:
      return err.errno
    match = _CODE.search(str(err))
    if match and int(match.group(1)) in ERRNOS:
      return int(match.group(1))
  return None


def newest_checkpoint(directory: str, *, before: int | None = None) -> str:
  """How to name the newest committed step under `directory` (below `before`), for a message."""
  try:
    steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
  except OSError:
    steps = []
  steps = [s for s in steps if before is None or s < before]
  if not steps:
    return "there is no checkpoint yet: a rerun starts from step 0"
  return (f"the newest checkpoint is step {steps[-1]} ({os.path.join(directory, str(steps[-1]))})"
          ", which a rerun resumes from")


@contextlib.contextmanager
def reporting(what: str, checkpoints: str, *, path: str | None = None,
              before: int | None = None):
  """Turns a disk error inside the block into a DiskError naming `what`, the path (`path`, else
  the failing OSError's file) and the newest checkpoint in `checkpoints` (below step `before`:
  a step whose save failed is not one)."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    code = errno_of(e)
    if code is None:
      raise
    if path is None:
      path = next((err.filename for err in _chain(e)
                   if isinstance(err, OSError) and err.filename), "the workdir")
    raise DiskError(f"{ERRNOS[code]} while {what} ({path})", checkpoints, before) from e
