"""The field theory's three checks and the attention field, on one model.

Each check returns a JSON-ready dict of what it measured (per-query values included, so runs
can be compared query by query) and the arrays its figures need under the key "plot".
Verdicts ("held" / "did not hold" / "inconclusive") are read off the intervals by `verdict`.
"""

import numpy as np

from ban_jax.diagnostics import cloze
from ban_jax.diagnostics import field
from ban_jax.diagnostics import landscape
from ban_jax.diagnostics import mass
from ban_jax.diagnostics import potential
from ban_jax.diagnostics import readout
from ban_jax.diagnostics import stats
from ban_jax.diagnostics import sweep

COMPONENTS = ("entropy", "depth", "unigram_novelty", "surprisal_novelty")
# "exact": the first generated word is not the answer; "shape": not even of its type.
ERRORS = ("exact", "shape")
# A predicted positive correlation "did not hold" when its interval excludes even this weak one.
WEAK = 0.1


def verdict(ci: dict, sign: int = 1) -> str:
  """"held" if the interval lies beyond 0 in the predicted direction, "did not hold" if it
  rules out even a weak effect (|ρ| ≥ 0.1) that way, else "inconclusive"."""
  low, high = (ci["low"], ci["high"]) if sign > 0 else (-ci["high"], -ci["low"])
  if low > 0:
    return "held"
  if high < WEAK:
    return "did not hold"
  return "inconclusive"


def masses(m: dict) -> dict:
  """The paper's M (novelty as unigram KL), M with the model-surprisal novelty, and M without
  its entropy term, each over standardised components with α = β = γ = 1."""
  return {
      "M": mass.information_mass(m["entropy"], m["depth"], m["unigram_novelty"]),
      "M_surprisal": mass.information_mass(m["entropy"], m["depth"], m["surprisal_novelty"]),
      "M_without_entropy": mass.information_mass(0 * m["depth"], m["depth"],
                                                 m["unigram_novelty"]),
  }


def _correlations(predictors: dict, outcome, seed: int) -> dict:
  return {name: stats.spearman_ci(x, outcome, seed=seed) for name, x in predictors.items()}


def landscape_check(measures: dict, output_embeddings, *, shown: int = 20, seed: int = 0):
  """Check 1: do high-mass queries make deeper, more complex wells?

  Args:
    measures: `readout.query_measures` of the query pool.
    output_embeddings: float [vocab, width], the rows that make the logits.
    shown: queries drawn at evenly spaced quantiles of M for the figures.
  """
  layouts = {"pca": landscape.pca_layout(output_embeddings),
             "mds": landscape.mds_layout(output_embeddings)}
  phi = np.asarray(potential.potential(measures["logits"]), np.float64)
  wells = {
      "depth": np.asarray([landscape.well_depth(p) for p in phi]),
      "width": np.asarray([landscape.well_width(p) for p in phi]),
      **{f"minima_{k}": np.asarray([landscape.local_minima(p, xy) for p in phi])
         for k, xy in layouts.items()},
  }
  predictors = {**masses(measures), **{c: measures[c] for c in COMPONENTS}}
  order = np.argsort(predictors["M"])
  picked = order[np.linspace(0, len(order) - 1, min(shown, len(order))).round().astype(int)]
  tests = {w: _correlations(predictors, v, seed) for w, v in wells.items()}
  return {
      "queries": len(phi),
      "correlations": tests,
      "verdicts": {w: verdict(tests[w]["M"]) for w in wells},
      "layouts_agree": {
          "minima_spearman": stats.spearman_ci(wells["minima_pca"], wells["minima_mds"],
                                               seed=seed),
          "neighbour_overlap": landscape.layout_agreement(layouts["pca"], layouts["mds"])},
      "per_query": {**{k: v.tolist() for k, v in wells.items()},
                    **{k: np.asarray(v).tolist() for k, v in predictors.items()}},
      "shown": picked.tolist(),
      "plot": {"layouts": layouts, "phi": phi[picked], "M": predictors["M"][picked],
               "wells": wells, "predictors": predictors},
  }


