"""training/budget.py: a run states its plan (epochs, extra updates, FLOPs) before training."""

import json
import logging

import numpy as np
import pytest

from ban_jax.data import pipeline
from ban_jax.data import yardsticks
from ban_jax.training import budget
from ban_jax.training import setup
from ban_jax.training import train

COMPRESSORS = ("gzip", "bz2", "xz")

def _plan_records(caplog):
  return [r for r in caplog.records if r.getMessage().startswith("plan: ")]


def _warnings(caplog):
  return [r for r in caplog.records
          if r.levelno == logging.WARNING and "passes over the training data" in r.getMessage()]


def _decoded(split, batch_size, max_batches):
  """Scored bytes decoded here, without the tokenizer: byte ids are 3 + the byte."""
  out = bytearray()
  for batch in pipeline.eval_batches(split, batch_size, max_batches):
    out += (batch["targets"][batch["weights"] > 0] - 3).astype(np.uint8).tobytes()
  return bytes(out)

def test_tiny_run_logs_plan_and_reports_yardsticks(tiny_config, tmp_path, caplog):
  config = tiny_config(train__steps=6, optimizer__warmup_steps=1, eval__every_steps=6,
                       checkpoint__every_steps=6)
  with caplog.at_level(logging.INFO, logger="absl"):
    final = train.train_and_evaluate(config, str(tmp_path / "run"))
  [record] = _plan_records(caplog)
  message = record.getMessage()
  for words in ("tokens per epoch", "planned epochs", "extra updates", "parameters",
                "training FLOPs per step"):
    assert words in message
  assert not _warnings(caplog)

  with open(tmp_path / "run" / "plan.json") as f:
    saved = json.load(f)
  data = setup.build_data(config)
  windows = len(data.train.split.windows)
  assert saved["planned_epochs"] == pytest.approx(budget.planned_epochs(config, windows))
  assert saved["tokens_per_epoch"] == data.train.steps_per_epoch * 8 * 64
  assert saved["num_params"] == final["num_params"]
  assert saved["flops_per_step"] > 6 * saved["num_params"] * 8 * 64 * 0.5

  splits = [("eval", data.validation, config.eval.max_batches)]
  if data.heldout is not None:
    splits.append(("heldout", data.heldout, config.eval.heldout_max_batches))
  for prefix, split, max_batches in splits:
    expected = yardsticks.bits_per_byte(_decoded(split, config.eval.batch_size, max_batches))
    for name in COMPRESSORS:
      assert final[f"{prefix}/{name}_bits_per_byte"] == pytest.approx(expected[name], rel=1e-12)
      assert 0 < final[f"{prefix}/{name}_bits_per_byte"] < 8


@pytest.mark.parametrize("steps_,warns", [(10_000_000, True), (4, False)])
def test_many_epochs_warn_once(tiny_config, caplog, steps_, warns):
  config = tiny_config(train__steps=steps_, wells__mode="wells")
  summary = budget.plan_summary(config, num_train_windows=1_000, num_params=123)
  assert summary["steps_per_epoch"] == 1_000 // 8
  assert summary["tokens_per_epoch"] == 125 * 8 * 64
  assert summary["planned_epochs"] == steps_ / 125
  assert summary["extra_updates_max"] == steps_
  with caplog.at_level(logging.INFO, logger="absl"):
    budget.log_plan(summary)
  assert len(_plan_records(caplog)) == 1
  assert "not counted in epochs" in _plan_records(caplog)[0].getMessage()
  assert len(_warnings(caplog)) == (1 if warns else 0)


def test_planned_epochs_from_a_token_count(tiny_config):
  config = tiny_config(train__steps=100)
  # 64 · 800 + 1 tokens make 800 windows of 64: 100 steps of 8 windows per epoch.
  assert budget.planned_epochs(config, (64 * 800 + 1 - 1) // 64) == 1.0
  with pytest.raises(Exception, match="exceeds"):
    budget.planned_epochs(config, 7)
