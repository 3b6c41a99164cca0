r"""Gravity Wells' threshold, and a plain baseline with the wells run's gradient evaluations.

    python bench/wells_threshold.py --deadline_s=1800
    python bench/wells_threshold.py --report_only

A well forms when a batch's loss drops more than `wells.threshold` (relative) below the running
loss estimate. At the default 0.02, wells fired in ~95% of the ablation's steps: the threshold
barely filters. This sweeps it over THRESHOLDS on the ablation's `full` arm (same model, steps
and learning rate as the ablation's best for that arm, CPU scale). For every wells run the
plain control (wells off, everything else equal) then trains for as many steps as the wells run
took gradient evaluations (its steps plus its extra updates), so each pair has spent the same
compute, measured rather than interpolated. Writes bench/results/wells_threshold.{json,png}.
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


THRESHOLDS = (0.005, 0.02, 0.05, 0.1)
WELLS = dict(cli_runs.FULL, model="ban")
PLAIN = dict(WELLS, wells="off")


def _run(spec, name, *, steps, lr, seed, deadline):
  scale = cli_runs.SCALES["cpu"]
  workdir = os.path.join(FLAGS.workdir, name)
  start = time.time()
  status = cli_runs.run_cli(spec["model"], workdir, cli_runs.overrides(
      spec, scale, steps=steps, lr=lr, seed=seed), deadline)
  if status != "done":
    return status
  record = cli_runs.read_record(workdir, steps=steps, scale=scale, flops=0.0)
  record.pop("train_flops")
  record.pop("flops_per_update")
  return dict(record, wall_s=time.time() - start)


def report(results, out_json):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = sorted(results["runs"], key=lambda r: (r["threshold"], r["seed"]))
  if not rows:
    return
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
  th = [r["threshold"] for r in rows]
  ax.plot(th, [r["wells"]["val_bpb"] for r in rows], "o-", label="wells")
  ax.plot(th, [r["plain"]["val_bpb"] for r in rows], "s--", label="plain, same grad evals")
  ax.set_xscale("log")
  ax.set_xlabel("wells.threshold")
  ax.set_ylabel("validation bits/byte")
  ax.legend()
  ax.grid(alpha=0.3)
  bx.plot(th, [r["wells"]["injected_fraction"] for r in rows], "o-")
  bx.set_xscale("log")
  bx.set_xlabel("wells.threshold")
  bx.set_ylabel("extra updates per step")
  bx.grid(alpha=0.3)
  fig.suptitle("Gravity Wells threshold (full system, CPU scale)")
  fig.tight_layout()
  png = os.path.splitext(out_json)[0] + ".png"
  fig.savefig(png, dpi=120)
  plt.close(fig)
  text = ["## Gravity Wells: the threshold, against plain training at equal gradient "
          "evaluations\n",
          "Written by `python bench/wells_threshold.py --report_only` from "
          "`bench/results/wells_threshold.json`: the ablation's `full` arm (its best learning "
          f"rate, {rows[0]['wells']['steps']} steps) with wells at each threshold, and the same "
          "model without wells trained for exactly as many steps as the wells run took "
          "gradient evaluations (steps + extra updates). Negative = wells better.\n",
          "| threshold | seed | extra updates/step | wells val | plain val (same evals) | "
          "wells − plain | held-out wells − plain |",
          "|---|---|---|---|---|---|---|"]
  for r in rows:
    held = (r["wells"]["heldout_bpb"] - r["plain"]["heldout_bpb"]
            if r["wells"].get("heldout_bpb") and r["plain"].get("heldout_bpb") else float("nan"))
    text.append(f"| {r['threshold']:g} | {r['seed']} | {r['wells']['injected_fraction']:.3f} | "
                f"{r['wells']['val_bpb']:.4f} | {r['plain']['val_bpb']:.4f} | "
                f"{r['wells']['val_bpb'] - r['plain']['val_bpb']:+.4f} | {held:+.4f} |")
  noise = results.get("seed_std")
  if noise is None and os.path.exists(cli_runs.ABLATION_JSON):
    summary = ablation_report.summarize(cli_runs.load_json(cli_runs.ABLATION_JSON), "cpu")
    stds = [summary[a]["val_std"] for a in ("full", "+power_law") if a in summary]
    noise = max(stds) if stds else None
  if noise:
    text.append(f"\nSeed-to-seed std of one arm's validation bits/byte in the ablation: "
                f"{noise:.4f}; a difference of a single seed within twice that is not shown.")
  text.append("\n![wells threshold](../bench/results/wells_threshold.png)")
  cli_runs.publish("wells_threshold", text, png)


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  results = cli_runs.load_json(FLAGS.out)
  if FLAGS.report_only:
    report(results, FLAGS.out)
    return
  summary = ablation_report.summarize(cli_runs.load_json(FLAGS.ablation), "cpu")
  if "full" not in summary:
    raise app.UsageError(f"{FLAGS.ablation} has no finished `full` arm: run "
                         "bench/ablation.py --arms=full first (its best rate and steps are used).")
  lr, steps = summary["full"]["lr"], summary["full"]["steps"]
  results["seed_std"] = max(summary[a]["val_std"] for a in ("full", "+power_law")
                            if a in summary)
  deadline = time.time() + FLAGS.deadline_s if FLAGS.deadline_s else None
  for seed in (int(s) for s in FLAGS.seeds):
    for threshold in (float(t) for t in FLAGS.thresholds):
      if any(r["threshold"] == threshold and r["seed"] == seed for r in results["runs"]):
        continue
      tag = f"t{threshold:g}_s{seed}"
      spec = dict(WELLS, extra={"wells.threshold": threshold})
      print(f"[wells_threshold] threshold {threshold:g} seed {seed}: wells, {steps} steps",
            flush=True)
      wells = _run(spec, f"wells_{tag}", steps=steps, lr=lr, seed=seed, deadline=deadline)
      if not isinstance(wells, dict):
        print(f"[wells_threshold]   {wells or 'deadline'}: stopping", flush=True)
        break
      plain_steps = int(round(wells["grad_evals"]))
      print(f"[wells_threshold]   val {wells['val_bpb']:.4f}, "
            f"{wells['injected_fraction']:.3f} extra updates per step; plain, {plain_steps} "
            "steps", flush=True)
      plain = _run(PLAIN, f"plain_{tag}", steps=plain_steps, lr=lr, seed=seed,
                   deadline=deadline)
      if not isinstance(plain, dict):
        print(f"[wells_threshold]   {plain or 'deadline'}: stopping", flush=True)
        break
      print(f"[wells_threshold]   plain val {plain['val_bpb']:.4f}", flush=True)
      results["runs"].append({"threshold": threshold, "seed": seed, "lr": lr,
                              "wells": wells, "plain": plain})
      cli_runs.save_json(FLAGS.out, results)
  report(results, FLAGS.out)


def define_flags():
  """The command line's flags (defined on run, so that tests can import several scripts)."""
  flags.DEFINE_list("thresholds", [str(t) for t in THRESHOLDS], "Thresholds to train.")
  cli_runs.define_study_flags("wells_threshold", ablation_help="The ablation's results: the full arm's learning rate and steps.")

if __name__ == "__main__":
  define_flags()
  app.run(main)
