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
  """The task as the tables name it: every field that makes two runs different cells.

  An eviction cell (tested with its queries elsewhere than it trained) and a longer retry are
  cells of their own, never pooled with the plain cell as if they were its seeds.
  """
  notes = []
  if r["task"] == "mqar" and r.get("placement", "uniform") != "uniform":
    notes.append(r["placement"])
  if r.get("eval_placement"):
    notes.append(f"tested {r['eval_placement']}")
  length = r.get("seq_len", recall.SEQ_LEN)
  if length != recall.SEQ_LEN or r.get("length_test"):
    notes.append(f"T = {length}")
  if r.get("train_steps"):
    notes.append(f"{r['train_steps']:,} steps")
  name = f"MQAR {r['pairs']} pairs" if r["task"] == "mqar" else TASK_NAMES[r["task"]]
  return name + (f" ({', '.join(notes)})" if notes else "")


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
  solved = sum(v >= recall.SOLVED for v in values)
  text = (f"{mean:.1%}" if math.isnan(std) else f"{mean:.1%} ± {std:.1%} ({len(values)}"
          + (f"; {solved} solved" if solved else "") + ")")
  return text + (" ✓" if mean >= recall.SOLVED else "")


def smallest_solving_width(runs, label, arm):
  """The smallest width whose mean accuracy (at the arm's screened rate) is solved, or None."""
  rate = recall.best_lr(runs, arm)
  widths = sorted({w for (t, a, w, lr) in cells(runs) if t == label and a == arm and lr == rate})
  for w in widths:
    if _mean_std(cells(runs)[(label, arm, w, rate)])[0] >= recall.SOLVED:
      return w
  return None


def _se(values, queries) -> float:
  """The standard error of a cell's accuracy: over seeds where several, else over queries.

  One seed's error counts only the test sequences, not training variance; verdicts from it are
  marked (1 seed).
  """
  mean, std = _mean_std(values)
  if len(values) > 1:
    return std / math.sqrt(len(values))
  return math.sqrt(max(mean * (1 - mean), 1.0 / queries) / queries)


def verdict(diff: float, se: float) -> str:
  z = diff / se if se > 0 else (math.inf if diff > 0 else -math.inf if diff < 0 else 0.0)
  return ("yes" if z > 2 else "no (worse)" if z < -2 else "not shown") + f" (z {z:+.1f})"


def arm_vs_dot(runs, label, width, arm, base="transformer_dot"):
  """(diff, se, seeds) of `arm` minus `base` at one task and width, each at its own rate."""
  got = {}
  for a in (arm, base):
    rate = recall.best_lr(runs, a)
    rs = [r for r in runs if r["arm"] == a and task_label(r) == label and r["width"] == width
          and r["lr"] == rate]
    if not rs:
      return None
    values = [r["accuracy"] for r in rs]
    got[a] = (_mean_std(values)[0], _se(values, rs[0]["queries"]), len(values))
  diff = got[arm][0] - got[base][0]
  return diff, math.hypot(got[arm][1], got[base][1]), min(got[arm][2], got[base][2])


def _verdict_table(runs, cells, base, title, column="arm") -> list[str]:
  """A verdict table of (task label, width, arm) cells against `base`; [] when none ran."""
  rows = []
  for label, width, arm in cells:
    got = arm_vs_dot(runs, label, width, arm, base=base)
    if got:
      diff, se, seeds = got
      rows.append(f"| {label} | {width} | {arm} | {diff:+.1%} ± {se:.1%} | "
                  f"{verdict(diff, se)} | {seeds} |")
  if not rows:
    return []
  return [title, f"| task | width | {column} | Δ accuracy | verdict | seeds |",
          "|---|---|---|---|---|---|", *rows]


