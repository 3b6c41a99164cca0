r"""The results table of the Information Gravity paper: every mechanism on and off, equal FLOPs.

    python bench/ablation.py --scale=cpu --deadline_s=3600      # as much as fits in an hour
    python bench/ablation.py --scale=cpu --resume               # later: only the missing runs
    python bench/ablation.py --report_only                      # table, chart, docs/results.md

Arms (all on the bundled Wikipedia, byte tokens, one shared FLOPs budget per scale):
  transformer, transformer_2x (twice the parameters, fewer steps), ban (dot + RoPE),
  ban+gravity, +tagging, +power_law (= full minus wells), full (+ Gravity Wells),
  full-gravity, full-tagging, full-power_law, full_surprisal_tags (the full system with key
  masses from each token's surprisal instead of a learned function of its hidden state),
  full_inverse_square (the full system with the inverse-square score instead of Gravity-2's).

Each arm first sweeps the learning rate over three values at seed 0, extended by a factor 2
past the grid's edge while the best rate sits on it (up to twice), then trains seeds 1 and 2
at its best rate (1-5 for the arms that set a default, `FIVE_SEEDS`). The reported mean counts
the seeds after 0, which chose the rate; seed 0 is shown beside it. Steps per arm = budget / (XLA's FLOPs of one train step, BAN attractor
iterations included, x gradient evaluations per step); wells arms plan for an extra update in
every step and record the extra updates they really took. Every run is the command line itself
(`python -m ban_jax.main`) in its own workdir, so a run cut by the deadline resumes from its
checkpoint. Finished runs are appended to bench/results/ablation.json as they end.
"""

import os
import sys
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench import ablation_report  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import cli_runs  # pylint: disable=g-import-not-at-top,wrong-import-position


BAN, FULL, SCALES, SEEDS = cli_runs.BAN, cli_runs.FULL, cli_runs.SCALES, cli_runs.SEEDS
ARMS = {
    "transformer": dict(BAN, model="transformer"),
    # Twice the blocks: 2x the non-embedding parameters (1.84x in all at CPU scale).
  "transformer_2x": dict(BAN, model="transformer", layers_factor=2),
    "ban": dict(BAN, model="ban"),
    "ban+gravity": dict(BAN, model="ban", attention="gravity"),
    "+tagging": dict(BAN, model="ban", attention="gravity", tagging=True),
    "+power_law": dict(FULL, model="ban", wells="off"),
    "full": dict(FULL, model="ban"),
    "full-gravity": dict(FULL, model="ban", attention="dot"),
    "full-tagging": dict(FULL, model="ban", tagging=False),
    "full-power_law": dict(FULL, model="ban", positional="rope"),
    # Key masses from each token's surprisal under a first, untagged reading pass (its FLOPs
    # count: the step's XLA FLOPs include both passes, so the arm trains fewer steps).
    "full_surprisal_tags": dict(FULL, model="ban", tagging_source="surprisal"),
    # The score the default should use: Gravity-2's, or its true inverse-square relative.
    "full_inverse_square": dict(FULL, model="ban", attention="inverse_square"),
    # The shipped default's own leave-one-out (its score is inverse_square; the dot score in
    # its place is "full-gravity", the same config).
    "default-tagging": dict(FULL, model="ban", attention="inverse_square", tagging=False),
    "default-power_law": dict(FULL, model="ban", attention="inverse_square", positional="rope"),
    "default-wells": dict(FULL, model="ban", attention="inverse_square", wells="off"),
}
# Arms whose result sets a default: five counted seeds (1-5) besides the rate-choosing seed 0.
FIVE_SEEDS = ("full_inverse_square", "full", "full-gravity", "default-tagging",
              "default-power_law", "default-wells")
MAX_EXTENSIONS = 2  # rates added past the grid's edge while the best rate sits on it


def overrides(arm: str, scale: dict, **kw) -> dict:
  return cli_runs.overrides(ARMS[arm], scale, **kw)


def config_for(arm: str, scale: dict, **kw):
  return cli_runs.config_for(ARMS[arm], scale, **kw)


def flops_per_step(arm: str, scale: dict) -> tuple[float, int]:
  return cli_runs.flops_per_step(ARMS[arm], scale)


