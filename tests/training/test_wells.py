"""Tests for ban_jax/training/wells.py (Gravity Wells core)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ban_jax.training import wells as wl

SIGNIFICANCE = 1e-3


def _warm(wells, loss=2.0):
  """Sets the running loss estimate to exactly `loss`, past any warm-up."""
  return wells.replace(ema=jnp.float32(loss), count=jnp.int32(1000))   # 1 - 0.5**1000 == 1


# Losses that are short binary fractions (and ema_decay 0.5) keep drop rates and EMA values exact
# in float32, so most tests compare exact values.
KW = dict(threshold=0.1, gain=2.0, ema_decay=0.5, warmup_steps=2)
_UPDATE = jax.jit(functools.partial(wl.update, **KW))
# Jitted entry points with Python hyperparameters as static arguments (eager dispatch is slow).
_upd = jax.jit(wl.update, static_argnames=("threshold", "gain", "ema_decay", "warmup_steps"))
_sample = jax.jit(wl.sample, static_argnames="batch_size")
_decay = jax.jit(wl.decay, static_argnames=("factor", "baseline", "floor"))


def test_init_shapes_and_dtypes():
  d = wl.init(10)
  assert d.strength.shape == (10,) and d.strength.dtype == jnp.float32
  assert d.ids is None and d.last_loss is None and d.seen is None
  assert len(jax.tree.leaves(d)) == 3                  # strength, ema, count
  t = wl.init(4, storage="table")
  assert t.ids.shape == (4,) and t.ids.dtype == jnp.int32 and np.all(np.asarray(t.ids) == -1)
  p = wl.init(6, per_example=True)
  assert p.last_loss.shape == (6,) and p.seen.dtype == jnp.bool_
  # Every leaf is an array of static shape (the state sits in the checkpointed train state).
  for leaf in jax.tree.leaves(p):
    assert isinstance(leaf, jax.Array)
  rebuilt = jax.tree.unflatten(jax.tree.structure(t), jax.tree.leaves(t))
  assert rebuilt.storage == "table" and not rebuilt.per_example


def test_no_well_without_a_drop_past_the_threshold():
  wells = _warm(wl.init(8))
  for loss in [2.0, 2.0, 2.5, 3.0]:                      # flat, then rising
    wells, m = _UPDATE(wells, jnp.arange(4), loss)
    assert float(m["formed"]) == 0.0 and float(m["num_strengthened"]) == 0.0
  assert float(m["drop_rate"]) < 0
  assert not np.any(np.asarray(wells.strength))
  # Below the threshold and exactly at it (2.0 -> 1.8125 is a drop of exactly 0.09375) nothing
  # forms; just above it a well does.
  for loss, formed in [(1.875, 0.0), (1.8125, 0.0), (1.75, 1.0)]:
    w, m = _upd(_warm(wl.init(8)), jnp.arange(4), loss, **{**KW, "threshold": 0.09375})
    assert float(m["formed"]) == formed
    assert np.any(np.asarray(w.strength)) == bool(formed)


def test_no_well_during_warmup():
  wells = wl.init(8)
  wells, _ = _upd(wells, jnp.arange(2), 4.0, **{**KW, "warmup_steps": 3})
  wells, m = _upd(wells, jnp.arange(2), 1.0, **{**KW, "warmup_steps": 3})   # 75% drop
  assert float(m["drop_rate"]) == 0.75 and float(m["formed"]) == 0.0
  assert not np.any(np.asarray(wells.strength))
  wells, _ = _upd(wells, jnp.arange(2), 4.0, **{**KW, "warmup_steps": 3})
  wells, m = _upd(wells, jnp.arange(2), 0.5, **{**KW, "warmup_steps": 3})   # count is 3
  assert float(m["formed"]) == 1.0


def test_default_warmup_is_one_time_constant():
  wells = wl.init(4)
  kw = dict(threshold=0.0, gain=1.0, ema_decay=0.75)   # default warm-up: round(1/0.25) = 4
  formed = []
  for loss in [8.0, 4.0, 2.0, 1.0, 0.5]:
    wells, m = _upd(wells, jnp.arange(2), loss, **kw)
    formed.append(float(m["formed"]))
  assert formed == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_bias_corrected_ema_is_exact():
  wells = wl.init(2)
  losses = [4.0, 2.0, 1.0]
  for loss in losses:
    wells, m = _upd(wells, jnp.array([0]), loss, **KW)
  # raw EMA 0.5-decay: 2, 2, 1.5; correction 1 - 0.5**3 = 0.875.
  assert float(m["loss_ema"]) == pytest.approx(1.5 / 0.875, rel=1e-6)
  assert int(wells.count) == 3


def test_strength_proportional_to_drop_rate():
  wells = _warm(wl.init(8))                       # EMA == 2.0 exactly
  a, m_a = _UPDATE(wells, jnp.array([0, 1]), 1.5)   # drop 0.25
  b, m_b = _UPDATE(wells, jnp.array([0, 1]), 1.0)   # drop 0.5
  assert float(m_a["drop_rate"]) == 0.25 and float(m_b["drop_rate"]) == 0.5
  np.testing.assert_array_equal(np.asarray(a.strength), [0.5, 0.5, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(b.strength), [1.0, 1.0, 0, 0, 0, 0, 0, 0])
  assert float(b.strength[0]) / float(a.strength[0]) == 2.0
  # A second formation on the same examples adds to their strength.
  a2, _ = _UPDATE(_warm(a), jnp.array([1, 2]), 1.0)
  np.testing.assert_array_equal(np.asarray(a2.strength)[:3], [0.5, 1.5, 1.0])


def test_duplicates_and_padding_in_a_batch():
  wells = _warm(wl.init(4))
  wells, m = _upd(wells, jnp.array([1, 1, -1, 3, 99]), 1.0, **KW)   # 99 >= num_examples
  np.testing.assert_array_equal(np.asarray(wells.strength), [0, 1.0, 0, 1.0])
  assert float(m["num_strengthened"]) == 2.0


def test_non_finite_loss_is_ignored():
  wells = _warm(wl.init(4))
  for bad in [jnp.nan, jnp.inf]:
    new, m = _upd(wells, jnp.arange(4), bad, **KW)
    assert float(m["formed"]) == 0.0
    assert float(new.ema) == float(wells.ema) and int(new.count) == int(wells.count)
  p = wl.init(4, per_example=True)
  p, _ = _upd(p, jnp.arange(2), jnp.array([2.0, jnp.nan]), **KW)
  np.testing.assert_array_equal(np.asarray(p.seen), [True, False, False, False])


def test_per_example_wells():
  wells = wl.init(6, per_example=True)
  kw = dict(threshold=0.1, gain=4.0, ema_decay=0.5, warmup_steps=100)   # warm-up: batch only
  wells, m = _upd(wells, jnp.array([0, 1, 2]), jnp.array([2.0, 2.0, 2.0]), **kw)
  assert float(m["formed"]) == 0.0                    # first sighting only records the loss
  np.testing.assert_array_equal(np.asarray(wells.seen), [1, 1, 1, 0, 0, 0])
  # Example 0 drops 50%, 1 rises, 2 drops 6.25% (< threshold), 3 is new.
  wells, m = _upd(wells, jnp.array([0, 1, 2, 3]), jnp.array([1.0, 3.0, 1.875, 0.5]), **kw)
  np.testing.assert_array_equal(np.asarray(wells.strength), [2.0, 0, 0, 0, 0, 0])
  assert float(m["num_strengthened"]) == 1.0
  assert float(m["drop_rate"]) == pytest.approx((0.5 - 0.5 + 0.0625) / 3, rel=1e-6)
  np.testing.assert_array_equal(np.asarray(wells.last_loss), [1.0, 3.0, 1.875, 0.5, 0, 0])
  # The drop is measured since the example was last seen: 1.0 -> 0.75 is 25%, not 62.5%.
  wells, _ = _upd(wells, jnp.array([0]), jnp.array([0.75]), **kw)
  assert float(wells.strength[0]) == 2.0 + 4.0 * 0.25


def test_per_example_needs_vector_loss_and_dense_storage():
  with pytest.raises(ValueError, match="dense"):
    wl.init(4, storage="table", per_example=True)
  with pytest.raises(ValueError, match="per-example"):
    wl.update(wl.init(4, per_example=True), jnp.arange(2), 1.0, **KW)


def test_bad_input_raises_value_or_type_error():
  with pytest.raises(ValueError, match="storage 'hash' is unknown"):
    wl.init(4, storage="hash")
  with pytest.raises(ValueError, match="positive int"):
    wl.init(0)
  with pytest.raises(TypeError, match="positive int"):
    wl.init(4.0)
  with pytest.raises(ValueError, match=r"shape \[\] or \[2\]"):
    wl.update(wl.init(4), jnp.arange(2), jnp.ones(3), **KW)
  with pytest.raises(TypeError, match="integer example indices"):
    wl.update(wl.init(4), jnp.arange(2.0), 1.0, **KW)
  with pytest.raises(ValueError, match=r"ema_decay must lie in \[0.0, 1.0\)"):
    wl.update(wl.init(4), jnp.arange(2), 1.0, **{**KW, "ema_decay": 1.0})
  with pytest.raises(ValueError, match="decay factor"):
    wl.decay(wl.init(4), 1.5)
  with pytest.raises(ValueError, match="batch_size"):
    wl.sample(wl.init(4), jax.random.key(0), 0)
  with pytest.raises(ValueError, match="increase strictly"):
    wl.summary(wl.init(4), edges=(1.0, 0.5))


def _with_strength(wells, strength, ids=None):
  wells = wells.replace(strength=jnp.asarray(strength, jnp.float32))
  if ids is not None:
    wells = wells.replace(ids=jnp.asarray(ids, jnp.int32))
  return wells


STRENGTHS = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 10.0, 0.5], np.float32)


def _chi2_pvalue(counts, probs):
  counts, probs = np.asarray(counts), np.asarray(probs)
  keep = probs > 0
  return stats.chisquare(counts[keep], counts.sum() * probs[keep]).pvalue


def test_sample_matches_strength_distribution():
  n = 20_000
  wells = _with_strength(wl.init(8), STRENGTHS)
  idx, has = jax.jit(wl.sample, static_argnames="batch_size")(wells, jax.random.key(0), n)
  assert bool(has) and idx.shape == (n,) and idx.dtype == jnp.int32
  counts = np.bincount(np.asarray(idx), minlength=8)
  assert counts[0] == 0 and counts[5] == 0          # no draw of a slot without a well
  probs = STRENGTHS / STRENGTHS.sum()
  assert _chi2_pvalue(counts, probs) > SIGNIFICANCE
  # The test has power: uniform draws over the same wells are rejected.
  uniform = np.random.default_rng(0).choice(np.flatnonzero(STRENGTHS), n)
  assert _chi2_pvalue(np.bincount(uniform, minlength=8), probs) < SIGNIFICANCE


def test_sample_from_table_returns_example_indices():
  n = 20_000
  ids = np.array([70, -1, 12, 5, 40, -1], np.int32)
  s = np.array([3.0, 0.0, 1.0, 4.0, 2.0, 0.0], np.float32)
  wells = _with_strength(wl.init(6, storage="table"), s, ids)
  idx, has = _sample(wells, jax.random.key(1), n)
  assert bool(has)
  drawn, counts = np.unique(np.asarray(idx), return_counts=True)
  np.testing.assert_array_equal(drawn, [5, 12, 40, 70])
  assert _chi2_pvalue(counts, np.array([4.0, 1.0, 2.0, 3.0]) / 10) > SIGNIFICANCE


def test_sample_single_well_and_no_wells():
  idx, has = _sample(wl.init(5), jax.random.key(0), 7)
  assert not bool(has)
  np.testing.assert_array_equal(np.asarray(idx), np.zeros(7))
  one = _with_strength(wl.init(5), [0, 0, 0, 0, 1e-30])   # the last slot, tiny strength
  idx, has = _sample(one, jax.random.key(3), 64)
  assert bool(has) and np.all(np.asarray(idx) == 4)


def test_decay_moves_toward_baseline_and_wells_die():
  wells = _with_strength(wl.init(4), [0.0, 1.0, 0.5, 0.0015])
  d = _decay(wells, 0.5, floor=1e-3)
  np.testing.assert_array_equal(np.asarray(d.strength), [0.0, 0.5, 0.25, 0.0])   # 0.00075 died
  b = np.asarray(_decay(wells, 0.5, baseline=0.25, floor=1e-3).strength)
  np.testing.assert_allclose(b, [0.0, 0.625, 0.375, 0.12575], rtol=1e-6)   # from above and below
  # factor 1 keeps, factor 0 sets every well to the baseline.
  np.testing.assert_array_equal(np.asarray(_decay(wells, 1.0, floor=0.0).strength),
                                np.asarray(wells.strength))
  np.testing.assert_array_equal(np.asarray(_decay(wells, 0.0, baseline=0.25).strength),
                                [0.0, 0.25, 0.25, 0.25])
  t = _with_strength(wl.init(3, storage="table"), [1.0, 0.0015, 0.0], [7, 8, -1])
  t = _decay(t, 0.5)
  np.testing.assert_array_equal(np.asarray(t.ids), [7, -1, -1])
  np.testing.assert_array_equal(np.asarray(t.strength), [0.5, 0.0, 0.0])


def test_table_strengthens_in_place():
  wells = _warm(wl.init(4, storage="table"))
  wells, _ = _UPDATE(wells, jnp.array([9, 3]), 1.0)                 # +1.0 each
  wells, _ = _UPDATE(_warm(wells), jnp.array([3, 3, 5]), 1.5)        # +0.5 each
  table = dict(zip(np.asarray(wells.ids).tolist(), np.asarray(wells.strength).tolist()))
  assert table == {9: 1.0, 3: 1.5, 5: 0.5, -1: 0.0}


def _reference_table(capacity, steps):
  """A dict model of the table: strengthen in place, then keep the `capacity` strongest."""
  table = {}
  for indices, incs in steps:
    for i, inc in zip(indices, incs):
      table[i] = table.get(i, 0.0) + inc
    table = dict(sorted(table.items(), key=lambda kv: -kv[1])[:capacity])
  return table


def test_table_keeps_the_strongest():
  capacity, batch = 8, 4
  rng = np.random.default_rng(0)
  wells = _warm(wl.init(capacity, storage="table"))
  steps = []
  for _ in range(12):
    indices = rng.choice(30, batch, replace=False)
    loss = float(rng.uniform(0.2, 1.7))            # EMA is re-set to 2.0 before each step
    wells, m = _UPDATE(_warm(wells), jnp.asarray(indices), loss)
    inc = KW["gain"] * (2.0 - np.float32(loss)) / 2.0
    steps.append((indices.tolist(), [inc] * batch))
    assert float(m["num_strengthened"]) == batch
  ref = _reference_table(capacity, steps)
  got = {i: s for i, s in zip(np.asarray(wells.ids).tolist(), np.asarray(wells.strength))}
  assert sorted(got) == sorted(ref)                # the same strongest examples, no duplicates
  for i in ref:
    assert got[i] == pytest.approx(ref[i], rel=1e-5)


def test_table_new_well_weaker_than_all_is_not_admitted():
  t = _with_strength(wl.init(2, storage="table"), [1.0, 2.0], [10, 11])
  t = _warm(t)
  t, m = _UPDATE(t, jnp.array([12]), 1.75)                        # strength 0.25 < 1.0
  assert float(m["formed"]) == 1.0
  np.testing.assert_array_equal(np.asarray(t.ids), [10, 11])
  t, _ = _UPDATE(_warm(t), jnp.array([13]), 0.5)                  # strength 1.5 > 1.0
  np.testing.assert_array_equal(np.asarray(t.ids), [13, 11])
  np.testing.assert_array_equal(np.asarray(t.strength), [1.5, 2.0])


def test_summary_histogram():
  wells = _with_strength(wl.init(6), [0.0, 5e-5, 0.05, 0.5, 0.7, 500.0])
  s = jax.jit(wl.summary)(wells)
  assert int(s["active"]) == 5
  assert float(s["total_strength"]) == pytest.approx(501.25005, rel=1e-6)
  assert float(s["max_strength"]) == 500.0
  assert float(s["mean_strength"]) == pytest.approx(501.25005 / 5, rel=1e-6)
  np.testing.assert_array_equal(np.asarray(s["histogram"]), [1, 0, 0, 1, 2, 0, 0, 1])
  empty = wl.summary(wl.init(3))
  assert int(empty["active"]) == 0 and float(empty["mean_strength"]) == 0.0


@pytest.mark.parametrize("storage,per_example", [("dense", False), ("table", False),
                                                 ("dense", True)])
def test_everything_jits(storage, per_example):
  """A short run with every function under jax.jit; the outputs stay consistent."""
  kw = dict(threshold=0.01, gain=1.5, ema_decay=0.9, warmup_steps=3)
  update = jax.jit(functools.partial(wl.update, **kw))
  sample = jax.jit(wl.sample, static_argnames="batch_size")
  decay = jax.jit(functools.partial(wl.decay, factor=0.5, baseline=0.0, floor=1e-3))
  summary = jax.jit(wl.summary)
  rng = np.random.default_rng(1)
  wells = wl.init(16, storage=storage, per_example=per_example)
  for t in range(8):
    idx = jnp.asarray(rng.choice(40 if storage == "table" else 16, 4, replace=False))
    loss = np.float32(3.0 - 0.2 * t + rng.uniform(-0.1, 0.1, 4))
    wells, m = update(wells, idx, jnp.asarray(loss if per_example else loss.mean()))
    if t == 5:
      wells = decay(wells)
    drawn, has = sample(wells, jax.random.fold_in(jax.random.key(0), t), batch_size=5)
    s = summary(wells)
    positive = np.asarray(wells.strength) > 0
    assert int(s["active"]) == positive.sum() == int(np.asarray(s["histogram"]).sum())
    assert bool(has) == positive.any()
    if bool(has):                                        # every drawn index is a well
      alive = np.asarray(wl.slot_ids(wells))[positive]
      assert np.all(np.isin(np.asarray(drawn), alive))
    assert set(m) == {"formed", "num_strengthened", "drop_rate", "loss_ema"}
  assert float(jnp.sum(wells.strength)) > 0              # wells did form in this run


def test_traced_hyperparameters():
  """threshold, gain, decay factor and baseline can be traced (e.g. from a schedule)."""
  wells = _warm(wl.init(4))

  @jax.jit
  def f(wells, threshold, gain, factor):
    wells, _ = wl.update(wells, jnp.arange(2), 1.0, threshold=threshold, gain=gain,
                         ema_decay=0.5, warmup_steps=2)
    return wl.decay(wells, factor)

  out = f(wells, 0.1, 2.0, 0.5)
  np.testing.assert_array_equal(np.asarray(out.strength), [0.5, 0.5, 0.0, 0.0])
  out = f(wells, 0.6, 2.0, 0.5)                          # 50% drop is below 0.6
  assert not np.any(np.asarray(out.strength))


@pytest.mark.parametrize("storage,per_example", [("dense", False), ("table", False),
                                                 ("dense", True)])
def test_orbax_round_trip(tmp_path, storage, per_example):
  ocp = pytest.importorskip("orbax.checkpoint")
  wells = wl.init(8, storage=storage, per_example=per_example)
  loss = jnp.array([1.0, 2.0, 0.5]) if per_example else 1.0
  wells, _ = _UPDATE(_warm(wells), jnp.array([1, 6, 3]), loss)
  wells, _ = _UPDATE(_warm(wells), jnp.array([1, 6, 2]), loss * 0.5)
  assert float(jnp.sum(wells.strength)) > 0
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"wells": wells})
  checkpointer.wait_until_finished()
  target = {"wells": wl.init(8, storage=storage, per_example=per_example)}
  restored = checkpointer.restore(tmp_path / "ckpt", target)["wells"]
  assert restored.storage == storage and restored.per_example == per_example
  for a, b in zip(jax.tree.leaves(wells), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_recent_rule_draws_only_after_a_formation():
  """"recent" with window K: an extra update in the K steps from a formation, none after."""
  wells = _warm(wl.init(8, track_formation=True))
  assert wl.init(8).since_formed is None                 # "always" keeps the old tree
  due = jax.jit(wl.draw_due, static_argnames=("rule", "window"))
  assert not bool(due(wells, "recent", 3)) and not bool(due(wells, "always"))   # no well yet
  # One formation (2.0 -> 1.5), then flat losses: the EMA rises toward the loss, no new drop.
  wells, m = _UPDATE(wells, jnp.arange(4), 1.5)
  assert float(m["formed"]) == 1.0 and int(wells.since_formed) == 0
  history = []
  for _ in range(5):
    history.append((bool(due(wells, "recent", 1)), bool(due(wells, "recent", 3)),
                    bool(due(wells, "always"))))
    wells, m = _UPDATE(wells, jnp.arange(4), 4.0)       # a rise: nothing forms
    assert float(m["formed"]) == 0.0
  assert [h[0] for h in history] == [True, False, False, False, False]
  assert [h[1] for h in history] == [True, True, True, False, False]
  assert all(h[2] for h in history)                      # the old rule: whenever a well exists
  # A growing well (its index drops again) counts as a formation too.
  wells = _warm(wells, 4.0)
  wells, m = _UPDATE(wells, jnp.array([0]), 3.0)
  assert float(m["formed"]) == 1.0 and bool(due(wells, "recent", 1))


def test_recent_rule_bad_input():
  with pytest.raises(ValueError, match="draw rule 'often' is unknown"):
    wl.draw_due(wl.init(4), "often")
  with pytest.raises(ValueError, match="track_formation=True"):
    wl.draw_due(wl.init(4), "recent", 1)
  with pytest.raises(ValueError, match="draw window must be an int >= 1"):
    wl.draw_due(wl.init(4, track_formation=True), "recent", 0)


def test_orbax_round_trip_with_formation_tracking(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  wells = wl.init(8, track_formation=True)
  wells, _ = _UPDATE(_warm(wells), jnp.array([1, 6, 3]), 1.5)
  wells, _ = _UPDATE(wells, jnp.array([2]), 9.0)
  assert int(wells.since_formed) == 1
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"wells": wells})
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / "ckpt",
                                  {"wells": wl.init(8, track_formation=True)})["wells"]
  for a, b in zip(jax.tree.leaves(wells), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