def cloze_check(model, params, tokenizer, items, train_distribution, *,
                temperatures=(0.5, 1.0), answer_tokens: int = 24, iterations: int = 20,
                void_probability: float = 0.1, seed: int = 0):
  """Check 2: does M predict errors on factual cloze, more so at low temperature?

  Args:
    items: `cloze.Item`s with equal-length prefixes.
    train_distribution: float [vocab], for the unigram novelty.
    temperatures: sampling temperatures compared.
    answer_tokens: tokens generated per item (the first word is read from them).
    iterations: power iterations for the curvature at the chosen token.
    void_probability: "P(t) ≪ 1" is P(t) below this.
  """
  prefixes = np.stack([tokenizer.encode(i.prefix) for i in items])
  answers = [tokenizer.encode(i.answer) for i in items]
  measures = readout.query_measures(model, params, prefixes, train_distribution)
  predictors = {**masses(measures), **{c: measures[c] for c in COMPONENTS}}
  surprisal, rank = readout.continuation_surprisal(model, params, prefixes, answers)
  rng = np.random.default_rng(seed)
  half = rng.permutation(len(items)) < len(items) // 2
  features = np.stack([mass.standardize(measures[c]) for c in
                       ("entropy", "depth", "unigram_novelty")], 1)
  out = {"items": len(items), "kinds": {k: sum(i.kind == k for i in items)
                                        for k in cloze.KINDS},
         "graded": {"answer_surprisal": _correlations(predictors, surprisal, seed),
                    "answer_rank": _correlations(predictors, rank, seed)},
         "by_temperature": {}}
  log_p = -np.asarray(potential.potential(measures["logits"]), np.float64)
  for t in temperatures:
    generated = readout.sample(model, params, prefixes, length=answer_tokens, temperature=t,
                               seed=seed)
    words = [tokenizer.decode(g) for g in generated]
    truth = [i.answer for i in items]
    wrong = {"exact": cloze.errors(words, truth), "shape": cloze.shape_errors(words, truth)}
    chosen = generated[:, 0]
    p_chosen = np.exp(log_p[np.arange(len(items)), chosen])
    curvature = readout.top_curvature(model, params, prefixes, chosen, iterations=iterations,
                                      seed=seed)
    void = p_chosen < void_probability
    row = {"void_items": int(void.sum()),
           "curvature_vs_probability": stats.spearman_ci(np.abs(curvature), p_chosen,
                                                         seed=seed),
           "per_item": {"curvature": curvature.tolist(), "p_chosen": p_chosen.tolist(),
                        "first_word": [cloze.first_word(x) for x in words],
                        **{f"{k}_error": v.tolist() for k, v in wrong.items()}}}
    for kind, e in wrong.items():
      w, b = stats.logistic_regression(features[half], e[half])
      row[kind] = {
          "error_rate": float(e.mean()),
          "correlations": _correlations(predictors, e, seed),
          "fitted_alpha_beta_gamma": w.tolist(), "fitted_bias": b,
          "heldout_auc": stats.auc(features[~half] @ w + b, e[~half]),
          "void_curvature_vs_error": (stats.spearman_ci(np.abs(curvature[void]), e[void],
                                                        seed=seed)
                                      if void.sum() > 10 else None)}
    out["by_temperature"][str(t)] = row
  rows = out["by_temperature"]
  low, high = str(min(temperatures)), str(max(temperatures))
  out["stronger_at_low_temperature"] = {
      kind: _paired_difference(predictors["M"], rows[low]["per_item"][f"{kind}_error"],
                               rows[high]["per_item"][f"{kind}_error"], seed)
      for kind in ERRORS}
  out["per_item"] = {"answer": [i.answer for i in items], "kind": [i.kind for i in items],
                     "answer_surprisal": surprisal.tolist(), "answer_rank": rank.tolist(),
                     **{k: np.asarray(v).tolist() for k, v in predictors.items()}}
  out["plot"] = {"predictors": predictors, "surprisal": surprisal,
                 "errors": {f"{kind}, T={t}": np.asarray(rows[str(t)]["per_item"][f"{kind}_error"])
                            for t in temperatures for kind in ERRORS}}
  return out


def _paired_difference(x, first, second, seed):
  """Bootstrap of ρ(x, first) − ρ(x, second), resampling items jointly."""
  return stats.bootstrap(lambda a, b, c: stats.spearman(a, b) - stats.spearman(a, c),
                         np.asarray(x), np.asarray(first), np.asarray(second), seed=seed)


def temperature_check(model, params, prompts, *, newline: int, vocab_size: int,
                      temperatures=(0.1, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0), length: int = 256,
                      seed: int = 0):
  """Check 3: diversity of self-generated text against temperature."""
  fixed = readout.last_logits(model, params, prompts)
  rows = []
  for t in temperatures:
    samples = readout.sample(model, params, prompts, length=length, temperature=t, seed=seed)
    rows.append({
        "temperature": t,
        "entropy": sweep.empirical_entropy(samples),
        **{f"distinct_{n}": sweep.distinct_n(samples, n) for n in (1, 2, 3)},
        "repetition": sweep.repetition_rate(samples),
        "line_length": sweep.line_lengths(samples, newline),
        # At the prompts' own last positions: rises with T by construction (a sanity line).
        "fixed_context_entropy": float(np.mean(potential.entropy(fixed, t))),
    })
  entropies = [r["entropy"] for r in rows]
  ceiling = float(np.log(min(vocab_size, len(prompts) * length)))
  return {
      "rows": rows, "log_vocab": float(np.log(vocab_size)), "entropy_ceiling": ceiling,
      "entropy_monotone": bool(np.all(np.diff(entropies) >= 0)),
      "entropy_share_of_ceiling_at_max_T": entropies[-1] / ceiling,
      "knee_temperature": sweep.knee(temperatures, [r["repetition"] for r in rows]),
  }


def field_check(weights, *, segment_ids=None, learned_power=None, max_distance=None,
                samples: int = 200, seed: int = 0):
  """The attention field: per layer and head, w(d) fitted to c·d^(−p).

  Args:
    weights: float [layers, windows, heads, L, L].
    learned_power: optional float [layers, heads], the power-law positional field's own
      exponents, reported beside the fits.
    max_distance: the largest distance fitted (None: L // 2, where enough pairs remain).
  """
  weights = np.asarray(weights)
  max_distance = max_distance or weights.shape[-1] // 2
  layers, curves = [], []
  for layer, w in enumerate(weights):
    sums, counts = field.weight_by_distance(w, segment_ids)
    fits = field.fit_exponents(sums, counts, samples=samples, seed=seed,
                               max_distance=max_distance)
    if learned_power is not None:
      for head, f in enumerate(fits):
        f["learned_p"] = float(learned_power[layer][head])
    layers.append({"heads": fits, "summary": field.exponent_summary(fits)})
    curves.append(field.mean_by_distance(sums, counts))
  p = np.asarray([f["p"] for layer in layers for f in layer["heads"]])
  return {"layers": layers, "mean_p": float(np.nanmean(p)), "max_distance": max_distance,
          "heads_whose_ci_holds_2": sum(l["summary"]["heads_whose_ci_holds_2"] for l in layers),
          "heads": int(p.size), "plot": {"curves": curves, "layers": layers}}
