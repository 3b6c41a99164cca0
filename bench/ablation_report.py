"""The ablation's table, bar chart and claim-by-claim verdicts (docs/results.md).

Kept apart from bench/ablation.py so that the report can be rebuilt from the JSON alone.
Numbers are means ± sample std over the seeds trained at each arm's best learning rate, seed 0
(the run that chose the rate) not counted; a difference counts as shown when it exceeds twice
its standard error. The verdicts under the earlier protocol (seed 0 counted) stand beside.
"""

import math

import numpy as np

from bench import cli_runs

ORDER = ("transformer", "transformer_2x", "ban", "ban+gravity", "+tagging", "+power_law", "full",
         "full-gravity", "full-tagging", "full-power_law", "full_surprisal_tags",
         "full_inverse_square", "default-tagging", "default-power_law", "default-wells")


def extension(sweep: dict, grid, max_extensions: int):
  """The rate to add to a finished sweep {lr: val} whose best sits on its edge, or None."""
  rates = sorted(sweep)
  best = min(sweep, key=sweep.get)
  added = len([r for r in rates if r not in grid])
  if len(rates) < 2 or added >= max_extensions or not math.isfinite(sweep[best]):
    return None
  if best == rates[-1]:
    return best * 2
  if best == rates[0]:
    return best / 2
  return None


def summarize(results: dict, scale: str = "cpu", *, count_seed0: bool = False
              ) -> dict[str, dict]:
  """{arm: mean/std of val and held-out bits/byte at its best lr, with its run facts}.

  `count_seed0`: the earlier protocol, whose mean included the run that chose the rate.
  """
  out = {}
  runs = [r for r in results.get("runs", []) if r["scale"] == scale]
  for arm in ORDER:
    mine = [r for r in runs if r["arm"] == arm]
    if not mine:
      continue
    sweep = {r["lr"]: r["val_bpb"] for r in mine if r["seed"] == 0}
    if not sweep:
      continue
    best = min(sweep, key=sweep.get)
    at_best = [r for r in mine if r["lr"] == best and not r.get("diverged")]
    chosen = [r for r in at_best if count_seed0 or r["seed"] != 0]
    seed0 = [r["val_bpb"] for r in at_best if r["seed"] == 0]
    if not chosen:
      continue
    val = np.array([r["val_bpb"] for r in chosen])
    held = np.array([r["heldout_bpb"] for r in chosen if r.get("heldout_bpb") is not None])
    rates = sorted(sweep)
    out[arm] = {
        "lr": best, "seeds": len(chosen), "sweep": sweep,
        "seed0_val": seed0[0] if seed0 else float("nan"),
        # The best rate at the end of the grid means the sweep may not have found the optimum.
        "lr_at_edge": len(rates) > 1 and best in (rates[0], rates[-1]),
        "val_mean": float(val.mean()), "val_std": float(val.std(ddof=1)) if len(val) > 1 else
        float("nan"),
        "heldout_mean": float(held.mean()) if len(held) else float("nan"),
        "heldout_std": float(held.std(ddof=1)) if len(held) > 1 else float("nan"),
        "gzip": chosen[0].get("val_gzip_bpb"),
        "params": chosen[0]["params"], "steps": chosen[0]["steps"],
        "train_flops": float(np.mean([r["train_flops"] for r in chosen])),
        "tokens_trained": chosen[0]["tokens_trained"],
        "residual": (float(np.mean([r["attractor_residual_rel"] for r in chosen]))
                     if chosen[0].get("attractor_residual_rel") is not None else None),
        "tokens_per_sec": float(np.median([r["tokens_per_sec"] for r in chosen
                                           if r.get("tokens_per_sec")] or [float("nan")])),
    }
  return out


def _combination(summary, weights: dict[str, float]):
  """(Σ w·mean, its standard error) over arms trained independently; None if one is missing.

  The error is nan when an arm has a single seed (its spread is unknown).
  """
  if any(a not in summary for a in weights):
    return None
  mean = sum(w * summary[a]["val_mean"] for a, w in weights.items())
  if any(summary[a]["seeds"] < 2 for a in weights):
    return mean, float("nan")
  var = sum(w * w * summary[a]["val_std"] ** 2 / summary[a]["seeds"] for a, w in weights.items())
  return mean, math.sqrt(var)


def _diff(summary, a, b):
  """(mean of a − b, its standard error), None if either arm is missing."""
  return _combination(summary, {a: 1.0, b: -1.0})


