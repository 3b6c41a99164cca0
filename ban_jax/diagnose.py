r"""The field theory's three checks on a trained run: `python -m ban_jax.diagnose`.

    python -m ban_jax.diagnose --workdir=runs/smoke --out=runs/smoke/diagnostics \
        [--queries=FILE] [--seed=0]

Loads the run's newest checkpoint and writes to `--out` (replacing it, written whole):
report.json (check1, check2, check3, field, and field_over_training when the run kept several
checkpoints), report.md (each prediction of the paper as a row: held / did not hold /
inconclusive) and the PNGs. Queries are windows of `--queries` (default: the held-out text,
wikitext2_valid.txt in $BAN_JAX_HELDOUT_DIR or ../shared/data beside the checkout, else the
run's validation split); the cloze check reads the validation split. See ban_jax/diagnostics/ for the definitions.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from ban_jax import errors
from ban_jax.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run's folder.")
_OUT = flags.DEFINE_string("out", None, "Where the report goes (replaced if it exists).")
_QUERIES = flags.DEFINE_string("queries", None, "A UTF-8 text file to draw queries from "
                               "(default: the held-out WikiText-2 file).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the query draws and the sampling.")
_POOL = flags.DEFINE_integer("pool", 200, "Check 1: queries.")
_CLOZE = flags.DEFINE_integer("cloze_items", 400, "Check 2: cloze items (at most).")
_SWEEP = flags.DEFINE_integer("sweep_length", 256, "Check 3: tokens generated per prompt.")
_ITERATIONS = flags.DEFINE_integer("curvature_iterations", 20,
                                   "Power iterations for the Hessian's top eigenvalue.")

def run():
  """Everything after flag parsing; raises UserError for bad input."""
  if not _WORKDIR.value or not _OUT.value:
    raise UserError("--workdir (a trained run's folder) and --out (where the report goes) "
                    "are both required.")
  if not os.path.isdir(_WORKDIR.value):
    raise UserError(f"--workdir={_WORKDIR.value} does not exist.")
  if not (os.path.isdir(os.path.join(_WORKDIR.value, "checkpoints"))
          or os.path.isfile(os.path.join(_WORKDIR.value, "params.msgpack"))):
    raise UserError(f"--workdir={_WORKDIR.value} has no checkpoint (no checkpoints/ folder, "
                    "no params.msgpack); train it first with python -m ban_jax.main.")
  if _QUERIES.value and not os.path.isfile(_QUERIES.value):
    raise UserError(f"--queries={_QUERIES.value} cannot be read: no such file.")
  for name, flag in (("pool", _POOL), ("cloze_items", _CLOZE), ("sweep_length", _SWEEP),
                     ("curvature_iterations", _ITERATIONS)):
    if flag.value < 1:
      raise UserError(f"--{name}={flag.value} must be at least 1.")
  # Imported here so that flag errors answer without loading JAX.
  from ban_jax.diagnostics import report  # pylint: disable=g-import-not-at-top
  queries = _QUERIES.value or report.default_queries()
  if queries is None:
    print(f"no --queries and no {report.HELDOUT_FILE} in $BAN_JAX_HELDOUT_DIR or "
          "../shared/data: queries come from the run's validation split", file=sys.stderr)
  settings = report.Settings(pool=_POOL.value, cloze_items=_CLOZE.value,
                             sweep_length=_SWEEP.value,
                             curvature_iterations=_ITERATIONS.value, seed=_SEED.value)
  result = report.diagnose(_WORKDIR.value, _OUT.value, queries, settings)
  print(f"wrote {_OUT.value}/report.json, report.md and "
        f"{len([f for f in os.listdir(_OUT.value) if f.endswith('.png')])} figures "
        f"(step {result['step']})")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # orbax logs every restore at INFO; the progress lines are what this command shows.
  logging.set_verbosity(logging.WARNING)
  errors.run_reporting(run)


if __name__ == "__main__":
  app.run(main)
