"""The field theory's three checks (seed 001) on trained models, and the attention field.

Trains, through the CLI and at the CPU scale of the ablation (each arm's learning rate from
there), the default system (the full system with the inverse-square score) at two seeds and the
transformer, keeping a checkpoint every eighth of the run so the attention field's exponent can
be followed through training; then runs `python -m ban_jax.diagnose` on each and on the length-
extrapolation study's exported runs (one per positional kind), and writes
`bench/results/diagnostics/<run>/` (report.json, report.md, PNGs), `diagnostics.json` and the
`diagnostics` section of docs/results.md. Resumable: finished runs and reports are kept.

  python bench/diagnostics.py [--workdir=/tmp/ban_jax_diagnostics] [--deadline_s=...]
  python bench/diagnostics.py --report_only
"""

import os
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli_runs  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/ban_jax_diagnostics", "Where the training runs go.")
flags.DEFINE_float("deadline_s", None, "Stop starting work after this many seconds.")
flags.DEFINE_bool("report_only", False, "Only rebuild the results section from the reports.")
flags.DEFINE_bool("train_only", False, "Only train the runs (no reports).")
flags.DEFINE_string("out", None, "Where the reports go (default bench/results/diagnostics).")
flags.DEFINE_integer("cloze_items", 400, "Cloze prefixes per report.")

OUT = os.path.join(cli_runs.REPO, "bench", "results", "diagnostics")
SCALE = cli_runs.SCALES["cpu"]
# name -> (arm, learning rate, seed, steps): the ablation's best learning rates at CPU scale,
# and the steps that give each arm the same training FLOPs there.
RUNS = {
    "default_s0": (dict(cli_runs.FULL, model="ban", attention="inverse_square"), 6e-3, 0, 468),
    "default_s1": (dict(cli_runs.FULL, model="ban", attention="inverse_square"), 6e-3, 1, 468),
    "transformer_s0": (dict(cli_runs.BAN, model="transformer"), 1.2e-2, 0, 1184),
}
KEEP = 8   # checkpoints kept per run: the field's exponent is followed through these
EXTRAPOLATION = os.path.join(cli_runs.REPO, "bench", "results", "extrapolation")


def train(name, deadline):
  arm, lr, seed, steps = RUNS[name]
  flat = cli_runs.overrides(arm, SCALE, steps=steps, lr=lr, seed=seed)
  flat.update({"checkpoint.every_steps": steps // KEEP, "checkpoint.keep": KEEP + 1})
  workdir = os.path.join(FLAGS.workdir, name)
  start = time.time()
  status = cli_runs.run_cli(arm["model"], workdir, flat, deadline)
  print(f"{name}: {status} in {time.time() - start:.0f} s", flush=True)
  return workdir if status == "done" else None


def diagnose(name, workdir, deadline):
  out = os.path.join(FLAGS.out or OUT, name)
  if os.path.exists(os.path.join(out, "report.json")):
    return out
  args = [sys.executable, "-m", "ban_jax.diagnose", f"--workdir={workdir}", f"--out={out}",
          f"--cloze_items={FLAGS.cloze_items}"]
  timeout = None if deadline is None else max(deadline - time.time(), 1)
  try:
    subprocess.run(args, cwd=cli_runs.REPO, check=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return None
  return out


def main(argv):
  del argv
  deadline = None if FLAGS.deadline_s is None else time.time() + FLAGS.deadline_s
  if not FLAGS.report_only:
    for name in RUNS:
      workdir = train(name, deadline)
      if workdir and not FLAGS.train_only:
        diagnose(name, workdir, deadline)
    for kind in () if FLAGS.train_only else ("power_law", "rope", "alibi", "none"):
      diagnose(f"extrapolation_{kind}", os.path.join(EXTRAPOLATION, f"{kind}_s0"), deadline)


if __name__ == "__main__":
  app.run(main)