def _heldout_z(summary, a, b) -> str:
  """The same difference on the held-out text, as a z (negative: a is better)."""
  if a not in summary or b not in summary:
    return ""
  sa, sb = summary[a], summary[b]
  if min(sa["seeds"], sb["seeds"]) < 2 or math.isnan(sa["heldout_mean"] + sb["heldout_mean"]):
    return ""
  se = math.sqrt(sa["heldout_std"] ** 2 / sa["seeds"] + sb["heldout_std"] ** 2 / sb["seeds"])
  mean = sa["heldout_mean"] - sb["heldout_mean"]
  return f"; held-out {mean:+.4f} (z = {-mean / se:.1f})" if se > 0 else ""


def _pair(summary, a, b, want_negative=True):
  word, evidence = verdict(_diff(summary, a, b), want_negative)
  return word, evidence + _heldout_z(summary, a, b)


def verdict(d, want_negative=True):
  """yes / no / not shown for a difference (bits/byte; negative = the first arm is better)."""
  if d is None:
    return "not run", ""
  mean, se = d
  if math.isnan(se):
    return "not shown", f"{mean:+.4f} (one seed)"
  if se == 0:
    return "not shown", f"{mean:+.4f} (no spread between seeds)"
  z = -mean / se if want_negative else mean / se
  word = "yes" if z > 2 else ("no" if z < -2 else "not shown")
  return word, f"{mean:+.4f} ± {se:.4f} (z = {z:.1f})"


def claims(summary) -> list[tuple[str, str, str]]:
  """(claim, verdict, evidence) for the paper's claims."""
  out = []
  # With parts a, b and an interaction I, full's gain over ban is a + b + I while the
  # leave-one-out gains sum to a + b + 2I: their excess over the total is the interaction,
  # positive when the parts help more together than apart (superadditive). As a combination of
  # arms: Σ_p (full−p) − 4·full − (ban − full) = Σ_p (full−p) − 3·full − ban, whose error
  # counts the full arm once with its weight.
  leave_one_out = ("full-gravity", "full-tagging", "full-power_law", "+power_law")
  interaction = _combination(summary, {**{a: 1.0 for a in leave_one_out}, "full": -3.0,
                                       "ban": -1.0})
  total = _diff(summary, "ban", "full")
  if interaction is not None:
    word, excess = verdict(interaction, want_negative=False)
    gain_word, gain = verdict(total, want_negative=False)
    # A positive interaction means the parts need each other; it is the paper's claim only if
    # the whole also gains over the BAN. A full system worse than the BAN answers "no".
    if gain_word == "no":
      word = "no"
    out.append(("The attention and training levels together are superadditive", word,
                f"full's gain over ban {gain}; interaction (leave-one-out gains minus that "
                f"gain) {excess}"))
  else:
    out.append(("The attention and training levels together are superadditive", "not run", ""))
  out.append(("A small BAN (the full system) beats a transformer with 2x the non-embedding "
              "parameters", *_pair(summary, "full", "transformer_2x")))
  word, evidence = _pair(summary, "full", "+power_law")
  if "full" in summary and "+power_law" in summary:
    ratio = summary["full"]["train_flops"] / summary["+power_law"]["train_flops"]
    evidence += f"; wells used {ratio:.3f}x the FLOPs of no wells"
  out.append(("Gravity Wells help (full vs full minus wells, equal FLOPs)", word, evidence))
  out.append(("Gravity attention helps the BAN (ban+gravity vs ban)",
              *_pair(summary, "ban+gravity", "ban")))
  out.append(("Context tagging helps (+tagging vs ban+gravity)",
              *_pair(summary, "+tagging", "ban+gravity")))
  out.append(("The power-law field helps (+power_law vs +tagging)",
              *_pair(summary, "+power_law", "+tagging")))
  out.append(("Tags from surprisal (information density) beat learned tags "
              "(full_surprisal_tags vs full)",
              *_pair(summary, "full_surprisal_tags", "full")))
  out.append(("Tags from surprisal help at all (full_surprisal_tags vs full-tagging)",
              *_pair(summary, "full_surprisal_tags", "full-tagging")))
  out.append(("The inverse-square score beats Gravity-2's in the full system "
              "(full_inverse_square vs full)",
              *_pair(summary, "full_inverse_square", "full")))
  out.append(("The full system beats the transformer at equal FLOPs",
              *_pair(summary, "full", "transformer")))
  # The shipped default (full_inverse_square) against each of its parts removed.
  for arm, part in (("default-tagging", "context tagging"),
                    ("default-power_law", "the power-law field (RoPE instead)"),
                    ("default-wells", "Gravity Wells"),
                    ("full-gravity", "the inverse-square score (the dot score instead)")):
    out.append((f"In the shipped default, {part} helps (full_inverse_square vs {arm})",
                *_pair(summary, "full_inverse_square", arm)))
  out.append(("The shipped default beats the transformer at equal FLOPs",
              *_pair(summary, "full_inverse_square", "transformer")))
  return out


