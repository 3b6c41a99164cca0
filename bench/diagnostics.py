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

import json
import os
import subprocess
import sys
import time

from absl import app
import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli_runs  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.diagnostics import checks  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.diagnostics import report_md  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.diagnostics import stats  # pylint: disable=g-import-not-at-top,wrong-import-position

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
KINDS = ("power_law", "rope", "alibi", "none")
FIGURES = ("check1_landscape_pca", "check1_wells_vs_mass", "check2_errors_vs_mass",
           "check3_temperature", "field", "field_over_training")
SUMMARY = os.path.join(cli_runs.REPO, "bench", "results", "diagnostics.json")
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


def _load(name):
  path = os.path.join(FLAGS.out or OUT, name, "report.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _seed_agreement(first, second):
  """Query by query, how alike two seeds' landscapes are (the same queries in both)."""
  a, b = first["check1"]["per_query"], second["check1"]["per_query"]
  return {k: stats.spearman_ci(a[k], b[k]) for k in ("depth", "width", "minima_pca",
                                                      "minima_mds", "M")}


def _fmt(ci):
  return f"{ci['value']:+.2f} [{ci['low']:+.2f}, {ci['high']:+.2f}]"


def report():
  reports = {name: r for name in list(RUNS) + [f"extrapolation_{k}" for k in KINDS]
             if (r := _load(name)) is not None}
  if not reports:
    print("no reports yet")
    return
  summary = {"runs": {n: {"step": r["step"], "verdicts": report_md.prediction_rows(r)}
                      for n, r in reports.items()}}
  lines = [
      "## The field theory's checks (seed 001) and the attention field",
      "",
      "Written by `python bench/diagnostics.py --report_only` from "
      "`bench/results/diagnostics/<run>/report.json` (each made by `python -m "
      "ban_jax.diagnose`; its report.md and PNGs are beside it). Runs at the ablation's CPU "
      "scale (64 wide, 2 layers, ~100k parameters, 128-byte windows, equal training FLOPs): "
      "the default system (BAN, inverse-square gravity attention, tagging, power-law field, "
      "wells) at seeds 0 and 1, the transformer at seed 0. Queries: 96-byte windows of the "
      "held-out WikiText-2 text; the cloze items: 96-byte prefixes of the bundled validation "
      "split whose next word is a name, number or date. 95% bootstrap intervals. A verdict "
      "is 'held' when the interval lies beyond 0 in the predicted direction, 'did not hold' "
      f"when it rules out even ρ = {checks.WEAK} that way, else 'inconclusive'.",
      "",
  ]
  names = [n for n in RUNS if n in reports]
  for n in names:
    verdicts = [v for _, v, _ in report_md.prediction_rows(reports[n])]
    lines.append(f"- {n}: " + ", ".join(f"{verdicts.count(v)} {v}" for v in
                                        ("held", "did not hold", "inconclusive")) + ".")
  if names:
    lines.append("")
    rows = [report_md.prediction_rows(reports[n]) for n in names]
    lines += ["| prediction | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for i, (prediction, _, _) in enumerate(rows[0]):
      cells = [f"**{r[i][1]}**: {r[i][2]}" for r in rows]
      lines.append(f"| {prediction} | " + " | ".join(cells) + " |")
    lines.append("")
  if "default_s0" in reports and "default_s1" in reports:
    agree = _seed_agreement(reports["default_s0"], reports["default_s1"])
    summary["seed_agreement"] = agree
    lines += ["Across the two training seeds of the default system, query by query (Spearman "
              "ρ of seed 0's value against seed 1's on the same 200 queries): " +
              ", ".join(f"{k} {_fmt(v)}" for k, v in agree.items()) + ".", ""]
  lines += ["### The attention field against distance",
            "",
            "Mean attention weight at distance d fitted to c·d^(−p) over 1 ≤ d ≤ 64, per head, "
            "on 16 held-out windows of 128 bytes; intervals over windows. For the power-law "
            "kind the learned field's own exponent (softplus(power), its bias is "
            "−p·log(1 + a·d)) is beside the fit, which partly reads it back.",
            "",
            "| run | positions | mean p | p per head (layer 0; layer 1) | heads whose interval "
            "holds 2 | learned p per head |",
            "|---|---|---|---|---|---|"]
  for name, r in reports.items():
    f = r["field"]
    per_head = "; ".join(", ".join(f"{h['p']:.2f}" for h in layer["heads"])
                         for layer in f["layers"])
    learned = "; ".join(", ".join(f"{h['learned_p']:.2f}" for h in layer["heads"]
                                  if "learned_p" in h) for layer in f["layers"]).strip("; ")
    lines.append(f"| {name} | {r['model'].get('positional')} | {f['mean_p']:.2f} | {per_head} "
                 f"| {f['heads_whose_ci_holds_2']} / {f['heads']} | {learned or '—'} |")
  for name, r in reports.items():
    if "field_over_training" in r:
      steps = ", ".join(f"{row['step']}: {np.nanmean(row['mean_p_per_layer']):.2f}"
                        for row in r["field_over_training"])
      lines += ["", f"Over training ({name}, mean p over heads and layers by step): {steps}."]
  summary["field"] = {n: {"mean_p": r["field"]["mean_p"],
                          "heads_whose_ci_holds_2": r["field"]["heads_whose_ci_holds_2"]}
                      for n, r in reports.items()}
  lines += ["", "Figures: `bench/results/diagnostics/<run>/*.png`; the default system's (seed 0) "
            "and the transformer's:", ""]
  for name in ("default_s0", "transformer_s0"):
    if name in reports:
      lines.append(" ".join(f"![{name} {figure}](../bench/results/diagnostics/{name}/{figure}.png)"
                            for figure in FIGURES))
      lines.append("")
  cli_runs.write_results_section("diagnostics", "\n".join(lines))
  tmp = SUMMARY + ".tmp"
  with open(tmp, "w") as f:
    json.dump(summary, f, indent=1)
  os.replace(tmp, SUMMARY)
  print("\n".join(lines))


def main(argv):
  del argv
  deadline = None if FLAGS.deadline_s is None else time.time() + FLAGS.deadline_s
  if not FLAGS.report_only:
    for name in RUNS:
      workdir = train(name, deadline)
      if workdir and not FLAGS.train_only:
        diagnose(name, workdir, deadline)
        report()
    for kind in () if FLAGS.train_only else KINDS:
      diagnose(f"extrapolation_{kind}", os.path.join(EXTRAPOLATION, f"{kind}_s0"), deadline)
      report()
  report()


if __name__ == "__main__":
  app.run(main)
