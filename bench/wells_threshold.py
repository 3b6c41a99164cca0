r"""Gravity Wells' threshold: does it govern compute, and do wells beat both controls?

    python bench/wells_threshold.py --seeds=1,2,3 --deadline_s=3600      # rule "recent"
    python bench/wells_threshold.py --report_only
    python bench/wells_threshold.py --rule=always --arm=full --thresholds=0.005,0.02 --seeds=0

A well forms when a batch's loss drops more than `wells.threshold` (relative) below the running
loss estimate. Under the first draw rule ("always") a well batch was drawn in every step once
any well existed: 0.946 extra updates per step at every threshold, so the threshold governed
nothing. Under "recent" (design §4) only the `wells.draw_window` steps after a formation earn
an extra update, so the rate of extra updates comes from the loss signal. For each threshold
and seed this trains the arm with wells, then two controls at equal compute: *plain* (no wells)
for as many steps as the wells run took gradient evaluations, and *uniform* (a random batch's
extra update in exactly the steps the wells run injected, replayed through
`wells.inject_steps`). Writes bench/results/wells_threshold.{json,png} and the section of
docs/results.md; finished triples are kept, so a rerun resumes.
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


# The first rule's sweep (committed rows without a "rule" are these).
ALWAYS_THRESHOLDS = (0.005, 0.02, 0.05, 0.1)
# With draw="recent" and a window of 3 steps these span ~0.9 to ~0.1 extra updates per step on
# the default system at CPU scale (measured from one run's logged drop rates; design §4).
THRESHOLDS = (0.0, 0.03, 0.08)


def _arm_spec(arm, **extra):
  from bench.ablation import ARMS  # pylint: disable=g-import-not-at-top
  spec = dict(ARMS[arm])
  spec["extra"] = {**spec.get("extra", {}), **extra}
  return spec


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


def injected_steps(workdir: str) -> list[int]:
  """The steps whose extra update ran, over every (resumed) segment of a run."""
  steps = set()
  for name in sorted(os.listdir(workdir)):
    if name.startswith("injected_steps_from_") and name.endswith(".json"):
      steps.update(cli_runs.load_json(os.path.join(workdir, name)))
  return sorted(steps)


def rule_of(row) -> str:
  return row.get("rule", "always")


def _paired(rows, key, other, split="val_bpb"):
  """(mean, std, z, n) over seeds of wells − `other` (`split` bits/byte); z = mean / SE."""
  d = [r[key][split] - r[other][split] for r in rows
       if r.get(other) and r[key].get(split) is not None and r[other].get(split) is not None]
  if not d:
    return float("nan"), float("nan"), float("nan"), 0
  mean = sum(d) / len(d)
  std = (sum((x - mean) ** 2 for x in d) / (len(d) - 1)) ** 0.5 if len(d) > 1 else float("nan")
  z = mean / (std / len(d) ** 0.5) if len(d) > 1 and std > 0 else float("nan")
  return mean, std, z, len(d)


def verdict(rows) -> str:
  """Whether the wells beat both controls at one threshold: both paired differences below zero
  by at least 2 standard errors on validation (held-out is shown beside, not required)."""
  (mp, _, zp, n), (mu, _, zu, _) = _paired(rows, "wells", "plain"), _paired(rows, "wells",
                                                                           "uniform")
  if n < 2:
    return "inconclusive (one seed)"
  if mp < 0 and mu < 0 and zp <= -2 and zu <= -2:
    return "help"
  if (mp > 0 and zp >= 2) or (mu > 0 and zu >= 2):
    return "hurt"
  return "not shown"


def _plot(recent, always, png):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
  for other, marker in (("plain", "o"), ("uniform", "s")):
    pts = [(r["wells"]["injected_fraction"], r["wells"]["val_bpb"] - r[other]["val_bpb"])
           for r in recent if r.get(other)]
    if pts:
      ax.scatter(*zip(*pts), marker=marker, alpha=0.7,
                 label=f"wells − {other}" + (" (same grad evals)" if other == "plain" else
                                            " (same extra-update steps)"))
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xlabel("extra updates per step (draw rule 'recent')")
  ax.set_ylabel("Δ validation bits/byte (negative: wells better)")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  for rows, label in ((always, "always (first rule)"), (recent, "recent")):
    if rows:
      th = sorted({r["threshold"] for r in rows})
      fr = [sum(r["wells"]["injected_fraction"] for r in rows if r["threshold"] == t)
            / sum(1 for r in rows if r["threshold"] == t) for t in th]
      bx.plot([max(t, 1e-3) for t in th], fr, "o-", label=label)
  bx.set_xscale("log")
  bx.set_xlabel("wells.threshold (0 drawn at 1e-3)")
  bx.set_ylabel("extra updates per step")
  bx.set_ylim(0, 1.05)
  bx.legend()
  bx.grid(alpha=0.3)
  fig.suptitle("Gravity Wells: does the threshold govern compute, and do wells help?")
  fig.tight_layout()
  fig.savefig(png, dpi=120)
  plt.close(fig)


def report(results, out_json, ablation_json):
  runs = results["runs"]
  recent = sorted((r for r in runs if rule_of(r) == "recent"),
                  key=lambda r: (r["threshold"], r["seed"]))
  always = sorted((r for r in runs if rule_of(r) == "always"),
                  key=lambda r: (r["threshold"], r["seed"]))
  if not runs:
    return
  png = os.path.splitext(out_json)[0] + ".png"
  _plot(recent, always, png)
  text = ["## Gravity Wells: the threshold, against plain training at equal gradient "
          "evaluations and uniform re-sampling at equal extra updates\n",
          "Written by `python bench/wells_threshold.py --report_only` from "
          "`bench/results/wells_threshold.json`. Negative differences = wells better.\n"]
  if recent:
    r0 = recent[0]
    text += [
        f"**Draw rule `recent`** (design §4): a well batch earns an extra update only in the "
        f"{r0.get('window', 1)} steps after a batch's loss dropped past the threshold and "
        f"formed or grew a well. Arm `{r0.get('arm', 'full')}` (the ablation's best rate, "
        f"{r0['lr']:g}; {r0['wells']['steps']} steps). Controls per run: *plain* (no wells) "
        "trained for as many steps as the wells run took gradient evaluations; *uniform* "
        "takes its extra update on a uniformly random batch in exactly the steps the wells "
        "run injected (`wells.inject_steps`), so both spend the same compute. Mean ± std over "
        "seeds of the paired differences; z = mean / standard error. Verdict per threshold: "
        "*help* if wells beat both controls by z ≤ −2 on validation.\n",
        "| threshold | seeds | extra updates/step | wells val | wells − plain (z) | "
        "wells − uniform (z) | held-out − plain (z) | held-out − uniform (z) | verdict |",
        "|---|---|---|---|---|---|---|---|---|"]
    for t in sorted({r["threshold"] for r in recent}):
      rows = [r for r in recent if r["threshold"] == t]
      frac = sum(r["wells"]["injected_fraction"] for r in rows) / len(rows)
      val = sum(r["wells"]["val_bpb"] for r in rows) / len(rows)
      cells = []
      for other, split in (("plain", "val_bpb"), ("uniform", "val_bpb"), ("plain", "heldout_bpb"),
                           ("uniform", "heldout_bpb")):
        m, sd, z, n = _paired(rows, "wells", other, split)
        cells.append("–" if not n else f"{m:+.4f} ± {sd:.4f} ({z:+.1f})" if n > 1
                     else f"{m:+.4f}")
      text.append(f"| {t:g} | {len(rows)} | {frac:.3f} | {val:.4f} | " + " | ".join(cells)
                  + f" | {verdict(rows)} |")
    verdicts = {t: verdict([r for r in recent if r["threshold"] == t])
                for t in sorted({r["threshold"] for r in recent})}
    helped = [t for t, v in verdicts.items() if v == "help"]
    text.append("\n**\"Gravity Wells help\", under the `recent` rule:** " + (
        f"held at threshold(s) {', '.join(f'{t:g}' for t in helped)}." if helped else
        "not shown at any threshold (" + "; ".join(f"{t:g}: {v}" for t, v in verdicts.items())
        + ")."))
    text += ["\nEvery run:\n",
             "| threshold | seed | extra updates/step | wells val | plain val | uniform val |",
             "|---|---|---|---|---|---|"]
    for r in recent:
      u = r.get("uniform", {}).get("val_bpb")
      text.append(f"| {r['threshold']:g} | {r['seed']} | {r['wells']['injected_fraction']:.3f} "
                  f"| {r['wells']['val_bpb']:.4f} | {r['plain']['val_bpb']:.4f} | "
                  + (f"{u:.4f} |" if u is not None else "– |"))
  if always:
    text += ["\n**The first rule, `always`** (a well batch every step once any well exists; the "
             "`full` arm, one seed): the threshold barely changes compute.\n",
             "| threshold | seed | extra updates/step | wells val | plain val (same evals) | "
             "wells − plain | held-out wells − plain |",
             "|---|---|---|---|---|---|---|"]
    for r in always:
      held = (r["wells"]["heldout_bpb"] - r["plain"]["heldout_bpb"]
              if r["wells"].get("heldout_bpb") and r["plain"].get("heldout_bpb")
              else float("nan"))
      text.append(f"| {r['threshold']:g} | {r['seed']} | "
                  f"{r['wells']['injected_fraction']:.3f} | {r['wells']['val_bpb']:.4f} | "
                  f"{r['plain']['val_bpb']:.4f} | "
                  f"{r['wells']['val_bpb'] - r['plain']['val_bpb']:+.4f} | {held:+.4f} |")
  # Read now, not when the wells runs started: the ablation may have gained seeds since.
  arm = (recent or always)[0].get("arm", "full")
  summary = ablation_report.summarize(cli_runs.load_json(ablation_json), "cpu").get(arm)
  if summary and summary["seeds"] > 1:
    text.append(f"\nSeed-to-seed std of `{arm}`'s validation bits/byte in the ablation "
                f"({summary['seeds']} seeds): {summary['val_std']:.4f}.")
  text.append("\n![wells threshold](../bench/results/wells_threshold.png)")
  cli_runs.publish("wells_threshold", text, png)


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  results = cli_runs.load_json(FLAGS.out)
  if FLAGS.report_only:
    report(results, FLAGS.out, FLAGS.ablation)
    return
  arm, rule, window = FLAGS.arm, FLAGS.rule, FLAGS.window
  summary = ablation_report.summarize(cli_runs.load_json(FLAGS.ablation), "cpu")
  if arm not in summary:
    raise app.UsageError(f"{FLAGS.ablation} has no finished `{arm}` arm: run "
                         f"bench/ablation.py --arms={arm} first (its best rate and steps are "
                         "used).")
  lr, steps = summary[arm]["lr"], summary[arm]["steps"]
  deadline = time.time() + FLAGS.deadline_s if FLAGS.deadline_s else None
  os.makedirs(FLAGS.workdir, exist_ok=True)

  def stop(status):
    print(f"[wells_threshold]   {status or 'deadline'}: stopping; rerun to resume", flush=True)

  # Seeds in rounds: a deadline leaves every threshold with as many seeds as the others.
  for seed in (int(s) for s in FLAGS.seeds):
    for threshold in (float(t) for t in FLAGS.thresholds):
      if any(rule_of(r) == rule and r.get("window", 1) == window and r.get("arm", "full") == arm
             and r["threshold"] == threshold and r["seed"] == seed for r in results["runs"]):
        continue
      tag = f"{arm}_{rule}{window}_t{threshold:g}_s{seed}"
      spec = _arm_spec(arm, **{"wells.threshold": threshold, "wells.draw": rule,
                               "wells.draw_window": window})
      print(f"[wells_threshold] {arm}, rule {rule} (window {window}), threshold "
            f"{threshold:g}, seed {seed}: wells, {steps} steps", flush=True)
      wells = _run(spec, f"wells_{tag}", steps=steps, lr=lr, seed=seed, deadline=deadline)
      if not isinstance(wells, dict):
        return stop(wells)
      plain_steps = int(round(wells["grad_evals"]))
      print(f"[wells_threshold]   val {wells['val_bpb']:.4f}, "
            f"{wells['injected_fraction']:.3f} extra updates per step; plain, {plain_steps} "
            "steps", flush=True)
      plain = _run(dict(_arm_spec(arm), wells="off"), f"plain_{tag}", steps=plain_steps,
                   lr=lr, seed=seed, deadline=deadline)
      if not isinstance(plain, dict):
        return stop(plain)
      inject = os.path.join(FLAGS.workdir, f"inject_{tag}.json")
      cli_runs.save_json(inject, injected_steps(os.path.join(FLAGS.workdir, f"wells_{tag}")))
      print(f"[wells_threshold]   plain val {plain['val_bpb']:.4f}; uniform, {steps} steps",
            flush=True)
      uniform = _run(dict(_arm_spec(arm, **{"wells.inject_steps": inject}), wells="uniform"),
                     f"uniform_{tag}", steps=steps, lr=lr, seed=seed, deadline=deadline)
      if not isinstance(uniform, dict):
        return stop(uniform)
      print(f"[wells_threshold]   uniform val {uniform['val_bpb']:.4f} "
            f"({uniform['injected_fraction']:.3f} extra updates per step)", flush=True)
      results["runs"].append({"rule": rule, "window": window, "arm": arm,
                              "threshold": threshold, "seed": seed, "lr": lr, "wells": wells,
                              "plain": plain, "uniform": uniform})
      cli_runs.save_json(FLAGS.out, results)
  report(results, FLAGS.out, FLAGS.ablation)


def define_flags():
  """The command line's flags (defined on run, so that tests can import several scripts)."""
  flags.DEFINE_list("thresholds", [str(t) for t in THRESHOLDS], "Thresholds to train.")
  flags.DEFINE_enum("rule", "recent", ["always", "recent"], "wells.draw of the wells runs.")
  flags.DEFINE_integer("window", 3, "wells.draw_window of the wells runs (rule 'recent').")
  flags.DEFINE_string("arm", "full_inverse_square", "The ablation arm trained with wells (its "
                      "best learning rate and steps).")
  cli_runs.define_study_flags("wells_threshold", ablation_help="The ablation's results: the "
                              "arm's learning rate and steps.")

if __name__ == "__main__":
  define_flags()
  app.run(main)
