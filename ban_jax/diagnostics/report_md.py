"""report.md: each of the paper's predictions as a row (verdict, figure, interval)."""

from ban_jax.diagnostics import checks


def _ci(c) -> str:
  if c is None:
    return "too few items"
  return f"{c['value']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"


def prediction_rows(report: dict) -> list[tuple[str, str, str]]:
  """(prediction, verdict, measured) for every prediction the report tests."""
  rows = []
  c1 = report["check1"]["correlations"]
  for well, what in (("depth", "deeper wells (median Φ − min Φ)"),
                     ("width", "wider wells (tokens within 1 nat of the minimum)"),
                     ("minima_pca", "more local minima (PCA layout)"),
                     ("minima_mds", "more local minima (MDS layout)")):
    rows.append((f"1. high M → {what}", checks.verdict(c1[well]["M"]),
                 f"ρ = {_ci(c1[well]['M'])}"))
    rows.append(("1. … with M without its entropy term",
                 checks.verdict(c1[well]["M_without_entropy"]),
                 f"ρ = {_ci(c1[well]['M_without_entropy'])}"))
  agree = report["check1"]["layouts_agree"]
  rows.append(("1. the wells' structure is the same on both layouts",
               checks.verdict(agree["minima_spearman"]),
               f"ρ(minima PCA, minima MDS) = {_ci(agree['minima_spearman'])}; "
               f"{agree['neighbour_overlap']:.0%} of layout neighbours shared"))
  c2 = report["check2"]
  for t, row in c2["by_temperature"].items():
    for kind in checks.ERRORS:
      r = row[kind]
      constant = r["error_rate"] in (0.0, 1.0)
      rows.append((f"2. high M → more {kind} errors, T = {t}",
                   "inconclusive" if constant else checks.verdict(r["correlations"]["M"]),
                   f"error rate {r['error_rate']:.1%}" + (
                       " (no variation to correlate)" if constant else
                       f"; ρ = {_ci(r['correlations']['M'])}; fitted α, β, γ: held-out AUC "
                       f"{r['heldout_auc']:.3f}")))
  rows.append(("2. high M → higher surprisal of the true answer (graded error)",
               checks.verdict(c2["graded"]["answer_surprisal"]["M"]),
               f"ρ = {_ci(c2['graded']['answer_surprisal']['M'])}"))
  for kind, diff in c2["stronger_at_low_temperature"].items():
    rows.append((f"2. the effect on {kind} errors is stronger at low T",
                 "inconclusive" if diff["value"] != diff["value"] else checks.verdict(diff),
                 f"ρ(T low) − ρ(T high) = {_ci(diff)}"))
  for t, row in c2["by_temperature"].items():
    for kind in checks.ERRORS:
      c = row[kind]["void_curvature_vs_error"]
      usable = c is not None and c["value"] == c["value"]
      rows.append((f"2. semantic voids: where P(t) < 0.1, larger curvature → {kind} error, "
                   f"T = {t}", checks.verdict(c) if usable else "inconclusive",
                   f"{row['void_items']} items; ρ(|λ_max|, error) = "
                   + (_ci(c) if usable else "undefined")))
  c3 = report["check3"]
  rows.append(("3. output entropy rises monotonically with T",
               "held" if c3["entropy_monotone"] else "did not hold",
               ", ".join(f"{r['temperature']:g}: {r['entropy']:.2f}" for r in c3["rows"])))
  rows.append(("3. output entropy approaches log |V| at high T",
               "held" if c3["entropy_share_of_ceiling_at_max_T"] > 0.95 else "did not hold",
               f"{c3['entropy_share_of_ceiling_at_max_T']:.1%} of the ceiling "
               f"log min(|V|, tokens) at T = {c3['rows'][-1]['temperature']:g}"))
  knee = c3["knee_temperature"]
  repetition = [r["repetition"] for r in c3["rows"]]
  rows.append(("3. a knee between capture and thermal motion",
               "held" if knee == knee else "did not hold",
               f"8-gram repetition {repetition[0]:.2f} at T = {c3['rows'][0]['temperature']:g} "
               f"→ {repetition[-1]:.2f} at T = {c3['rows'][-1]['temperature']:g}; " +
               (f"halfway at T ≈ {knee:.2f}" if knee == knee else
                "it does not fall by 0.1: no knee")))
  f = report["field"]
  fitted = f["mean_p"] == f["mean_p"]
  rows.append(("field: attention weight falls as d^(−2) (inverse square)",
               "inconclusive" if not fitted else
               "held" if f["heads_whose_ci_holds_2"] == f["heads"] else
               ("did not hold" if f["heads_whose_ci_holds_2"] == 0 else "inconclusive"),
               f"mean fitted p = {f['mean_p']:.2f}; {f['heads_whose_ci_holds_2']} of "
               f"{f['heads']} heads' intervals hold 2"))
  return rows


def render(report: dict) -> str:
  m = report["model"]
  lines = [
      f"# Information-gravity diagnostics: {report['workdir']}",
      "",
      f"Step {report['step']}; {m.get('kind', 'model')} with {m.get('attention')} attention, "
      f"{m.get('positional')} positions, tagging {m.get('tagging')}. Queries: "
      f"{report['settings']['query_bytes']}-byte windows of {report['queries']}; cloze from "
      "the validation split. Intervals are 95% bootstrap intervals of Spearman's ρ. Verdict: "
      "held = the interval lies beyond 0 in the predicted direction; did not hold = it rules "
      f"out even ρ = {checks.WEAK} that way; else inconclusive.",
      "",
      "| prediction | verdict | measured |",
      "|---|---|---|",
  ]
  lines += [f"| {p} | {v} | {x} |" for p, v, x in prediction_rows(report)]
  lines += [
      "",
      "Circularity: well depth and the entropy H are read from the same next-token "
      "distribution (a peaked distribution has both a deep well and a low entropy), so the "
      "rows with M include a built-in negative term; the rows without the entropy term do not.",
      "",
      "Figures: check1_landscape_pca.png, check1_landscape_mds.png, check1_wells_vs_mass.png, "
      "check2_errors_vs_mass.png, check3_temperature.png, field.png"
      + (", field_over_training.png" if "field_over_training" in report else "") + ".",
      "",
  ]
  return "\n".join(lines)
