"""Checksums of a committed checkpoint step, written beside it and verified before restoring.

orbax-checkpoint (0.12) verifies no array content on restore: its default zarr v2 arrays carry
no checksum (the zarr3 layout checksums only each shard's index), so a garbled byte inside a
chunk can come back as wrong numbers without an error. A manifest of every file's SHA-256,
written once the step is committed, catches that and truncation alike.
"""

import hashlib
import json
import os

from ban_jax import formats

MANIFEST = "ban_jax_manifest.json"


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _files(step_dir: str) -> list[str]:
  """The files under `step_dir` as sorted relative paths, the manifest itself excluded."""
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != MANIFEST and not rel.startswith(MANIFEST + ".tmp"):
        out.append(rel)
  return sorted(out)


def write_manifest(step_dir: str):
  """Records {relative path: [size, sha256]} of a committed step and its format version
  (atomically: on a failed write, e.g. a full disk, no partial manifest stays behind)."""
  files = {rel: [os.path.getsize(os.path.join(step_dir, rel)),
                 _sha256(os.path.join(step_dir, rel))] for rel in _files(step_dir)}
  path = os.path.join(step_dir, MANIFEST)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      # "version" is the checkpoint's format (the train-state tree), not only the manifest's.
      json.dump({"version": formats.CHECKPOINT, "files": files}, f, indent=1, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def check_version(step_dir: str) -> int | None:
  """Refuses a step written in a checkpoint format this ban_jax does not read (a UserError,
  not corruption: the step is sound, only not for this release). A step without a manifest,
  or with an unreadable one, passes here (None): `verify` judges those.

  Returns:
    The step's format version.
  """
  path = os.path.join(step_dir, MANIFEST)
  try:
    with open(path) as f:
      version = json.load(f).get("version", 1)
  except (OSError, ValueError, AttributeError):
    return None
  formats.check("checkpoint", version, path)
  return version


def verify(step_dir: str) -> str | None:
  """The reason `step_dir` fails its manifest, or None (also when it has none: older runs, or a
  crash between the commit and the manifest; restoring is then the only check).

  Raises:
    UserError: the step is in a format this ban_jax does not read (`check_version`).
  """
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  check_version(step_dir)
  try:
    with open(path) as f:
      files = json.load(f)["files"]
    files = {rel: (int(size), str(digest)) for rel, (size, digest) in files.items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    return f"its manifest is unreadable ({type(e).__name__})"
  for rel, (size, digest) in sorted(files.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.exists(full):
      return f"{rel} is missing"
    if os.path.getsize(full) != size:
      return f"{rel} has {os.path.getsize(full)} bytes, {size} when saved"
    if _sha256(full) != digest:
      return f"{rel} does not match its checksum"
  return None
