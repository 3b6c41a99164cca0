r"""Trains a language model: `python -m ban_jax.main --config=configs/wiki.py:smoke --workdir=DIR`.

Override any config field on the command line, e.g. `--config.train.steps=2000`. Rerunning with
the same --workdir resumes from its newest checkpoint.
"""

import logging as std_logging
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ban_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and preset, e.g. configs/wiki.py:smoke.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """absl's parser, with config-file and override errors reduced to one line."""
  return _one_line_errors(lambda: flags.FLAGS(argv), argv)


def _config_value():
  # config_flags may load the file lazily, on first access: map its errors the same way.
  # A file that failed to load comes back as a placeholder that raises on first use: touch it.
  def load():
    config = _CONFIG.value
    "data" in config  # pylint: disable=pointless-statement
    return config
  return _one_line_errors(load, sys.argv)


def _one_line_errors(fn, argv):
  try:
    return fn()
  except (KeyError, AttributeError) as e:
    # ml_collections raises these for an override of a field the config does not have.
    text = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ")
    missing = re.match(r"'?([\w.]+)'?", text)
    name = missing.group(1) if missing else "?"
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
                 and a.split("=")[0].endswith("." + name)), None)
    if flag is None:  # not an override's typo: the config file itself failed
      _fail(f"the config file raised {type(e).__name__}: {text}")
    hint = re.search(r'Did you mean "([^"]+)"', text)
    _fail(f"{flag}: the config has no field '{name}'"
          + (f" (did you mean '{hint.group(1)}'?)" if hint else "")
          + "; see configs/wiki.py for the fields.")
  except OSError as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    _fail(f"cannot load the config file: {lines[-1] if lines else e}; pass e.g. "
          "--config=configs/wiki.py:smoke")
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = re.sub(r"^\w+(Error|Exception): ", "", lines[-1]) if lines else str(e)
    head = lines[0].split(": Error whilst parsing config file")[0] if lines else ""
    _fail(detail if detail.startswith(head.split("=")[0]) else f"{head}: {detail}")


class _DropLibraryInfo(std_logging.Filter):
  """orbax logs each checkpoint step by step at INFO; keep its warnings, drop the chatter."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  # Imported here so that --help and flag errors answer without loading JAX.
  from ban_jax.training import train  # pylint: disable=g-import-not-at-top
  try:
    config = _config_value()
    train.train_and_evaluate(config, _WORKDIR.value)
  except UserError as e:
    logging.flush()
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
