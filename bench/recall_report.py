"""The recall study's table, plot and docs/results.md section (`bench/recall.py --report_only`).

Accuracy is exact match per query on 2,000 fresh sequences; cells with several seeds show
mean ± std. The smallest width that solves a task (>= 99%, mean over seeds) is read from the
width sweep at each arm's screened rate.
"""

import math
import os

from bench import cli_runs
from bench import recall

TASK_NAMES = {"mqar": "MQAR", "induction": "induction", "copying": "selective copying"}


def task_label(r) -> str:
  if r["task"] == "mqar":
    placement = r.get("placement", "uniform")
    return f"MQAR {r['pairs']} pairs" + ("" if placement == "uniform" else f" ({placement})")
  return TASK_NAMES[r["task"]]


def cells(runs) -> dict:
  """{(task label, arm, width, lr): [accuracies over seeds]}."""
  out = {}
  for r in runs:
    out.setdefault((task_label(r), r["arm"], r["width"], r["lr"]), []).append(r["accuracy"])
  return out


def _mean_std(values):
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, float("nan")
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _fmt(values) -> str:
  mean, std = _mean_std(values)
  text = f"{mean:.1%}" if math.isnan(std) else f"{mean:.1%} ± {std:.1%} ({len(values)})"
  return text + (" ✓" if mean >= recall.SOLVED else "")


def smallest_solving_width(runs, label, arm):
  """The smallest width whose mean accuracy (at the arm's screened rate) is solved, or None."""
  rate = recall.best_lr(runs, arm)
  widths = sorted({w for (t, a, w, lr) in cells(runs) if t == label and a == arm and lr == rate})
  for w in widths:
    if _mean_std(cells(runs)[(label, arm, w, rate)])[0] >= recall.SOLVED:
      return w
  return None


def _plot(runs, png):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  labels = sorted({task_label(r) for r in runs if r["task"] == "mqar"})
  fig, axes = plt.subplots(1, len(labels) + 1, figsize=(4 * (len(labels) + 1), 3.6),
                           squeeze=False)
  table = cells(runs)
  for ax, label in zip(axes[0], labels):
    for arm in recall.ARMS:
      rate = recall.best_lr(runs, arm)
      pts = sorted((w, _mean_std(v)[0]) for (t, a, w, lr), v in table.items()
                   if t == label and a == arm and lr == rate)
      if pts:
        ax.plot(*zip(*pts), "o-", label=arm)
    ax.axhline(recall.SOLVED, color="k", lw=0.7, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("accuracy per query")
    ax.set_title(label)
    ax.grid(alpha=0.3)
  ax = axes[0][-1]
  for r in runs:
    if r["seed"] == 0 and r["lr"] == recall.best_lr(runs, r["arm"]) and (
        task_label(r) == f"MQAR {recall.SCREEN['pairs']} pairs"
        and r["width"] == recall.SCREEN["width"]):
      ax.plot(*zip(*r["curve"]), label=r["arm"])
  ax.set_xlabel("step")
  ax.set_ylabel("accuracy (256 sequences)")
  ax.set_title("learning curves, screening cell")
  ax.grid(alpha=0.3)
  handles, names = axes[0][0].get_legend_handles_labels()
  if handles:
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8,
               bbox_to_anchor=(0.5, -0.08))
  fig.tight_layout()
  fig.savefig(png, dpi=120, bbox_inches="tight")
  plt.close(fig)


def report(results, out_json):
  runs = results["runs"]
  if not runs:
    print("[recall] no finished runs yet")
    return
  png = os.path.splitext(out_json)[0] + ".png"
  _plot(runs, png)
  table = cells(runs)
  text = ["## Recall: MQAR, induction heads, selective copying\n",
          "Written by `python bench/recall.py --report_only` from `bench/results/recall.json` "
          f"({len(runs)} runs, {results.get('wall_s', 0) / 3600:.1f} h of training on the "
          f"machine that ran them). Models of {recall.LAYERS} layers, head_dim "
          f"{recall.HEAD_DIM}, trained at T = {recall.SEQ_LEN} on fresh sequences for the "
          "steps shown; accuracy is exact match per query on "
          f"{recall.EVAL_SEQUENCES:,} fresh sequences; ✓ = solved (≥ 99%). The plan and the "
          "arms: `bench/recall.py`'s docstring. Not yet run: length generalisation of the "
          "positional kinds and eviction on recall (issue 26 items 2-3).\n",
          "**Screening sweep** (MQAR 16 pairs, width 64, seed 0):\n",
          "| arm | " + " | ".join(f"lr {lr:g}" for lr in recall.LEARNING_RATES) + " | chosen |",
          "|---|" + "---|" * (len(recall.LEARNING_RATES) + 1)]
  screen = f"MQAR {recall.SCREEN['pairs']} pairs"
  for arm in recall.ARMS:
    row = [table.get((screen, arm, recall.SCREEN["width"], lr)) for lr in recall.LEARNING_RATES]
    if any(row):
      rate = recall.best_lr(runs, arm)
      text.append(f"| {arm} | " + " | ".join(_fmt([v[0]]) if v else "–" for v in row)
                  + f" | {'–' if rate is None else format(rate, 'g')} |")
  text += ["\n**Every cell at the arm's chosen rate** (mean ± std (seeds) where several):\n",
           "| task | arm | width | params | steps | accuracy |", "|---|---|---|---|---|---|"]
  params = {(r["arm"], r["width"]): r["params"] for r in runs}
  steps = {(task_label(r), r["arm"], r["width"]): r["steps"] for r in runs}
  for (label, arm, width, lr), values in sorted(table.items()):
    if lr == recall.best_lr(runs, arm) or recall.best_lr(runs, arm) is None:
      text.append(f"| {label} | {arm} | {width} | {params[(arm, width)]:,} | "
                  f"{steps[(label, arm, width)]} | {_fmt(values)} |")
  labels = sorted({task_label(r) for r in runs if r["task"] == "mqar"})
  if labels:
    text += ["\n**Smallest width that solves MQAR** (– : none of the widths trained):\n",
             "| arm | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for arm in [a for a in recall.ARMS if any(r["arm"] == a for r in runs)]:
      widths = [smallest_solving_width(runs, label, arm) for label in labels]
      text.append(f"| {arm} | " + " | ".join("–" if w is None else str(w) for w in widths)
                  + " |")
  text.append("\n![recall](../bench/results/recall.png)")
  cli_runs.publish("recall", text, png)
