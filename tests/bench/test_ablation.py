"""bench/ablation.py: every arm is a valid config; the report's verdicts follow the numbers."""

import math

import pytest

from ban_jax import config_validation
from bench import ablation
from bench import ablation_report


@pytest.mark.parametrize("arm", list(ablation.ARMS))
def test_every_arm_is_a_valid_config_with_its_mechanisms(arm):
  c = ablation.config_for(arm, ablation.SCALES["cpu"], steps=100, lr=1e-3, seed=0)
  config_validation.validate(c)
  full = not arm.startswith(("transformer", "ban"))
  if arm.startswith("full") or arm in ("default-tagging", "default-power_law"):
    assert c.wells.mode == "wells"
  else:
    assert c.wells.mode == "off"
  if arm.startswith("default") or arm == "full_inverse_square":
    assert c.model.attention == "inverse_square"
  elif full and arm != "full-gravity":
    assert c.model.attention == "gravity"
  assert c.model.tagging == (arm not in ("ban", "ban+gravity", "full-tagging",
                                         "default-tagging") and not arm.startswith("trans"))
  assert c.model.name == ("transformer" if arm.startswith("transformer") else "ban")
  assert c.model.tagging_source == ("surprisal" if arm == "full_surprisal_tags" else "hidden")


def _runs(values: dict[str, list[float]], lr=1e-3):
  return {"runs": [dict(arm=arm, scale="cpu", lr=lr, seed=s, val_bpb=v, heldout_bpb=v + 1,
                        val_gzip_bpb=3.0, params=1000, steps=100, train_flops=1e9,
                        tokens_trained=1000, tokens_per_sec=100.0)
                   for arm, vs in values.items() for s, v in enumerate(vs)]}


def test_verdicts_follow_the_numbers():
  noise = [0.0, 0.01, -0.01]
  base = {"transformer": 2.9, "transformer_2x": 2.85, "ban": 2.8, "ban+gravity": 2.75,
          "+tagging": 2.7, "+power_law": 2.65, "full": 2.6, "full-gravity": 2.7,
          "full-tagging": 2.7, "full-power_law": 2.7}
  summary = ablation_report.summarize(_runs({a: [v + n for n in noise] for a, v in base.items()}))
  verdicts = {claim: verdict for claim, verdict, _ in ablation_report.claims(summary)}
  # Leave-one-out gains 0.1 + 0.1 + 0.1 + 0.05 = 0.35 exceed full's 0.2 gain over ban.
  assert verdicts["The attention and training levels together are superadditive"] == "yes"
  assert verdicts["Gravity Wells help (full vs full minus wells, equal FLOPs)"] == "yes"
  assert verdicts["A small BAN (the full system) beats a transformer with 2x the non-embedding "
                  "parameters"] == "yes"
  worse = dict(base, full=2.7)   # wells now hurt: full is worse than +power_law
  summary = ablation_report.summarize(_runs({a: [v + n for n in noise] for a, v in worse.items()}))
  verdicts = {claim: verdict for claim, verdict, _ in ablation_report.claims(summary)}
  assert verdicts["Gravity Wells help (full vs full minus wells, equal FLOPs)"] == "no"


def test_one_seed_is_not_shown_and_the_best_rate_is_chosen():
  runs = _runs({"ban": [2.8]}, lr=1e-3)["runs"] + _runs({"ban": [2.7, 2.75]}, lr=3e-3)["runs"]
  runs.append(dict(runs[0], lr=1e-2, val_bpb=float("inf"), diverged=True))
  summary = ablation_report.summarize({"runs": runs})
  # Seed 0 chose the rate and is not counted: one counted seed, 2.75.
  assert summary["ban"]["lr"] == 3e-3 and math.isnan(summary["ban"]["val_std"])
  assert summary["ban"]["val_mean"] == 2.75 and summary["ban"]["seed0_val"] == 2.7
  assert ablation_report.summarize({"runs": runs}, count_seed0=True)["ban"]["seeds"] == 2
  assert not summary["ban"]["lr_at_edge"]
  verdict, _ = ablation_report.verdict((-0.1, float("nan")))
  assert verdict == "not shown"


def test_parts_that_need_each_other_are_not_superadditive_if_the_whole_loses():
  noise = [0.0, 0.01, -0.01]
  # Removing the power-law field costs a lot (gravity needs it), but the whole is worse than ban.
  base = {"ban": 2.8, "+power_law": 2.95, "full": 2.96, "full-gravity": 2.94,
          "full-tagging": 2.96, "full-power_law": 3.3}
  summary = ablation_report.summarize(_runs({a: [v + n for n in noise] for a, v in base.items()}))
  verdicts = {claim: verdict for claim, verdict, _ in ablation_report.claims(summary)}
  assert verdicts["The attention and training levels together are superadditive"] == "no"


def test_a_best_rate_on_the_edge_widens_the_grid_at_most_twice():
  grid = (0.003, 0.006, 0.012)
  assert ablation_report.extension({0.003: 3.0, 0.006: 2.9, 0.012: 2.8}, grid, 2) == 0.024
  assert ablation_report.extension({0.003: 2.7, 0.006: 2.9, 0.012: 3.0}, grid, 2) == 0.0015
  assert ablation_report.extension({0.003: 3.0, 0.006: 2.8, 0.012: 2.9}, grid, 2) is None
  wide = {0.003: 3.0, 0.006: 2.9, 0.012: 2.8, 0.024: 2.7, 0.048: 2.6}
  assert ablation_report.extension(wide, grid, 2) is None       # two widenings spent


def test_the_held_out_z_stands_beside_the_validation_z():
  noise = [0.0, 0.01, -0.01]
  summary = ablation_report.summarize(_runs({"full": [2.6 + n for n in noise],
                                             "+power_law": [2.7 + n for n in noise]}))
  _, evidence = ablation_report._pair(summary, "full", "+power_law")
  assert "(z = 7.1)" in evidence and "held-out -0.1000 (z = 7.1)" in evidence, evidence
