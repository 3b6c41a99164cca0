"""The batch-selection strategies: their config check, their draws, and inside the loop."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ban_jax.parallel import mesh as mesh_lib
from ban_jax.training import selection
from ban_jax.training import setup
from ban_jax.training import steps as steps_lib
from ban_jax.training import train
from ban_jax.training import writers
from configs import wiki


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
  draws = np.concatenate([np.asarray(selection.rank_draw(jax.random.PRNGKey(i), losses, 4000,
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
  draws = np.asarray(selection.rank_draw(jax.random.PRNGKey(0), losses, 2000, 1e6))
  assert np.isin(draws, [1, 3]).mean() > 0.95


def test_loss_rank_training_runs_and_sees_the_data(tiny_config, tmp_path):
  workdir = str(tmp_path / "rank")
  final = train.train_and_evaluate(
      tiny_config(wells__mode="loss_rank", train__steps=20, eval__every_steps=20), workdir)
  assert final["train/injected"] == 0
  assert 0 < final["train/rank/seen_fraction"] <= 1


def _batch(b, t, index):
  tokens = np.random.default_rng(0).integers(3, 259, size=(b, t + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "segment_ids": np.ones((b, t), np.int32),
          "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
          "weights": np.ones((b, t), np.float32), "index": np.asarray(index, np.int32)}


def _plan(config, strategy):
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(backend="", data=1, fsdp=1)))
  return setup.build(config, 259, mesh, token_bytes=jnp.ones([259], jnp.float32),
                     strategy=strategy)


def test_loss_rank_step_trains_on_the_drawn_batch_and_remembers_its_losses(tiny_config):
  n, b, t = 50, 4, 16
  strategy = selection.LossRank(num_examples=n, pressure=100.0)
  plan = _plan(tiny_config(wells__mode="loss_rank", train__batch_size=b), strategy)
  step = plan.jit_train_step(strategy)
  batch = _batch(b, t, [7, 3, 41, 3])
  state = plan.init(jax.random.PRNGKey(0))
  assert np.asarray(state.queue.active).all()        # the first two batches: uniform draws
  params_before = jax.device_get(state.params)
  state, metrics, draw = step(state, batch)
  last = np.asarray(state.selection)
  assert set(np.nonzero(np.isfinite(last))[0].tolist()) == {3, 7, 41}
  expected = jax.device_get(steps_lib.loss_fn(params_before, batch, None, model=plan.model,
                                              z_loss=0.0, token_bytes=jnp.ones([259]))[1][1])
  np.testing.assert_allclose(last[[7, 41]], expected[[0, 2]], rtol=1e-5)
  assert metrics["injected"] == 0 and metrics["grad_evals"] == 1
  index, active = draw
  assert index.shape == (b,) and bool(active)
  # The draw is queued for two steps later, behind the one drawn at init.
  np.testing.assert_array_equal(np.asarray(state.queue.index[1]), np.asarray(index))


def test_wells_step_keeps_its_well_state_in_state_selection(tiny_config):
  c = tiny_config(wells__mode="wells", wells__warmup_steps=0, wells__threshold=0.0,
                  train__batch_size=4)
  strategy = selection.from_config(c.wells, num_examples=50, steps_per_epoch=10, total_steps=20)
  assert isinstance(strategy, selection.Wells)
  plan = _plan(c, strategy)
  step = plan.jit_train_step(strategy)
  state = plan.init(jax.random.PRNGKey(0))
  assert state.selection.strength.shape == (50,)
  assert not np.asarray(state.queue.active).any()    # no well yet: no extra update
  batch = _batch(4, 16, [1, 2, 3, 4])
  zeros = {k: np.zeros_like(v) for k, v in batch.items()}
  state, metrics, (index, active) = step(state, batch, zeros)
  assert metrics["injected"] == 0 and np.isnan(metrics["extra_loss"])
  assert int(metrics["wells/active"]) == int(np.sum(np.asarray(state.selection.strength) > 0))
  np.testing.assert_array_equal(np.asarray(state.queue.active), [False, bool(active)])


def test_off_has_no_selection_state_and_the_plain_step():
  c = wiki.get_config("transformer")
  strategy = selection.from_config(c.wells, num_examples=10, steps_per_epoch=1, total_steps=1)
  assert not strategy.draws and strategy.init() is None


def test_one_strategy_per_mode():
  c = wiki.get_config("transformer")
  kinds = {}
  for mode in selection.MODES:
    c.wells.mode = mode
    kinds[mode] = type(selection.from_config(c.wells, num_examples=10, steps_per_epoch=2,
                                             total_steps=4))
  assert kinds == {"off": selection.Off, "wells": selection.Wells,
                   "uniform": selection.Uniform, "loss_rank": selection.LossRank}


@pytest.mark.parametrize("field,value,match", [
    ("mode", "sometimes", r"wells.mode='sometimes' is not one of \('off'"),
    ("storage", "hash", "wells.storage='hash'"),
    ("threshold", -0.1, r"wells.threshold=-0.1 must lie in \[0.0, inf\]"),
    ("ema_decay", 1.0, r"wells.ema_decay=1.0 must lie in \[0.0, 0.999999\]"),
    ("decay", 2.0, r"wells.decay=2.0 must lie in \[0.0, 1.0\]"),
    ("rank_pressure", 0.5, "wells.rank_pressure=0.5 must be >= 1"),
])
def test_check_config_names_the_field_and_its_range(field, value, match):
  c = wiki.get_config("transformer").wells
  c.mode = "loss_rank"
  c[field] = value
  with pytest.raises(ValueError, match=match):
    selection.check_config(c)


def test_check_config_per_example_needs_dense_storage():
  c = wiki.get_config("transformer").wells
  c.update(mode="wells", per_example=True, storage="table")
  with pytest.raises(ValueError, match="per_example=True needs wells.storage='dense'"):
    selection.check_config(c)
  c.mode = "off"
  selection.check_config(c)            # an unused block is not checked



@pytest.mark.parametrize("field,value,match", [
    ("draw", "often", r"wells.draw='often' is not one of \('always', 'recent'\)"),
    ("draw_window", 0, "wells.draw_window=0 must be an integer >= 1"),
])
def test_check_config_draw_rule(field, value, match):
  c = wiki.get_config("transformer").wells
  c.update(mode="wells")
  c[field] = value
  with pytest.raises(ValueError, match=match):
    selection.check_config(c)


def test_recent_rule_injects_only_after_formations(tiny_config, tmp_path):
  """With draw="recent" the extra updates follow formations: a step injects exactly when one of
  the `draw_window` steps two before it (the queue's delay) formed or grew a well."""
  common = dict(train__steps=30, train__log_every=1, eval__every_steps=30,
                wells__mode="wells", wells__warmup_steps=3, wells__draw="recent",
                wells__draw_window=2)
  run = str(tmp_path / "recent")
  train.train_and_evaluate(tiny_config(wells__threshold=0.02, **common), run)
  formed = _per_step(run, "train/wells/formed")        # logged at step + 1
  injected = _per_step(run, "train/injected")
  formed_steps = {s - 1 for s, v in formed.items() if v}
  injected_steps = {s - 1 for s, v in injected.items() if v}
  assert formed_steps and injected_steps == {s + 2 + j for s in formed_steps for j in (0, 1)
                                             if s + 2 + j < 30}
  assert len(injected_steps) < 28           # some steps form no well, so some take no extra


def test_the_wells_step_traces_the_model_once_as_the_plain_step_does(tiny_config, monkeypatch):
  calls = []
  loss_fn = steps_lib.loss_fn
  monkeypatch.setattr(steps_lib, "loss_fn", lambda *a, **k: calls.append(1) or loss_fn(*a, **k))
  batch = _batch(4, 16, [1, 2, 3, 4])
  traces = {}
  for mode in ("off", "wells"):
    c = tiny_config(wells__mode=mode, wells__warmup_steps=0, train__batch_size=4)
    strategy = selection.from_config(c.wells, num_examples=50, steps_per_epoch=10,
                                     total_steps=20)
    plan = _plan(c, strategy)
    state = plan.init(jax.random.PRNGKey(0))
    step, num_batches = plan.train_step_jit(strategy)
    calls.clear()
    step.lower(state, *[batch] * num_batches)  # Wells: two updates, one trace of the model
    traces[mode] = (num_batches, len(calls))
  assert traces == {"off": (1, 1), "wells": (2, 1)}
