"""The command line's config arguments, checked before absl parses them.

ml_collections reports a missing file, a failing `get_config` or an unknown override as a
multi-line traceback; these checks give the same facts as one `UserError` that names the
argument and the fix, by loading the file and walking the override's path ourselves.

`resolve` lets `--config=configs/wiki.py` work from any folder: ml_collections reads config
files by path only (as flax's examples pass them), so a relative path that the current folder
lacks is looked up in the installed package, where the wheel carries the configs.
"""

import difflib
import importlib.util
import os

import ml_collections

from ban_jax.errors import UserError

EXAMPLE = "--config=configs/wiki.py:smoke"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.basename(PACKAGE_DIR)


def resolve(spec: str) -> str:
  """`path[:preset]` with `path` made one that exists, if it can be; else `spec` unchanged.

  A path that exists (relative to the current folder, or absolute) is kept, so a checkout's or
  a user's own config wins; a relative one that does not is tried inside the package:
  `configs/wiki.py` and `ban_jax/configs/wiki.py` both give the installed
  `<package>/configs/wiki.py`.
  """
  path, colon, preset = spec.partition(":")
  if os.path.isfile(path) or os.path.isabs(path):
    return spec
  parts = os.path.normpath(path).split(os.sep)
  if parts[0] == PACKAGE:
    parts = parts[1:]
  packaged = os.path.join(PACKAGE_DIR, *parts) if parts else ""
  return packaged + colon + preset if os.path.isfile(packaged) else spec


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path[:preset]` the way ml_collections' config flag does: `get_config(*rest)`."""
  path, *args = resolve(spec).split(":", 1)
  if not os.path.isfile(path):
    raise UserError(f"--config={spec}: no such file {path!r} (relative to {os.getcwd()}, nor "
                    f"in the installed package {PACKAGE_DIR}); pass e.g. {EXAMPLE}.")
  module_spec = importlib.util.spec_from_file_location("_ban_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(*args)
  except Exception as e:  # pylint: disable=broad-except
    # Whatever the user's config file raises is the user's to fix: say which and what.
    raise UserError(f"--config={spec}: the config file raised {type(e).__name__}: {e}") from e


def _parse(field, value: str, flag: str):
  """Parses an override as the field's type, naming the flag if it does not parse."""
  if isinstance(field, bool):
    if value.lower() not in ("true", "false", "1", "0"):
      raise UserError(f"{flag}={value}: expected true or false.")
    return
  for kind, noun in ((int, "an integer"), (float, "a number")):
    if isinstance(field, kind):
      try:
        kind(value)
      except ValueError as e:
        raise UserError(f"{flag}={value}: {e}; the field takes {noun}.") from None
      return


def _unknown(name: str, path: list[str], options: list[str]) -> str:
  """'config.a has no field 'x' (did you mean ...)': the closest existing names, else all."""
  where = "config" + "".join("." + p for p in path)
  if not options:
    return f"{where} is a value, not a block: it has no field '{name}'."
  close = difflib.get_close_matches(name, options, n=3)
  if close:
    return (f"{where} has no field '{name}' (did you mean "
            + " or ".join(f"'{c}'" for c in close) + "?); see the config file for the fields.")
  return f"{where} has no field '{name}'; its fields are {', '.join(options)}."


def check_overrides(config: ml_collections.ConfigDict, argv) -> None:
  """Each `--config.a.b=v` names an existing field and parses as that field's type."""
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    flag, has_value, value = arg.partition("=")
    node, path = config, []
    for name in flag[len("--config."):].split("."):
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        options = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise UserError(f"{flag}: {_unknown(name, path, options)}")
      node = node[name]
      path.append(name)
    if has_value:
      _parse(node, value, flag)
