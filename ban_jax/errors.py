"""The one exception type for bad user input, and how the command lines report it.

Anything the user can fix (a config value, a path, a dataset, a checkpoint) raises `UserError`
with a message that names the problem and the fix; `ban_jax.main` prints it as one line and
exits with status 2, without a traceback.
"""


class UserError(Exception):
  """Bad input that the user can fix; the message says what is wrong and what to do."""


def run_reporting(run) -> None:
  """Calls `run()`; a `UserError` becomes one `error: ...` line on stderr and exit status 2."""
  import sys  # pylint: disable=g-import-not-at-top
  try:
    run()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
