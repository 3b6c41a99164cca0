"""bench/recall.py: the plan follows the screen, a run trains and reports, the report renders."""

import numpy as np

from bench import cli_runs
from bench import recall
from bench import recall_report


def _run(arm, lr, accuracy, **cell):
  cell = {**recall.SCREEN, **cell}
  return dict(cell, arm=arm, lr=lr, seed=cell.pop("seed", 0), accuracy=accuracy, steps=100,
              queries=100, curve=[[50, accuracy / 2], [100, accuracy]], losses=[1.0],
              params=1000, wall_s=1.0)


def test_the_plan_screens_first_then_uses_the_chosen_rate():
  arms = ["transformer_dot", "default"]
  first = recall.plan([], arms, recall.STAGES)
  assert [c["arm"] for c in first] == ["transformer_dot"] * 3 + ["default"] * 3  # screen only
  assert {c["lr"] for c in first} == set(recall.LEARNING_RATES)
  runs = [_run("transformer_dot", lr, acc) for lr, acc in zip(recall.LEARNING_RATES,
                                                                (0.3, 0.97, 0.6))]
  assert recall.best_lr(runs, "transformer_dot") == recall.LEARNING_RATES[1]
  assert recall.best_lr(runs, "default") is None
  cells = recall.plan(runs, arms, recall.STAGES)
  dot = [c for c in cells if c["arm"] == "transformer_dot"]
  assert {c["lr"] for c in dot} == {recall.LEARNING_RATES[1]}
  assert recall.is_eviction_cell(dot[0])                 # eviction right after the screen
  widths = {(c.get("pairs"), c["width"]) for c in dot if c["task"] == "mqar" and not c["seed"]
            and not recall.is_eviction_cell(c)}
  assert widths == {(p, recall.WIDTHS[0]) for p in recall.WIDTH_PAIRS}  # the smallest first
  assert {c["task"] for c in dot} == {"mqar", "induction", "copying"}
  # The screen cell at the chosen rate gets the matched stage's seeds (which hold the seeds
  # stage's 1 and 2 for a 97% cell); 30% and 60% at other rates: none.
  seeds = [c for c in dot if c["seed"] > 0]
  assert [(c["lr"], c["seed"]) for c in seeds] == [
      (recall.LEARNING_RATES[1], seed) for seed in recall.MATCHED_SEEDS["transformer_dot"]]
  assert {1, 2} <= set(recall.MATCHED_SEEDS["transformer_dot"])
  # Ties go to the middle rate: all solved.
  tied = [_run("default", lr, 1.0) for lr in recall.LEARNING_RATES]
  assert recall.best_lr(tied, "default") == recall.LEARNING_RATES[1]


