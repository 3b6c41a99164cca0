"""bench/{extrapolation,wells_threshold,attractor_steps}.py: valid runs, honest reports."""

import os

from ban_jax import config_validation
from bench import attractor_steps
from bench import cli_runs
from bench import extrapolation
from bench import wells_threshold


def _validate(spec, **scale):
  c = cli_runs.config_for(spec, dict(cli_runs.SCALES["cpu"], **scale), steps=100, lr=1e-3,
                          seed=0)
  config_validation.validate(c)
  return c


def test_every_study_run_is_a_valid_config_with_what_it_varies():
  for kind, spec in extrapolation.ARMS.items():
    c = _validate(spec, seq_len=extrapolation.TRAIN_LEN)
    assert c.model.positional == kind and c.data.seq_len == 128 and c.wells.mode == "off"
  c = _validate(dict(wells_threshold.WELLS, extra={"wells.threshold": 0.1}))
  assert c.wells.threshold == 0.1 and c.wells.mode == "wells"
  assert _validate(wells_threshold.PLAIN).wells.mode == "off"
  c = _validate(dict(attractor_steps.BASE, attractor_steps=8, implicit_grad=True))
  assert c.model.attractor_steps == 8 and c.model.implicit_grad and c.wells.mode == "off"
  assert c.model.tagging and c.model.positional == "power_law"


def test_reports_write_their_plots_and_sections(tmp_path, monkeypatch):
  monkeypatch.setattr(cli_runs, "RESULTS_MD", str(tmp_path / "results.md"))
  lengths = {str(t): {"val_bpb": 3.0 + t / 1000, "heldout_bpb": 3.5} for t in
             extrapolation.EVAL_LENS}
  out = str(tmp_path / "extrapolation.json")
  extrapolation.report({"runs": [{"arm": "rope", "seed": 0, "lengths": lengths}]}, out)
  run = {"val_bpb": 3.0, "heldout_bpb": 3.5, "injected_fraction": 0.4, "grad_evals": 140,
         "steps": 100}
  out = str(tmp_path / "wells_threshold.json")
  wells_threshold.report({"runs": [{"threshold": 0.05, "seed": 0, "wells": run,
                                     "plain": run}]}, out)
  out = str(tmp_path / "attractor_steps.json")
  attractor_steps.report({"runs": [dict(run, attractor_steps=k, implicit_grad=i, seed=0, steps=9,
                                        attractor_residual_rel=0.1 / k)
                                   for k in (2, 4) for i in (False, True)]}, out)
  for name in ("extrapolation", "wells_threshold", "attractor_steps"):
    with open(os.path.join(tmp_path, name + ".png"), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  text = (tmp_path / "results.md").read_text()
  for name in ("extrapolation", "wells_threshold", "attractor_steps"):
    assert text.count(f"<!-- begin {name} -->") == 1
  # Rewriting a section replaces it and keeps the others.
  cli_runs.write_results_section("wells_threshold", "new text")
  text = (tmp_path / "results.md").read_text()
  assert "new text" in text and "Length extrapolation" in text
  assert text.count("<!-- begin wells_threshold -->") == 1


def test_grad_evals_counts_extra_updates_and_a_resumed_runs_repeats_once():
  records = [{"step": 10, "train/loss": 1.0, "train/grad_evals": 2.0},
             {"step": 20, "train/loss": 1.0, "train/grad_evals": 1.5},
             {"step": 20, "train/loss": 1.0, "train/grad_evals": 1.0},   # resumed: later wins
             {"step": 30, "train/loss": 1.0}]
  assert cli_runs.grad_evals(records) == 10 * 2.0 + 10 * 1.0 + 10 * 1.0
