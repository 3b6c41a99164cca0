"""bench/kv_cache.py's plot and its section of docs/results.md, rebuilt from the JSON alone."""

import os

from bench import cli_runs

ALL_TERMS = ["tag", "surprisal", "attention"]
POLICIES = ("recent", "sinks", "h2o", "tova", "knorm", "gravity")


def _row(results, model, policy, budget, terms=None):
  terms = ALL_TERMS if terms is None else terms
  for r in results.get("bpb", []):
    if (r["model"], r["policy"], r["budget"], r["terms"]) == (model, policy, budget, terms):
      return r
  return None


def chart(results, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  models = sorted({r["model"] for r in results.get("bpb", [])})
  fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
  for ax, model in zip(axes[0], models):
    for policy in POLICIES:
      rows = sorted((r for r in results["bpb"] if r["model"] == model and r["policy"] == policy
                     and r["terms"] == ALL_TERMS), key=lambda r: r["budget"])
      if rows:
        ax.plot([r["budget"] for r in rows], [r["bpb"] for r in rows], marker="o",
                label=policy, lw=2.5 if policy == "gravity" else 1.2)
    full = _row(results, model, "full", 0)
    if full:
      ax.axhline(full["bpb"], color="k", ls="--", lw=1, label="full cache")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("cache budget (slots per layer)")
    ax.set_ylabel("held-out bits/byte")
    ax.set_title(f"{model}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def section(results) -> str:
  meta = results.get("meta", {})
  models = sorted({r["model"] for r in results.get("bpb", [])})
  budgets = sorted({r["budget"] for r in results.get("bpb", []) if r["budget"]})
  lines = ["## The inference level: a bounded KV cache\n",
           f"Written by `python bench/kv_cache.py --report_only` from "
           f"`bench/results/kv_cache.json`. Held-out text (WikiText-2 validation, read from "
           f"../shared/data): {meta.get('streams')} streams of {meta.get('stream_len')} byte "
           "tokens decoded as one batch, teacher-forced one token at a time through the cache. "
           "The models were trained at a window of 128: past it every position is "
           "extrapolated, so the full cache is not an upper bound for a model whose positions "
           "do not extrapolate (RoPE), and every policy that keeps old tokens (sinks, h2o, tova, "
           "knorm, gravity) shows a RoPE model distances it never trained on: for the "
           "transformer, only `recent` at 128 slots or fewer stays inside its training "
           "distances, and its table measures that as much as each policy's choices. The full "
           "system's power-law field discounts old tokens by design, so its table compares the "
           "policies themselves.\n"]
  for model in models:
    lines.append(f"\n### {model}\n")
    lines.append("| policy | " + " | ".join(f"budget {b}" for b in budgets) + " |")
    lines.append("|---" * (len(budgets) + 1) + "|")
    full = _row(results, model, "full", 0)
    if full:
      lines.append(f"| full cache | {full['bpb']:.4f} (all budgets) |" + " |" * (len(budgets)
                                                                            - 1))
    for policy in POLICIES:
      cells = [_row(results, model, policy, b) for b in budgets]
      lines.append(f"| {policy} | " + " | ".join("" if c is None else f"{c['bpb']:.4f}"
                                                  for c in cells) + " |")
    singles = [r for r in results["bpb"] if r["model"] == model and r["policy"] == "gravity"
               and r["terms"] != ALL_TERMS]
    if singles:
      lines.append(f"\nGravity with one term at budget {singles[0]['budget']}: " + ", ".join(
          f"{'+'.join(r['terms'])} {r['bpb']:.4f}" for r in singles) + ".\n")
    recall = [r for r in results["bpb"] if r["model"] == model and "second_bpb" in r]
    if recall:
      lines.append("\nRecall (a passage, a gap, the passage again): bits/byte of the second "
                   "reading, and what the policy saved there against `recent` at the same "
                   "budget, which has dropped the passage (the full cache row: against recent "
                   "at the smallest budget):\n")
      lines.append("| policy | budget | first reading | second reading | saved vs recent |")
      lines.append("|---|---|---|---|---|")
      smallest = min((r["budget"] for r in recall if r["budget"]), default=0)
      for r in sorted(recall, key=lambda r: (r["budget"], r["policy"])):
        base = _row(results, model, "recent", r["budget"] or smallest)
        saved = "" if base is None else f"{base['second_bpb'] - r['second_bpb']:+.3f}"
        lines.append(f"| {r['policy']} | {r['budget'] or 'full'} | {r['first_bpb']:.3f} | "
                     f"{r['second_bpb']:.3f} | {saved} |")
  speed = results.get("speed", [])
  if speed:
    lines.append("\nDecoding speed, batch 1, on "
                 f"{meta.get('backend', '?')} (ratios from one run; absolute times only mean "
                 "something on a GPU):\n")
    lines.append("| model | context | cached ms/token | recompute ms/token | speed-up | "
                 "cache MiB |")
    lines.append("|---|---|---|---|---|---|")
    for r in speed:
      lines.append(f"| {r['model']} | {r['context']} | {r['cached_s_per_token'] * 1e3:.2f} | "
                   f"{r['recompute_s_per_token'] * 1e3:.2f} | {r['speedup']:.1f}x | "
                   f"{r['cache_bytes'] / 2**20:.2f} |")
  lines.append("\n![kv cache](../bench/results/kv_cache.png)\n")
  lines += verdicts(results)
  return "\n".join(lines)


def paired(a, b):
  """(mean of a − b over streams, its standard error): the same streams under two policies."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  d = np.asarray(a["bpb_streams"]) - np.asarray(b["bpb_streams"])
  se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
  return float(d.mean()), se


def verdicts(results) -> list[str]:
  """Gravity eviction against H2O, TOVA and sinks per model and budget: wins / ties / loses
  (a paired difference over the streams beyond twice its standard error), and its terms."""
  lines = ["\nGravity eviction against the others (paired over the streams; wins or loses "
           "only beyond twice the standard error):\n"]
  models = sorted({r["model"] for r in results.get("bpb", [])})
  budgets = sorted({r["budget"] for r in results.get("bpb", []) if r["budget"]})
  for model in models:
    for budget in budgets:
      g = _row(results, model, "gravity", budget)
      if g is None or "bpb_streams" not in g:
        continue
      parts = []
      for other in ("h2o", "tova", "sinks"):
        o = _row(results, model, other, budget)
        if o is None:
          continue
        mean, se = paired(g, o)
        word = "wins" if mean < -2 * se else ("loses" if mean > 2 * se else "ties")
        parts.append(f"{word} against {other} ({mean:+.4f} ± {se:.4f})")
      lines.append(f"- {model}, budget {budget}: gravity " + "; ".join(parts) + ".")
    singles = [r for r in results["bpb"] if r["model"] == model and r["policy"] == "gravity"
               and r["terms"] != ALL_TERMS]
    if singles:
      best = min(singles, key=lambda r: r["bpb"])
      whole = _row(results, model, "gravity", singles[0]["budget"])
      lines.append(f"- {model}: of the single terms at budget {best['budget']}, "
                   f"{'+'.join(best['terms'])} alone scores best ({best['bpb']:.4f}; all terms "
                   f"{whole['bpb']:.4f})." if whole else "")
  return lines


def report(results, out_json):
  if not results.get("bpb"):
    print("[kv_cache] nothing measured yet")
    return
  png = os.path.splitext(out_json)[0] + ".png"
  chart(results, png)
  text = section(results)
  print(text)
  cli_runs.write_results_section("kv_cache", text)
  print(f"wrote {png} and {cli_runs.RESULTS_MD}")