def test_the_screen_widens_past_an_edge_whose_best_rate_is_unsolved():
  low, mid, high = recall.LEARNING_RATES
  step = mid / low
  # Best unsolved at the top edge: one rate above, then the plan waits for it.
  runs = [_run("ban", lr, acc) for lr, acc in zip(recall.LEARNING_RATES, (0.1, 0.2, 0.3))]
  grid = recall.rate_grid(runs, "ban")
  assert grid[:3] == list(recall.LEARNING_RATES) and len(grid) == 4
  assert np.isclose(grid[3], high * step, rtol=0.2)
  assert recall.best_lr(runs, "ban") is None
  assert [c["lr"] for c in recall.plan(runs, ["ban"], ["screen"])] == grid[3:]  # the new one
  # Better still at the new edge: widened once more, never past MAX_EXTENSIONS.
  runs += [_run("ban", grid[3], 0.4)]
  grid = recall.rate_grid(runs, "ban")
  assert len(grid) == 3 + min(2, recall.MAX_EXTENSIONS)
  runs += [_run("ban", lr, 0.5 + i / 10) for i, lr in enumerate(grid[4:])]
  assert len(recall.rate_grid(runs, "ban")) == 3 + recall.MAX_EXTENSIONS
  assert recall.best_lr(runs, "ban") == recall.rate_grid(runs, "ban")[-1]
  # Best unsolved at the bottom edge: a lower rate, a round one.
  runs = [_run("ban", lr, acc) for lr, acc in zip(recall.LEARNING_RATES, (0.3, 0.2, 0.1))]
  grid = recall.rate_grid(runs, "ban")
  assert grid[1:] == list(recall.LEARNING_RATES) and grid[0] == float(f"{low / step:.0e}")
  # Solved at an edge, or best in the middle: no widening; variants share their model's grid.
  for accs in ((1.0, 0.2, 0.1), (0.1, 0.3, 0.2)):
    runs = [_run("ban", lr, acc) for lr, acc in zip(recall.LEARNING_RATES, accs)]
    assert recall.rate_grid(runs, "ban") == list(recall.LEARNING_RATES)
  variant = next(iter(recall.RATE_FROM))
  runs = [_run(recall.RATE_FROM[variant], lr, acc)
          for lr, acc in zip(recall.LEARNING_RATES, (0.1, 0.2, 0.3))]
  assert recall.rate_grid(runs, variant) == recall.rate_grid(runs, recall.RATE_FROM[variant])


def test_one_short_run_trains_and_reports_its_record():
  cell = dict(task="induction", width=32, arm="transformer_dot", lr=3e-3, seed=0)
  record = recall.train_one(cell, steps=10, log=lambda s: None)
  assert 0.0 <= record["accuracy"] <= 1.0
  assert record["queries"] == recall.EVAL_SEQUENCES           # one query per sequence
  assert len(record["curve"]) == recall.CURVE_POINTS and record["curve"][-1][0] == 10
  assert record["params"] > 0 and np.isfinite(record["losses"]).all()


