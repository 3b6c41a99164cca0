"""bench/{extrapolation,wells_threshold,attractor_steps}.py: valid runs, honest reports."""

import os

from ban_jax import config_validation
from bench import ablation_report
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
  c = _validate(wells_threshold._arm_spec("full_inverse_square", **{
      "wells.threshold": 0.1, "wells.draw": "recent", "wells.draw_window": 3}))
  assert (c.wells.threshold, c.wells.mode, c.wells.draw, c.wells.draw_window) == (
      0.1, "wells", "recent", 3)
  assert c.model.attention == "inverse_square"
  plain = dict(wells_threshold._arm_spec("full_inverse_square"), wells="off")
  assert _validate(plain).wells.mode == "off"
  uniform = dict(wells_threshold._arm_spec("full_inverse_square",
                                           **{"wells.inject_steps": "/x.json"}), wells="uniform")
  c = _validate(uniform)
  assert c.wells.mode == "uniform" and c.wells.inject_steps == "/x.json"
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
  better = dict(run, val_bpb=2.9, heldout_bpb=3.4)
  recent = [{"rule": "recent", "window": 3, "arm": "full_inverse_square", "lr": 6e-3,
             "threshold": 0.05, "seed": s, "wells": dict(better, val_bpb=2.9 - s / 1000),
             "plain": run, "uniform": run} for s in (1, 2, 3)]
  wells_threshold.report({"runs": [{"threshold": 0.05, "seed": 0, "wells": run,
                                     "plain": run}] + recent}, out,
                         str(tmp_path / "no_ablation.json"))
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
  # Three seeds 0.1 better than both controls: the verdict says so; the first rule's table stays.
  assert "held at threshold(s) 0.05" in text and "The first rule, `always`" in text
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


def test_wells_verdict_needs_both_controls_beaten_by_two_standard_errors():
  def rows(vs_plain, vs_uniform):
    return [{"wells": {"val_bpb": 3.0 + p}, "plain": {"val_bpb": 3.0},
             "uniform": {"val_bpb": 3.0 + p - u}}
            for p, u in zip(vs_plain, vs_uniform)]
  assert wells_threshold.verdict(rows([-0.02, -0.021, -0.019], [-0.01, -0.012, -0.011])) == "help"
  # Better than plain but not than the uniform control: the extra compute, not the wells.
  assert wells_threshold.verdict(rows([-0.02, -0.021, -0.019], [0.01, -0.01, 0.0])) == (
      "not shown")
  assert wells_threshold.verdict(rows([0.02, 0.021, 0.019], [0.0, 0.01, -0.01])) == "hurt"
  assert wells_threshold.verdict(rows([-0.02], [-0.02])) == "inconclusive (one seed)"


def test_the_wells_report_reads_the_ablations_noise_when_it_renders(tmp_path, monkeypatch):
  monkeypatch.setattr(cli_runs, "RESULTS_MD", str(tmp_path / "results.md"))
  results = cli_runs.load_json("bench/results/wells_threshold.json")
  wells_threshold.report(results, str(tmp_path / "wells.json"), "bench/results/ablation.json")
  text = (tmp_path / "results.md").read_text()
  recent = [r for r in results["runs"] if wells_threshold.rule_of(r) == "recent"]
  arm = recent[0]["arm"]
  summary = ablation_report.summarize(cli_runs.load_json("bench/results/ablation.json"),
                                      "cpu")[arm]
  assert f"in the ablation ({summary['seeds']} seeds): {summary['val_std']:.4f}." in text
  assert (tmp_path / "wells.png").read_bytes()[:4] == b"\x89PNG"
