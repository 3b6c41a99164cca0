r"""Trains a language model: `python -m ban_jax.main --config=configs/wiki.py`.

Append `:PRESET` to the config file to choose a preset (`configs/wiki.py:smoke`), and override any
field on the command line, e.g. `--config.train.steps=2000`. A relative config path that the
current folder lacks is looked up in the installed package (`ban_jax/configs/`), so the same
command runs from any folder once the wheel is installed. The run goes to `--workdir`, by
default `runs/<preset>`; rerunning with the same workdir resumes from its newest checkpoint.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ban_jax import config_file
from ban_jax.training import disk
from ban_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Config file and preset, e.g. configs/wiki.py:smoke. A relative path not found under the "
    "current folder is looked up in the installed ban_jax package (configs/wiki.py or "
    "ban_jax/configs/wiki.py), so it works from any folder.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Folder for checkpoints, metrics and plots (default: runs/<preset>).")
flags.mark_flags_as_required(["config"])


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _resolve_config(argv) -> tuple[list[str], str | None]:
  """argv with --config's path found (config_file.resolve), and that flag's value, if given."""
  argv, spec = list(argv), None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      spec = config_file.resolve(arg.split("=", 1)[1])
      argv[i] = f"--config={spec}"
    elif arg == "--config" and i + 1 < len(argv):
      spec = argv[i + 1] = config_file.resolve(argv[i + 1])
  return argv, spec


def _parse_flags(argv):
  """absl's parser, after checking the config file and its overrides ourselves."""
  try:
    argv, spec = _resolve_config(argv)
    if spec is not None:
      config_file.check_overrides(config_file.load(spec), argv)
  except UserError as e:
    _fail(str(e))
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(" ".join(line.strip() for line in str(e).splitlines() if line.strip()))


class _DropLibraryInfo(std_logging.Filter):
  """orbax logs each checkpoint step by step at INFO; keep its warnings, drop the chatter.

  A full disk makes orbax's threads (and asyncio, for their unread futures) log the same
  tensorstore error with a traceback, several times over; the run reports it once, as its
  error line, so those records go.
  """

  def filter(self, record):
    if record.exc_info and record.exc_info[1] is not None:
      if disk.errno_of(record.exc_info[1]) is not None:
        return False
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _workdir(config) -> str:
  """--workdir, else runs/<preset> under the current folder; logs which, and whether it resumes."""
  workdir = _WORKDIR.value or os.path.join("runs", config.get("preset", "run"))
  checkpoints = os.path.join(workdir, "checkpoints")
  try:
    steps = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
  except OSError:  # no checkpoints yet; an unreadable folder fails later with a clear error
    steps = []
  state = f"resuming from its checkpoint at step {steps[-1]}" if steps else "a new run"
  logging.info("workdir %s: %s", os.path.abspath(workdir), state)
  return workdir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  # Imported here so that --help and flag errors answer without loading JAX.
  from ban_jax.training import train  # pylint: disable=g-import-not-at-top
  try:
    config = _CONFIG.value
    train.train_and_evaluate(config, _workdir(config))
  except UserError as e:
    logging.flush()
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