def test_the_report_renders(tmp_path, monkeypatch):
  monkeypatch.setattr(cli_runs, "RESULTS_MD", str(tmp_path / "results.md"))
  runs = [_run("transformer_dot", lr, acc) for lr, acc in zip(recall.LEARNING_RATES,
                                                                (0.3, 1.0, 0.6))]
  runs += [_run("transformer_dot", recall.LEARNING_RATES[1], acc, width=w)
           for w, acc in ((32, 0.4), (128, 1.0))]
  runs += [_run("default", lr, acc) for lr, acc in zip(recall.LEARNING_RATES, (0.2, 0.9, 0.5))]
  runs.append(_run("default_tagging_off", recall.LEARNING_RATES[1], 1.0))
  runs += [_run("transformer_dot_matched", lr, acc)       # its own sweep, best 95%
           for lr, acc in zip(recall.LEARNING_RATES, (0.4, 0.95, 0.5))]
  budgets = ["32", "16"]
  ev = {"budgets": [32, 16], "full": 1.0,
        "accuracy": {"recent": dict(zip(budgets, (0.5, 0.2))),
                     "gravity": dict(zip(budgets, (0.9, 0.2)))},
        "vs_gravity": {"recent": {"32": [-0.4, 0.01], "16": [0.0, 0.01]},
                       "gravity": {"32": [0.0, 0.0], "16": [0.0, 0.0]}}}
  # Without the recent window gravity keeps less than recent at 16 slots (by 5 points).
  ev["accuracy"]["gravity_r0"] = dict(zip(budgets, (0.95, 0.15)))
  ev["vs"] = {"gravity": {**ev["vs_gravity"], "gravity_r0": {"32": [0.05, 0.01],
                                                             "16": [-0.05, 0.01]}},
              "gravity_r0": {"recent": {"32": [-0.45, 0.01], "16": [0.05, 0.01]},
                             "gravity": {"32": [-0.05, 0.01], "16": [0.05, 0.01]},
                             "gravity_r0": {"32": [0.0, 0.0], "16": [0.0, 0.0]}}}
  ev["vs_gravity"] = ev["vs"]["gravity"]
  runs.append(_run("transformer_dot", recall.LEARNING_RATES[1], 1.0, **recall.EVICTION,
                   eviction=ev))
  for arm, long in (("ban", 0.3), ("ban_power_law", 0.8)):
    runs.append(_run(arm, recall.LEARNING_RATES[1], 1.0, task="induction", seq_len=128,
                     lengths={"128": 1.0, "1024": long}))
  out = str(tmp_path / "recall.json")
  recall_report.report({"runs": runs, "wall_s": 5.0}, out)
  text = (tmp_path / "results.md").read_text()
  assert "| transformer_dot | 64 |" in text          # smallest width solving the screen's MQAR
  assert (tmp_path / "recall.png").read_bytes()[:4] == b"\x89PNG"
  # default (90% at its best rate) vs the dot transformer (100%), one seed each: worse.
  assert "| MQAR 8 pairs | 64 | default | -10.0% ± " in text and "no (worse)" in text
  # ... and against the dot transformer of its parameters (95%).
  assert "| MQAR 8 pairs | 64 | default | -5.0% ± " in text.split("At equal parameters")[1]
  # Tagging off (100%) against the default's learned tagging (90%), at the default's rate.
  assert "| MQAR 8 pairs | 64 | default_tagging_off | +10.0% ± " in text.split(
      "Context tagging")[1]
  # Gravity keeps 40 points more than recent at 32 slots, ties at 16.
  assert "32 slots: vs the best other policy (recent) yes (z +40.0)" in text
  assert "16 slots: vs the best other policy (recent) not shown" in text
  without = text.split("gravity without the recent window keeps")[1]
  assert "32 slots: vs the best other policy (recent) yes" in without
  assert "16 slots: vs the best other policy (recent) no (worse)" in without
  assert "| induction (T = 128) | power_law | 100.0% | 80.0% |" in text
  assert "(induction (T = 128), T = 1024, vs the best other: rope, 1 seed): yes" in text
  assert (tmp_path / "recall_length_eviction.png").read_bytes()[:4] == b"\x89PNG"


def test_widths_ascend_until_one_solves_and_variants_take_their_models_rate():
  rates = recall.LEARNING_RATES
  runs = [_run("ban", lr, acc) for lr, acc in zip(rates, (0.2, 0.9, 0.5))]
  def widths_planned(runs):
    return sorted(c["width"] for c in recall.plan(runs, ["ban"], ["widths"])
                  if c["pairs"] == recall.SCREEN["pairs"])
  # The screen's own cell (width 64) is unsolved, width 32 is not yet trained.
  assert widths_planned(runs) == [32]
  runs.append(_run("ban", rates[1], 0.4, width=32))
  assert widths_planned(runs) == [128]                   # 32 and 64 unsolved
  runs.append(_run("ban", rates[1], 0.995, width=128))
  assert widths_planned(runs) == []
  solved_small = [_run("ban", lr, acc) for lr, acc in zip(rates, (0.2, 0.9, 0.5))]
  solved_small.append(_run("ban", rates[1], 1.0, width=32))
  assert widths_planned(solved_small) == []              # 64 and 128 never trained
  # The positional variants are the length cells at their model's rate; no screen of their
  # own. Induction's are the BAN's, MQAR's the default system's with tagging off.
  arms = ["ban", "ban_alibi", "ban_none"]
  length = recall.plan(runs, arms, ["screen", "length"])
  assert {c["lr"] for c in length} == {rates[1]}
  assert {(c["arm"], c["task"]) for c in length if recall.is_length_cell(c)} == {
      (a, "induction") for a in arms}
  runs.append(_run("ban", rates[1], 1.0, **dict(recall.LENGTH_CELLS[1], pairs=None)))
  again = recall.plan(runs, arms, ["length"])
  assert ("ban", "induction") not in {(c["arm"], c["task"]) for c in again}  # done: not again
  assert all(recall.is_length_cell(c) for c in length)
  runs += [_run("default", lr, acc) for lr, acc in zip(rates, (0.2, 0.3, 0.25))]
  mqar = recall.plan(runs, list(recall.LENGTH_ARMS["mqar"]), ["screen", "length"])
  assert [c["arm"] for c in mqar] == list(recall.LENGTH_ARMS["mqar"])
  assert {c["lr"] for c in mqar} == {rates[1]} and all(recall.is_length_cell(c) for c in mqar)
  assert {recall.ARMS[a]["positional"] for a in recall.LENGTH_ARMS["mqar"]} == {
      recall.ARMS[a]["positional"] for a in recall.LENGTH_ARMS["induction"]} == {
          "rope", "power_law", "alibi", "none"}


