r"""The attractor's convergence: does the focus branch reach a fixed point, and does it matter?

    python bench/attractor_steps.py --deadline_s=1800
    python bench/attractor_steps.py --report_only

The paper calls the attractor "deep convergence". Measured here on the ablation's `+power_law`
arm (the full system without wells: the attractor is the same, the runs are half the cost),
CPU scale, its best learning rate from the ablation, at the ablation's equal-FLOPs budget (more
attractor steps cost more per update, so those runs train fewer steps): attractor steps
{2, 4, 8}, each with backprop through the loop and with implicit (fixed-point) gradients.
Reported per run: validation and held-out bits/byte, and the relative residual
‖z_K − z_{K−1}‖ / ‖z_K‖ after the K configured steps at the end of training (0 at a fixed
point). Writes bench/results/attractor_steps.{json,png}.
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


STEPS = (2, 4, 8)
BASE_ARM = "+power_law"
BASE = dict(cli_runs.FULL, model="ban", wells="off")


def report(results, out_json):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = sorted(results["runs"], key=lambda r: (r["implicit_grad"], r["attractor_steps"],
                                                r["seed"]))
  if not rows:
    return
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
  for implicit, marker in ((False, "o-"), (True, "s--")):
    mine = [r for r in rows if r["implicit_grad"] == implicit]
    label = "implicit gradients" if implicit else "backprop through the loop"
    ax.plot([r["attractor_steps"] for r in mine], [r["val_bpb"] for r in mine], marker,
            label=label)
    bx.plot([r["attractor_steps"] for r in mine], [r["attractor_residual_rel"] for r in mine],
            marker, label=label)
  for axis, ylabel in ((ax, "validation bits/byte (equal FLOPs)"),
                       (bx, "relative residual ‖z_K − z_K−1‖/‖z_K‖")):
    axis.set_xscale("log", base=2)
    axis.set_xticks(STEPS, [str(s) for s in STEPS])
    axis.set_xlabel("attractor steps K")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend()
  bx.set_yscale("log")
  fig.suptitle("The attractor's convergence (full system without wells, CPU scale)")
  fig.tight_layout()
  png = os.path.splitext(out_json)[0] + ".png"
  fig.savefig(png, dpi=120)
  plt.close(fig)
  text = ["## The attractor's convergence\n",
          "Written by `python bench/attractor_steps.py --report_only` from "
          "`bench/results/attractor_steps.json`: the ablation's `+power_law` arm (the full "
          "system without wells) at its best learning rate and the ablation's FLOPs budget, so "
          "more attractor steps mean fewer training steps. The residual is "
          "‖z_K − z_(K−1)‖/‖z_K‖ after the K steps at the end of training, mean over layers "
          "(0 at a fixed point).\n",
          "| K | gradients | seed | train steps | val bits/byte | held-out | residual (rel) |",
          "|---|---|---|---|---|---|---|"]
  for r in rows:
    text.append(f"| {r['attractor_steps']} | "
                f"{'implicit' if r['implicit_grad'] else 'backprop'} | {r['seed']} | "
                f"{r['steps']} | {r['val_bpb']:.4f} | {r['heldout_bpb']:.4f} | "
                f"{r['attractor_residual_rel']:.2%} |")
  text.append("\n![attractor steps](../bench/results/attractor_steps.png)")
  cli_runs.publish("attractor_steps", text, png)


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  results = cli_runs.load_json(FLAGS.out)
  if FLAGS.report_only:
    report(results, FLAGS.out)
    return
  ablation = cli_runs.load_json(FLAGS.ablation)
  summary = ablation_report.summarize(ablation, "cpu")
  if BASE_ARM not in summary or "cpu" not in ablation.get("budget", {}):
    raise app.UsageError(f"{FLAGS.ablation} has no finished `{BASE_ARM}` arm: run "
                         f"bench/ablation.py --arms={BASE_ARM} first.")
  lr, budget = summary[BASE_ARM]["lr"], ablation["budget"]["cpu"]
  scale = cli_runs.SCALES["cpu"]
  deadline = time.time() + FLAGS.deadline_s if FLAGS.deadline_s else None
  for seed in (int(s) for s in FLAGS.seeds):
    for implicit in (g == "implicit" for g in FLAGS.gradients):
      for k in (int(x) for x in FLAGS.ks):
        if any(r["attractor_steps"] == k and r["implicit_grad"] == implicit
               and r["seed"] == seed for r in results["runs"]):
          continue
        spec = dict(BASE, attractor_steps=k, implicit_grad=implicit)
        flops, params = cli_runs.flops_per_step(spec, scale)
        steps = int(round(budget / flops))
        name = f"k{k}_{'implicit' if implicit else 'backprop'}_s{seed}"
        print(f"[attractor_steps] {name}: {steps} steps ({flops:.3g} FLOPs each)", flush=True)
        workdir = os.path.join(FLAGS.workdir, name)
        start = time.time()
        status = cli_runs.run_cli(spec["model"], workdir, cli_runs.overrides(
            spec, scale, steps=steps, lr=lr, seed=seed), deadline)
        if status != "done":
          print(f"[attractor_steps]   {status or 'deadline'}: stopping", flush=True)
          report(results, FLAGS.out)
          return
        record = cli_runs.read_record(workdir, steps=steps, scale=scale, flops=flops)
        results["runs"].append(dict(record, attractor_steps=k, implicit_grad=implicit,
                                    seed=seed, lr=lr, params=params,
                                    wall_s=time.time() - start))
        cli_runs.save_json(FLAGS.out, results)
        print(f"[attractor_steps]   val {record['val_bpb']:.4f}, residual "
              f"{record['attractor_residual_rel']:.4f}", flush=True)
  report(results, FLAGS.out)


def define_flags():
  """The command line's flags (defined on run, so that tests can import several scripts)."""
  flags.DEFINE_list("ks", [str(k) for k in STEPS], "Attractor steps to train.")
  flags.DEFINE_list("gradients", ["backprop", "implicit"], "backprop and/or implicit.")
  cli_runs.define_study_flags("attractor_steps", ablation_help="The ablation's results: the budget and the arm's best rate.")

if __name__ == "__main__":
  define_flags()
  app.run(main)
