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
  widths = {(c.get("pairs"), c["width"]) for c in dot if c["task"] == "mqar" and not c["seed"]}
  assert widths == {(p, w) for p in (8, 16, 32) for w in recall.WIDTHS} - {(16, 64)}
  assert {c["task"] for c in dot} == {"mqar", "induction", "copying"}
  # 97% is between 50% and 99%: seeds 1 and 2 for that cell; 30% and 60% at other rates: no.
  seeds = [c for c in dot if c["seed"] > 0]
  assert [(c["lr"], c["seed"]) for c in seeds] == [(recall.LEARNING_RATES[1], 1),
                                                   (recall.LEARNING_RATES[1], 2)]
  # Ties go to the middle rate: all solved.
  tied = [_run("default", lr, 1.0) for lr in recall.LEARNING_RATES]
  assert recall.best_lr(tied, "default") == recall.LEARNING_RATES[1]


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
  out = str(tmp_path / "recall.json")
  recall_report.report({"runs": runs, "wall_s": 5.0}, out)
  text = (tmp_path / "results.md").read_text()
  assert "| transformer_dot | 64 |" in text          # smallest width solving MQAR 16 pairs
  assert (tmp_path / "recall.png").read_bytes()[:4] == b"\x89PNG"