def test_a_length_cell_reports_longer_lengths(monkeypatch):
  monkeypatch.setattr(recall, "LONG_LENS", (256,))
  monkeypatch.setattr(recall, "LONG_SEQUENCES", 40)
  monkeypatch.setattr(recall, "EVAL_SEQUENCES", 250)
  cell = dict(recall.LENGTH_CELLS[1], arm="ban_alibi", lr=3e-3, seed=0)
  record = recall.train_one(cell, steps=2, log=lambda s: None)
  assert set(record["lengths"]) == {"128", "256"}
  assert record["lengths"]["128"] == record["accuracy"]
  assert all(0.0 <= a <= 1.0 for a in record["lengths"].values())


def test_an_eviction_cell_scores_every_policy_on_the_same_sequences(monkeypatch):
  monkeypatch.setattr(recall, "EVICTION_POLICIES", ("full", "recent", "gravity"))
  monkeypatch.setattr(recall, "EVICTION_FRACTIONS", (4,))
  monkeypatch.setattr(recall, "EVICTION_SEQUENCES", 6)
  monkeypatch.setattr(recall, "EVAL_SEQUENCES", 250)
  placements = []
  generate = recall.recall_tasks.generate
  monkeypatch.setattr(recall.recall_tasks, "generate", lambda *a, **kw: (
      placements.append(kw.get("placement")), generate(*a, **kw))[1])
  cell = dict(recall.EVICTION, arm="transformer_dot", lr=3e-3, seed=0)
  ev = recall.train_one(cell, steps=2, log=lambda s: None)["eviction"]
  # Trained with the queries anywhere, tested with them at the end.
  assert placements[0] == "uniform" and placements[-1] == "end"
  budget = recall.EVICTION["seq_len"] // 4
  assert ev["budgets"] == [budget]
  assert set(ev["accuracy"]) == {"recent", "gravity", "gravity_r0", "h2o_r0"}
  for ref in recall.GRAVITY_FAMILY:                               # paired with itself: exactly 0
    assert ev["vs"][ref][ref][str(budget)] == [0.0, 0.0]
  assert ev["vs_gravity"] == ev["vs"]["gravity"]
  assert 0.0 <= ev["full"] <= 1.0


def test_an_eviction_model_left_unsolved_trains_again_for_longer():
  rates = recall.LEARNING_RATES
  runs = [_run("default", lr, acc) for lr, acc in zip(rates, (0.2, 0.9, 0.5))]
  cell = dict(recall.EVICTION, arm="default", lr=rates[1], seed=0)
  assert recall.plan(runs, ["default"], ["eviction"]) == [cell]
  first = _run("default", rates[1], 0.9, **recall.EVICTION, eviction={"full": 0.9})
  again = recall.plan(runs + [first], ["default"], ["eviction"])
  assert again == [dict(cell, train_steps=recall.EVICTION_RETRY * recall.STEPS)]
  solved = _run("default", rates[1], 1.0, **recall.EVICTION, eviction={"full": 1.0})
  assert recall.plan(runs + [solved], ["default"], ["eviction"]) == []


