r"""Trains a language model: `python -m ban_jax.main --config=configs/wiki.py:smoke --workdir=DIR`.

Override any config field on the command line, e.g. `--config.train.steps=2000`. Rerunning with
the same --workdir resumes from its newest checkpoint.
"""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ban_jax import config_file
from ban_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and preset, e.g. configs/wiki.py:smoke.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _config_spec(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _parse_flags(argv):
  """absl's parser, after checking the config file and its overrides ourselves."""
  try:
    spec = _config_spec(argv)
    if spec is not None:
      config_file.check_overrides(config_file.load(spec), argv)
  except UserError as e:
    _fail(str(e))
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(" ".join(line.strip() for line in str(e).splitlines() if line.strip()))


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
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    logging.flush()
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