def run_one(arm, scale_name, scale, *, steps, lr, seed, flops, params, deadline):
  """Trains one run through the CLI; returns its record, or None if the deadline cut it."""
  workdir = os.path.join(FLAGS.workdir, scale_name, f"{arm}_lr{lr:g}_s{seed}")
  start = time.time()
  status = cli_runs.run_cli(ARMS[arm]["model"], workdir,
                            overrides(arm, scale, steps=steps, lr=lr, seed=seed), deadline)
  if status is None:
    print(f"[ablation]   deadline: {arm} lr {lr:g} seed {seed} stopped; --resume continues it",
          flush=True)
    return None
  if status == "diverged":
    # A learning rate too high for the arm is a result of the sweep, not a failure of it.
    print(f"[ablation]   {arm} lr {lr:g} seed {seed} diverged", flush=True)
    return {"arm": arm, "scale": scale_name, "lr": lr, "seed": seed, "steps": steps,
            "params": params, "flops_per_update": flops, "diverged": True,
            "val_bpb": float("inf"), "heldout_bpb": None, "wall_s": time.time() - start}
  record = cli_runs.read_record(workdir, steps=steps, scale=scale, flops=flops)
  return {"arm": arm, "scale": scale_name, "lr": lr, "seed": seed, "params": params,
          "wall_s": time.time() - start, **record}


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu" if FLAGS.scale == "cpu" else "")
  scale_name, scale = FLAGS.scale, SCALES[FLAGS.scale]
  results = cli_runs.load_json(FLAGS.out) if FLAGS.resume else {"runs": []}
  if FLAGS.report_only:
    ablation_report.report(results, FLAGS.out, scale_name)
    return
  deadline = time.time() + FLAGS.deadline_s if FLAGS.deadline_s else None
  arms = FLAGS.arms or list(ARMS)
  unknown = sorted(set(arms) - set(ARMS))
  if unknown:
    raise app.UsageError(f"unknown arms {unknown}; choose from {list(ARMS)}")
  sizing = results.setdefault("sizing", {}).setdefault(scale_name, {})
  for arm in arms:
    if arm not in sizing:
      flops, params = flops_per_step(arm, scale)
      sizing[arm] = {"flops_per_update": flops, "params": params}
      cli_runs.save_json(FLAGS.out, results)
  budget = sizing["ban"]["flops_per_update"] * scale["ban_steps"] if "ban" in sizing else None
  if budget is None:
    sizing["ban"] = dict(zip(("flops_per_update", "params"), flops_per_step("ban", scale)))
    budget = sizing["ban"]["flops_per_update"] * scale["ban_steps"]
  results.setdefault("budget", {})[scale_name] = budget

  def steps_of(arm):
    evals_per_step = 2.0 if ARMS[arm]["wells"] == "wells" else 1.0
    return max(int(round(budget / (sizing[arm]["flops_per_update"] * evals_per_step))), 20)

  def done(arm, lr, seed):
    return any(r["arm"] == arm and r["scale"] == scale_name and r["lr"] == lr
               and r["seed"] == seed for r in results["runs"])

  def next_rate(arm):
    """The next rate of `arm`'s sweep at seed 0, or None when its best rate is interior."""
    sweep = {r["lr"]: r["val_bpb"] for r in results["runs"]
             if r["arm"] == arm and r["scale"] == scale_name and r["seed"] == 0}
    missing = [lr for lr in scale["learning_rates"] if lr not in sweep]
    if missing:
      return missing[0]
    return ablation_report.extension(sweep, scale["learning_rates"], MAX_EXTENSIONS)

  def best_lr(arm):
    if next_rate(arm) is not None:
      return None
    sweep = {r["lr"]: r["val_bpb"] for r in results["runs"]
             if r["arm"] == arm and r["scale"] == scale_name and r["seed"] == 0}
    return min(sweep, key=sweep.get)   # diverged runs score inf

  def next_job():
    # Sweeps first (every arm gets its best rate before any arm gets more seeds), then seeds
    # in rounds, so that a deadline leaves every arm with as many seeds as the others.
    for arm in arms:
      lr = next_rate(arm)
      if lr is not None:
        return arm, lr, 0
    for seed in range(1, 6):
      for arm in arms:
        wanted = 5 if arm in FIVE_SEEDS else len(SEEDS) - 1
        lr = best_lr(arm)
        if seed <= wanted and not done(arm, lr, seed):
          return arm, lr, seed
    return None

  walls = [r["wall_s"] for r in results["runs"] if r["scale"] == scale_name]
  while (job := next_job()) is not None:
    arm, lr, seed = job
    steps = steps_of(arm)
    if deadline is not None and walls and time.time() + min(walls) > deadline:
      print("[ablation] deadline: no time for another run; --resume continues", flush=True)
      break
    print(f"[ablation] {arm}: lr {lr:g} seed {seed}, {steps} steps "
          f"({sizing[arm]['flops_per_update'] * steps:.3g} FLOPs per update stream)", flush=True)
    record = run_one(arm, scale_name, scale, steps=steps, lr=lr, seed=seed,
                     flops=sizing[arm]["flops_per_update"], params=sizing[arm]["params"],
                     deadline=deadline)
    if record is None:
      break
    results["runs"].append(record)
    walls.append(record["wall_s"])
    cli_runs.save_json(FLAGS.out, results)
    print(f"[ablation]   val {record['val_bpb']:.4f} bits/byte (gzip "
          f"{record['val_gzip_bpb']:.3f}), {record['train_flops'] / budget:.3f} of the budget, "
          f"{record['wall_s']:.0f} s; {len(results['runs'])} runs done", flush=True)
  ablation_report.report(results, FLAGS.out, scale_name)


def define_flags():
  """The command line's flags (defined on run, so that tests can import several scripts)."""
  flags.DEFINE_enum("scale", "cpu", ["cpu", "gpu"], "Model size and FLOPs budget.")
  flags.DEFINE_float("deadline_s", 0,
                     "Start no run that would end past this many seconds from now (0: no "
                     "deadline); a run cut short resumes.")
  flags.DEFINE_bool("resume", True, "Keep finished runs in the results file.")
  flags.DEFINE_string("workdir", "/tmp/ban_ablation", "Where the runs' workdirs go.")
  flags.DEFINE_string("out", os.path.join(REPO, "bench", "results", "ablation.json"),
                      "Results file (JSON, appended per finished run).")
  flags.DEFINE_list("arms", [], "Only these arms (default: all).")
  flags.DEFINE_bool("report_only", False, "Write the table and chart; train nothing.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
