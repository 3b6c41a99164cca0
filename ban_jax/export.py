r"""Exports a trained run to one `.banx` file for the NumPy runtime (`ban_jax.runtime`).

    python -m ban_jax.export --workdir=runs/smoke --out=smoke.banx [--dtype=int8|float16|float32]
    python -m ban_jax.runtime --model=smoke.banx --prompt="The history of "

The file holds the run's config, its tokenizer's description and its weights, each weight a
64-byte-aligned block the runtime memory-maps (`ban_jax/runtime/banx.py` has the layout).
`--dtype=int8` stores every matrix as int8 with one float32 scale per output channel
(symmetric, weight-only; `--group=G` gives each run of G inputs its own scale instead);
`float16` halves them; vectors (norm scales, biases, per-head scalars) stay float32 in every
case. Activations are float32 in the runtime whatever the run's `model.dtype` was.
"""

import os

from absl import app
from absl import flags

from ban_jax import errors
from ban_jax.errors import UserError
from ban_jax.inference import banx_export
from ban_jax.runtime import quantize

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run's folder (or an exported "
                               "params.msgpack folder).")
_OUT = flags.DEFINE_string("out", None, "The .banx file to write.")
_DTYPE = flags.DEFINE_string("dtype", "float32", f"Weight storage: one of {quantize.DTYPES}.")
_GROUP = flags.DEFINE_integer("group", 0, "int8: inputs per scale (0: one scale per output "
                              "channel).")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint to export (default: the newest).")


def run_cli() -> None:
  """Everything after flag parsing; raises UserError for bad input."""
  if not _WORKDIR.value:
    raise UserError("--workdir is required: the folder of a trained run (runs/<preset>).")
  if not _OUT.value:
    raise UserError("--out is required: the .banx file to write, e.g. --out=model.banx.")
  if _DTYPE.value not in quantize.DTYPES:
    raise UserError(f"--dtype={_DTYPE.value} is unknown; use one of {quantize.DTYPES}.")
  if _GROUP.value < 0 or (_GROUP.value and _DTYPE.value != "int8"):
    raise UserError(f"--group={_GROUP.value}: a group size is >= 0 and only means something "
                    "with --dtype=int8.")
  out = os.path.abspath(_OUT.value)
  if os.path.isdir(out):
    raise UserError(f"--out={_OUT.value} is a folder; name the file to write, e.g. "
                    f"{os.path.join(_OUT.value, 'model.banx')}.")
  if not os.path.isdir(os.path.dirname(out)):
    raise UserError(f"--out={_OUT.value}: the folder {os.path.dirname(out)} does not exist; "
                    "create it first.")
  if not os.path.isdir(_WORKDIR.value):
    raise UserError(f"--workdir={_WORKDIR.value} is not a folder; pass the folder of a trained "
                    "run (python -m ban_jax.main --workdir=...).")
  # Imported here so that flag errors answer without loading JAX.
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  run = trained.load(_WORKDIR.value, step=_STEP.value)
  try:
    size = banx_export.export(run, out, _DTYPE.value, _GROUP.value)
  except OSError as e:
    raise UserError(f"--out={_OUT.value} cannot be written ({e}).") from e
  print(f"wrote {out}: {size:,} bytes, {_DTYPE.value} weights of step {run.step}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  errors.run_reporting(run_cli)


if __name__ == "__main__":
  app.run(main)