def table(summary) -> str:
  lines = ["| arm | params | steps | best lr (swept) | seeds | seed 0 val | val bits/byte | "
           "held-out bits/byte | gzip (same bytes) | tokens/s | train FLOPs | "
           "attractor residual |",
           "|" + "---|" * 12]
  for arm, s in summary.items():
    swept = ", ".join(f"{lr:g}" for lr in sorted(s["sweep"]))
    lines.append(
        f"| {arm} | {s['params']:,} | {s['steps']} | {s['lr']:g}{'*' if s['lr_at_edge'] else ''}"
        f" ({swept}) | {s['seeds']} | {s['seed0_val']:.4f} | "
        f"{s['val_mean']:.4f} ± {s['val_std']:.4f} | {s['heldout_mean']:.4f} ± "
        f"{s['heldout_std']:.4f} | {s['gzip'] or float('nan'):.3f} | {s['tokens_per_sec']:,.0f} | "
        f"{s['train_flops']:.3g} | "
        f"{'-' if s['residual'] is None else format(s['residual'], '.1%')} |")
  return "\n".join(lines)


def chart(summary, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  arms = list(summary)
  fig, ax = plt.subplots(figsize=(9, 4))
  means = [summary[a]["val_mean"] for a in arms]
  stds = [0 if math.isnan(summary[a]["val_std"]) else summary[a]["val_std"] for a in arms]
  ax.bar(arms, means, yerr=stds, capsize=3, color=["#888" if a.startswith("transformer") else
                                                   "#4a7" for a in arms])
  gzip = [summary[a]["gzip"] for a in arms if summary[a]["gzip"]]
  if gzip:
    ax.axhline(gzip[0], color="k", ls="--", lw=1, label="gzip -9 of the same bytes")
    ax.legend()
  lo = min(means) - 3 * max(stds + [0.01])
  ax.set_ylim(lo, max(means) + 3 * max(stds + [0.01]))
  ax.set_ylabel("validation bits/byte (mean ± std)")
  ax.set_title("Ablation at equal training FLOPs")
  plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def report(results: dict, json_path: str, scale: str = "cpu"):
  summary = summarize(results, scale)
  if not summary:
    print("[ablation] no finished runs yet")
    return
  chart(summary, json_path.replace(".json", ".png"))
  text = table(summary)
  verdicts = claims(summary)
  before = {c: w for c, w, _ in claims(summarize(results, scale, count_seed0=True))}
  print(text)
  for claim, word, evidence in verdicts:
    print(f"- {claim}: {word} {evidence} (seed 0 counted: {before.get(claim, '-')})")
  runs = [r for r in results["runs"] if r["scale"] == scale]
  flops = [r["train_flops"] for r in runs if not r.get("diverged")]
  spread = (max(flops) / min(flops) - 1) if flops else float("nan")
  lines = [f"""## The Information Gravity system, mechanism by mechanism

Written by `python bench/ablation.py --report_only` from `bench/results/ablation.json`
({len(runs)} finished runs at `--scale={scale}`; the largest spread of training FLOPs between
runs is {spread:.1%}). The protocol (at the top of this file): each arm's learning
rate is the best of a 3-value sweep at seed 0, widened by factors of 2 while the best sits on
the grid's edge (a `*` marks one still on the edge after two widenings, or not yet widened);
the mean ± std counts the seeds trained after the choice (1-2, or 1-5 for the arms that set a
default), not seed 0, whose value stands in its own column. Each verdict gives the held-out z
beside the validation z, and the verdict the earlier protocol (seed 0 counted) gave. Lower
bits/byte is better. Tokens/s are
medians over a run's logged intervals on the machine named in the JSON; on a shared 2-core CPU
they are rough. The attractor residual is the BAN's relative step ‖z_T − z_(T−1)‖/‖z_T‖ after
its configured iterations at the end of training, mean over layers: how far from a fixed point
the attractor stops. A verdict is "yes"
or "no" only where the difference exceeds twice its standard error; with one seed it is "not
shown".

{text}

![ablation](../bench/results/ablation.png)

| claim | verdict | evidence (bits/byte, negative = first arm better) | seed 0 counted |
|---|---|---|---|
"""]
  for claim, word, evidence in verdicts:
    lines.append(f"| {claim} | {word} | {evidence} | {before.get(claim, '-')} |\n")
  cli_runs.write_results_section("ablation", "".join(lines))
  print(f"wrote {cli_runs.RESULTS_MD}")
