"""Format versions of what a run writes and a later ban_jax reads back.

Each kind of file carries the version of its layout, and every reader checks it before trusting
anything else in the file: one written by a newer ban_jax is refused with "upgrade", one older
than this ban_jax still reads is refused with what to do instead. Bump a version when its layout
changes in a way the old reader would misread (scanning the layers, for one, renames every
parameter of a checkpoint); raise its `OLDEST` only when the reader of the old layout goes.
The `.banx` file keeps its own version in its binary prefix (`ban_jax.runtime.banx.VERSION`).
"""

from ban_jax.errors import UserError

# What this ban_jax writes.
# A checkpoint step: the train-state tree, recorded in its manifest. 2: layers may be scanned
# (`model.scan_layers`: parameters under `layers` with a leading layer axis); 1 never is.
CHECKPOINT = 2
WORKDIR = 1     # a workdir's (or an exported folder's) config.json
# The oldest layout this ban_jax still reads. Files from before versions existed read as 1.
OLDEST = {"checkpoint": 1, "workdir": 1}
CURRENT = {"checkpoint": CHECKPOINT, "workdir": WORKDIR}
# The key that carries the version in a JSON file of ours.
KEY = "format_version"

_OLDER_FIX = {
    "checkpoint": "resume it with the ban_jax release that wrote it, or start a fresh --workdir",
    "workdir": "read it with the ban_jax release that wrote it, or start a fresh --workdir",
}


def check(kind: str, version, path: str):
  """Refuses `path` unless this ban_jax reads format `version` of `kind` files.

  Raises:
    UserError: the version is not an integer, is newer than this ban_jax writes, or older than
      the oldest it reads; the message says which and what to do.
  """
  if isinstance(version, bool) or not isinstance(version, int):
    shown = repr(version)
    shown = shown if len(shown) <= 80 else f"{shown[:75]}...({len(shown)} chars)"
    raise UserError(f"{path} has {KEY}={shown}, not an integer: the file is damaged or "
                    "not ban_jax's; restore it or start a fresh --workdir.")
  if version > CURRENT[kind]:
    raise UserError(f"{path} is {kind} format version {version}, newer than this ban_jax reads "
                    f"(version {CURRENT[kind]}): upgrade ban_jax (pip install -U ban_jax, or "
                    "pull the checkout) and run again.")
  if version < OLDEST[kind]:
    raise UserError(f"{path} is {kind} format version {version}, older than this ban_jax reads "
                    f"(version {OLDEST[kind]} and later): {_OLDER_FIX[kind]}.")


def stamp(kind: str, obj: dict) -> dict:
  """`obj` with this ban_jax's version of `kind` added under `KEY`."""
  return {**obj, KEY: CURRENT[kind]}


def read(kind: str, obj: dict, path: str) -> dict:
  """`obj` (a JSON object read from `path`) checked and without its version key."""
  check(kind, obj.get(KEY, 1), path)
  return {k: v for k, v in obj.items() if k != KEY}
