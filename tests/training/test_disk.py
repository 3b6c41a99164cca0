"""What counts as a disk error, wherever in the exception's chain it sits."""

import errno
import os

import pytest

from ban_jax.training import disk


def _tensorstore(code):
  return ValueError(f'RESOURCE_EXHAUSTED: Error writing "a/0" in OCDBT database at local file '
                    f'"/w/x/": Failed to write 8 bytes to file 7: No space left on device '
                    f"[os_error_code='{code}']")


@pytest.mark.parametrize("error,code", [
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
    (OSError(errno.EIO, "Input/output error"), errno.EIO),
    (_tensorstore(28), errno.ENOSPC),
    (_tensorstore(2), None),                       # a missing file is not a full disk
    (OSError(errno.EACCES, "Permission denied"), None),
    (ValueError("shape mismatch"), None),
])
def test_errno_of(error, code):
  assert disk.errno_of(error) == code


def test_found_through_causes_contexts_and_groups():
  try:
    try:
      raise _tensorstore(28)
    except ValueError as inner:
      raise RuntimeError("save failed") from inner
  except RuntimeError as outer:
    assert disk.errno_of(outer) == errno.ENOSPC
    assert disk.errno_of(ExceptionGroup("many", [ValueError("x"), outer])) == errno.ENOSPC


def test_the_message_names_the_newest_checkpoint_when_read(tmp_path):
  ckpt = tmp_path / "checkpoints"
  os.makedirs(ckpt / "5")
  os.makedirs(ckpt / "10.orbax-checkpoint-tmp")     # a save that never committed
  with pytest.raises(disk.DiskError) as e:
    with disk.reporting("saving checkpoint step 15", str(ckpt), before=15):
      raise _tensorstore(28)
  assert str(e.value).startswith("no space left on device while saving checkpoint step 15 "
                                 "(the workdir); the newest checkpoint is step 5 ")
  os.makedirs(ckpt / "10")   # an in-flight save that committed while the run stopped
  assert "the newest checkpoint is step 10 " in str(e.value)
  with pytest.raises(ValueError, match="shape"):   # anything else passes through
    with disk.reporting("x", str(ckpt)):
      raise ValueError("shape")
