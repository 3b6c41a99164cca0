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


def test_loss_rank_step_trains_on_the_drawn_batch_and_remembers_its_losses(tiny_config):
  import functools  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ban_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from ban_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top
  c = tiny_config(wells__mode="loss_rank")
  n, b, t = 50, 4, 16
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(backend="", data=1, fsdp=1)))
  plan = train.build(c, 259, mesh, token_bytes=jnp.ones([259], jnp.float32),
                     extend_state=lambda s, r: s.replace(wells=injection.init(c.wells, n, b, r)))
  step = plan.jit_step(functools.partial(injection.train_step, cfg=c.wells, steps_per_epoch=10,
                                         num_examples=n, inject_flags=None),
                       num_batches=2, num_outputs=3)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 259, size=(b, t + 1)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "segment_ids": np.ones((b, t), np.int32),
           "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
           "weights": np.ones((b, t), np.float32), "index": np.array([7, 3, 41, 3], np.int32)}
  state = plan.init(jax.random.PRNGKey(0))
  params_before = jax.device_get(state.params)
  state, metrics, draw = step(state, batch, batch)
  last = np.asarray(state.wells.last_loss)
  assert set(np.nonzero(np.isfinite(last))[0].tolist()) == {3, 7, 41}
  expected = jax.device_get(steps_lib.loss_fn(params_before, batch, None, model=plan.model,
                                              z_loss=0.0, token_bytes=jnp.ones([259]))[1][1])
  np.testing.assert_allclose(last[[7, 41]], expected[[0, 2]], rtol=1e-5)
  assert metrics["injected"] == 0 and metrics["grad_evals"] == 1
  index, active = draw
  assert index.shape == (b,) and bool(active)
  # The draw is queued for two steps later, behind the one drawn at init.
  np.testing.assert_array_equal(np.asarray(state.wells.queue_index[1]), np.asarray(index))
