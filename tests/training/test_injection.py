"""Gravity Wells and its controls inside the training loop."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from ban_jax.training import injection
from ban_jax.training import train
from ban_jax.training import writers


def _per_step(workdir, key):
  return {r["step"]: r[key] for r in writers.read_metrics(workdir) if key in r}


def test_wells_run_logs_wells_and_the_control_replays_its_injections(tiny_config, tmp_path):
  common = dict(train__steps=30, train__log_every=1, eval__every_steps=30,
                wells__warmup_steps=3, wells__threshold=0.0)
  wells_dir = str(tmp_path / "wells")
  train.train_and_evaluate(tiny_config(wells__mode="wells", **common), wells_dir)
  assert os.path.exists(os.path.join(wells_dir, "well_strengths.png"))
  with open(os.path.join(wells_dir, "injected_steps_from_0.json")) as f:
    injected = json.load(f)
  assert injected and min(injected) >= 2      # the first draw is used two steps after it is made
  active = _per_step(wells_dir, "train/wells/active")
  assert active[30] > 0
  # The control: uniform batches, in exactly the steps the wells run injected.
  path = tmp_path / "inject.json"
  path.write_text(json.dumps(injected))
  ctrl_dir = str(tmp_path / "uniform")
  train.train_and_evaluate(
      tiny_config(wells__mode="uniform", wells__inject_steps=str(path), **common), ctrl_dir)
  ctrl = _per_step(ctrl_dir, "train/injected")
  assert sorted(s - 1 for s, v in ctrl.items() if v) == sorted(injected)
  grad_evals = _per_step(ctrl_dir, "train/grad_evals")
  assert sum(grad_evals.values()) == 30 + len(injected)


def test_loss_rank_draws_follow_the_rank_distribution():
  n, pressure = 50, 100.0
  losses = jnp.asarray(np.random.default_rng().permutation(n).astype(np.float32))
  draws = np.concatenate([np.asarray(injection._rank_draw(jax.random.PRNGKey(i), losses, 4000,
                                                          pressure)) for i in range(5)])
  ranks = n - 1 - np.asarray(losses)[draws]          # loss n-1 has rank 0
  counts = np.bincount(ranks.astype(int), minlength=n)
  expected = pressure ** (-np.arange(n) / n)
  expected = expected / expected.sum() * len(draws)
  chi2 = np.sum((counts - expected) ** 2 / expected)
  assert chi2 < 100          # 49 degrees of freedom: p ≈ 5e-5 at 100
  assert counts[:5].sum() > 20 * counts[-5:].sum() / 2   # high losses drawn far more often


def test_loss_rank_prefers_unseen_examples_first():
  losses = jnp.asarray([1.0, jnp.inf, 2.0, jnp.inf])
  draws = np.asarray(injection._rank_draw(jax.random.PRNGKey(0), losses, 2000, 1e6))
  assert np.isin(draws, [1, 3]).mean() > 0.95


def test_loss_rank_training_runs_and_sees_the_data(tiny_config, tmp_path):
  workdir = str(tmp_path / "rank")
  final = train.train_and_evaluate(
      tiny_config(wells__mode="loss_rank", train__steps=20, eval__every_steps=20), workdir)
  assert final["train/injected"] == 0
  assert 0 < final["train/rank/seen_fraction"] <= 1