def test_the_matched_transformer_holds_the_bans_parameters_and_runs_after_the_screen():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ban_jax import models  # pylint: disable=g-import-not-at-top

  def count(arm, width):
    m = models.get_model(recall.model_config(arm, width), recall.VOCAB)
    tokens = jnp.zeros((1, 8), jnp.int32)
    p = jax.eval_shape(lambda: m.init(jax.random.key(0), tokens, positions=tokens))["params"]
    return sum(x.size for x in jax.tree.leaves(p))

  for width in recall.WIDTHS:
    ban, matched = count("ban", width), count("transformer_dot_matched", width)
    assert abs(matched / ban - 1) < 0.01, (width, ban, matched)
    assert count("transformer_dot", width) > 1.1 * ban          # the 4 x width MLP: more
  assert recall.plan([], ["transformer_dot_matched"], ["matched"]) == []   # no rate yet
  runs = [_run("transformer_dot", lr, acc) for lr, acc in zip(recall.LEARNING_RATES,
                                                                (0.3, 1.0, 0.6))]
  # A model of its own size: its own sweep, not the dot transformer's rate.
  assert recall.best_lr(runs, "transformer_dot_matched") is None
  both = ["transformer_dot", "transformer_dot_matched"]
  assert recall.plan(runs, both, ["screen"]) == [
      dict(recall.SCREEN, arm="transformer_dot_matched", lr=lr, seed=0)
      for lr in recall.LEARNING_RATES]
  runs += [_run("transformer_dot_matched", lr, acc) for lr, acc in zip(recall.LEARNING_RATES,
                                                                       (0.2, 0.4, 1.0))]
  runs += [_run("transformer_gravity", lr, acc) for lr, acc in zip(recall.LEARNING_RATES,
                                                                   (0.2, 1.0, 0.99))]
  assert recall.plan(runs, both + ["transformer_gravity"], ["matched"]) == [
      dict(recall.SCREEN, arm=arm, lr=recall.LEARNING_RATES[i], seed=seed)
      for arm, i in (("transformer_dot", 1), ("transformer_gravity", 1),
                     ("transformer_dot_matched", 2))
      for seed in recall.MATCHED_SEEDS[arm]]


def test_the_tagging_stage_runs_three_seeds_of_each_variant_at_the_defaults_rate():
  runs = [_run("default", lr, acc) for lr, acc in zip(recall.LEARNING_RATES, (0.2, 0.9, 0.5))]
  cells = recall.plan(runs, list(recall.TAGGING_ARMS), ["tagging"])
  rate = recall.LEARNING_RATES[1]
  assert {(c["arm"], c["seed"]) for c in cells} == {
      (arm, seed) for arm in recall.TAGGING_ARMS for seed in recall.TAGGING_SEEDS} - {
          ("default", 0)}                                   # the screen ran it already
  assert all(c["lr"] == rate and c["task"] == "mqar" for c in cells)
  assert [c["seed"] for c in cells] == sorted(c["seed"] for c in cells)   # seed 0 first


def test_the_mqar_length_cell_is_not_the_tagging_stages_run_of_the_same_model():
  # Same arm, task, width and T as a tagging-stage run, but tested at longer lengths too.
  rates = recall.LEARNING_RATES
  runs = [_run("default", lr, acc) for lr, acc in zip(rates, (0.2, 0.3, 0.25))]
  runs.append(_run("default_tagging_off", rates[1], 1.0))
  cells = recall.plan(runs, ["default_tagging_off"], ["length"])
  assert len(cells) == 1 and recall.is_length_cell(cells[0])
  assert recall.key_of(cells[0]) != recall.key_of(runs[-1])
  assert not recall.is_length_cell(runs[-1])
  assert recall_report.task_label(cells[0]) == "MQAR 8 pairs (T = 64)"
  assert recall_report.task_label(runs[-1]) == "MQAR 8 pairs"