def _plot_extra(runs, png):
  """Accuracy vs length per positional kind, and vs cache budget per eviction policy."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  length = [r for r in runs if "lengths" in r]
  evict = [r for r in runs if "eviction" in r]
  panels = sorted({task_label(r) for r in length}) + list(range(len(evict)))
  if not panels:
    return False
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
  for ax, panel in zip(axes[0], panels):
    for r in length:
      if task_label(r) == panel:
        pts = sorted((int(t), a) for t, a in r["lengths"].items())
        ax.plot(*zip(*pts), "o-", label=recall.ARMS[r["arm"]]["positional"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"test length T (trained at {pts[0][0]})")
        ax.set_title(f"{panel}: positional kinds")
    for i, r in enumerate(evict):
      if i == panel:
        ev = r["eviction"]
        for policy, accs in ev["accuracy"].items():
          pts = sorted((int(b), a) for b, a in accs.items())
          ax.plot(*zip(*pts), "o-", label=policy, lw=2.5 if policy == "gravity" else 1)
        ax.axhline(ev["full"], color="k", lw=0.7, ls="--", label="full cache")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"cache slots (context {r['seq_len']})")
        ax.set_title(f"eviction on MQAR ({r['arm']}, {r['steps']} steps)")
    ax.set_ylabel("accuracy per query")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(png, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return True


def eviction_lines(runs) -> list[str]:
  evict = [r for r in runs if "eviction" in r]
  if not evict:
    return []
  text = [f"\n**Eviction on recall** (MQAR {recall.EVICTION['pairs']} pairs, trained with the "
          "queries anywhere after the keys, tested with them at the end, "
          f"T = {recall.EVICTION['seq_len']}, width {recall.EVICTION['width']}; decoded "
          "token "
          f"by token through `Decoder`; {recall.EVICTION_SEQUENCES:,} sequences, the same for "
          "every policy; Δ = policy − gravity, paired per sequence, ± its SE; `_r0`: "
          "no recent window, the whole budget to the score):\n"]
  for r in evict:
    ev = r["eviction"]
    solved = "solved" if ev["full"] >= recall.SOLVED else "**not solved: verdicts are weak**"
    text += [f"*{r['arm']}* (lr {r['lr']:g}, seed {r['seed']}, {r['steps']} steps): full cache "
             f"{ev['full']:.1%} through the decoder, {r['accuracy']:.1%} in parallel ({solved}).\n",
             "| policy | " + " | ".join(f"{b} slots" for b in ev["budgets"]) + " |",
             "|---|" + "---|" * len(ev["budgets"])]
    for policy, accs in ev["accuracy"].items():
      cells_ = []
      for b in ev["budgets"]:
        d, se = ev["vs_gravity"][policy][str(b)]
        cells_.append(f"{accs[str(b)]:.1%}" + ("" if policy == "gravity" else
                                                 f" (Δ {d:+.1%} ± {se:.1%})"))
      text.append(f"| {policy} | " + " | ".join(cells_) + " |")
    vs = ev.get("vs", {"gravity": ev["vs_gravity"]})
    for ref in [g for g in recall.GRAVITY_FAMILY if g in vs]:
      rows = []
      for b in ev["budgets"]:
        others = {p: vs[ref][p][str(b)] for p in ev["accuracy"]
                  if p not in recall.GRAVITY_FAMILY}
        best = max(others, key=lambda p: others[p][0])
        d, se = others[best]
        rows.append(f"{b} slots: vs the best other policy ({best}) {verdict(-d, se)}")
      what = "gravity" if ref == "gravity" else "gravity without the recent window"
      text.append(f"\nVerdict, *{what} keeps what recall needs better than every other "
                  f"policy* ({r['arm']}, seed {r['seed']}, 1 seed): " + "; ".join(rows) + ".\n")
  return text


def length_lines(runs) -> list[str]:
  length = [r for r in runs if "lengths" in r]
  if not length:
    return []
  lens = sorted({int(t) for r in length for t in r["lengths"]})
  text = ["\n**Length generalisation on recall** (width 64, trained at the task's T, the "
          "first column with a figure; induction: the BAN with the dot score, MQAR: the "
          "default system with tagging off; "
          f"{recall.LONG_SEQUENCES:,} fresh sequences per longer length):\n",
          "| task | positional | " + " | ".join(f"T = {t}" for t in lens) + " |",
          "|---|---|" + "---|" * len(lens)]
  for r in sorted(length, key=lambda r: (task_label(r), r["arm"])):
    kind = recall.ARMS[r["arm"]]["positional"]
    text.append(f"| {task_label(r)} | {kind} | " + " | ".join(
        f"{r['lengths'][str(t)]:.1%}" if str(t) in r["lengths"] else "–" for t in lens) + " |")
  for label in sorted({task_label(r) for r in length}):
    at = {recall.ARMS[r["arm"]]["positional"]: r for r in length if task_label(r) == label}
    if "power_law" in at and len(at) > 1:
      top = str(max(lens))
      pl = at["power_law"]["lengths"][top]
      best = max((k for k in at if k != "power_law"), key=lambda k: at[k]["lengths"][top])
      other = at[best]["lengths"][top]
      n = recall.LONG_SEQUENCES * at["power_law"].get("pairs", 1)   # queries per sequence
      se = math.hypot(math.sqrt(max(pl * (1 - pl), 1 / n) / n),
                      math.sqrt(max(other * (1 - other), 1 / n) / n))
      text.append(f"\nVerdict, *the power-law field extrapolates recall better than the other "
                  f"kinds* ({label}, T = {top}, vs the best other: {best}, 1 seed): "
                  f"{verdict(pl - other, se)}.")
  return text


def _plot(runs, png):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  labels = sorted({task_label(r) for r in runs if r["task"] == "mqar"
                   and r.get("seq_len", recall.SEQ_LEN) == recall.SEQ_LEN
                   and r.get("placement", "uniform") == "uniform"
                   and not r.get("eval_placement") and not r.get("train_steps")})
  fig, axes = plt.subplots(1, len(labels) + 1, figsize=(4 * (len(labels) + 1), 3.6),
                           squeeze=False)
  table = cells(runs)
  colour = {arm: f"C{i}" if i < 10 else "k" for i, arm in enumerate(recall.ARMS)}
  for ax, label in zip(axes[0], labels):
    for arm in recall.ARMS:
      rate = recall.best_lr(runs, arm)
      got = sorted((w, v) for (t, a, w, lr), v in table.items()
                   if t == label and a == arm and lr == rate)
      if got:
        ax.plot([w for w, _ in got], [_mean_std(v)[0] for _, v in got], "o-", label=arm,
                color=colour[arm])
        # Every seed as a faint dot: a mean of 1/3 solved is not three runs at 45%.
        seeds = [(w, x) for w, v in got if len(v) > 1 for x in v]
        if seeds:
          ax.plot(*zip(*seeds), "o", color=colour[arm], alpha=0.35, ms=4)
    ax.axhline(recall.SOLVED, color="k", lw=0.7, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("accuracy per query (mean; dots: seeds)")
    ax.set_title(label)
    ax.grid(alpha=0.3)
  ax = axes[0][-1]
  for r in sorted(runs, key=lambda r: r["seed"]):
    if r["lr"] == recall.best_lr(runs, r["arm"]) and (
        task_label(r) == f"MQAR {recall.SCREEN['pairs']} pairs"
        and r["width"] == recall.SCREEN["width"]):
      ax.plot(*zip(*r["curve"]), ls="-" if r["seed"] == 0 else ":",
              color=colour[r["arm"]], label=r["arm"])
  ax.set_xlabel("step")
  ax.set_ylabel("accuracy (256 sequences)")
  ax.set_title(f"learning curves, screening cell\n(seed 0 solid, other seeds dotted)")
  ax.grid(alpha=0.3)
  legend = {}
  for a in axes[0]:
    for handle, name in zip(*a.get_legend_handles_labels()):
      legend.setdefault(name, handle)
  if legend:
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=4, fontsize=8,
               bbox_to_anchor=(0.5, -0.12))
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
  rates = sorted({lr for arm in recall.ARMS if arm not in recall.RATE_FROM
                  for lr in recall.rate_grid(runs, arm)})
  text = ["## Recall: MQAR, induction heads, selective copying\n",
          "Written by `python bench/recall.py --report_only` from `bench/results/recall.json` "
          f"({len(runs)} runs, {results.get('wall_s', 0) / 3600:.1f} h of training on the "
          f"machine that ran them). Models of {recall.LAYERS} layers, head_dim "
          f"{recall.HEAD_DIM}, trained at T = {recall.SEQ_LEN} (induction's length cells "
          f"at {recall.LONG_TRAIN_LEN}) in batches of {recall.BATCH} on fresh sequences for the "
          "steps shown; accuracy is exact match per query on "
          f"{recall.EVAL_SEQUENCES:,} fresh sequences; ✓ = solved (≥ 99%). The plan and the "
          "arms: `bench/recall.py`'s docstring; cells not listed have not run yet.\n",
          f"**Screening sweep** (MQAR {recall.SCREEN['pairs']} pairs, width "
          f"{recall.SCREEN['width']}, seed 0; a grid widened past an edge whose best rate is "
          "unsolved):\n",
          "| arm | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | chosen |",
          "|---|" + "---|" * (len(rates) + 1)]
  screen = f"MQAR {recall.SCREEN['pairs']} pairs"
  for arm in recall.ARMS:
    row = [table.get((screen, arm, recall.SCREEN["width"], lr)) for lr in rates]
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
  labels = sorted({task_label(r) for r in runs if r["task"] == "mqar"
                   and r.get("seq_len", recall.SEQ_LEN) == recall.SEQ_LEN
                   and r.get("placement", "uniform") == "uniform"
                   and not r.get("eval_placement") and not r.get("train_steps")})
  if labels:
    text += ["\n**Smallest width that solves MQAR** (– : none of the widths trained):\n",
             "| arm | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for arm in [a for a in recall.ARMS if any(r["arm"] == a for r in runs)]:
      widths = [smallest_solving_width(runs, label, arm) for label in labels]
      text.append(f"| {arm} | " + " | ".join("–" if w is None else str(w) for w in widths)
                  + " |")
  every = [(label, width) for label in sorted({task_label(r) for r in runs})
           for width in sorted({r["width"] for r in runs if task_label(r) == label})]
  text += _verdict_table(
      runs, [(label, width, arm) for label, width in every for arm in recall.ARMS
             if arm != "transformer_dot"], "transformer_dot",
      "\n**Verdicts against the transformer (dot)**: *the arm recalls more accurately* "
      "(Δ = arm − transformer_dot, each at its screened rate; SE over seeds where "
      "several, else over the test queries only):\n")
  text += _verdict_table(
      runs, [(label, width, arm) for label, width in every for arm in ("ban", "default")],
      "transformer_dot_matched",
      "\n**At equal parameters**: *the BAN recalls more accurately than a transformer of "
      "its size* (Δ = arm − transformer_dot_matched, the dot transformer with an MLP of "
      "3 × width, parameters within 1% of the BAN's, each at its own screened rate; "
      "SE over seeds where several, else over the test queries only):\n")
  screen = (f"MQAR {recall.SCREEN['pairs']} pairs", recall.SCREEN["width"])
  text += _verdict_table(
      runs, [(*screen, arm) for arm in recall.TAGGING_ARMS[1:]], "default",
      "\n**Context tagging**: *the variant recalls more accurately than the default "
      "system's learned tagging* (Δ = variant − default, both at the default's rate; "
      "SE over seeds where several, else over the test queries only):\n", column="variant")
  for old in results.get("superseded", []):
    text.append(f"\n*Superseded design* ({old['design']}): {old['why']}")
  text.append("\n![recall](../bench/results/recall.png)")
  text += eviction_lines(runs) + length_lines(runs)
  extra = os.path.splitext(out_json)[0] + "_length_eviction.png"
  if _plot_extra(runs, extra):
    text.append(f"\n![recall: length and eviction](../bench/results/{os.path.basename(extra)})")
  cli_runs.publish("recall", text, png)
