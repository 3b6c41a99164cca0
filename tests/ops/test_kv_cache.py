"""Tests for ban_jax/ops/kv_cache.py: each policy keeps exactly its budget, and the right slots."""

import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.ops import kv_cache as kv


def _cache(positions, **stats):
  """A one-row cache of len(positions) slots with the given per-slot stats."""
  n = len(positions)
  c = kv.empty(1, n, 1, 2, 2, jnp.float32)
  c["position"] = jnp.asarray([positions], jnp.int32)
  c["k"] = jnp.arange(n * 2, dtype=jnp.float32).reshape(1, n, 1, 2)
  for name, values in stats.items():
    c[name] = jnp.asarray([values], jnp.float32)
  return c


def _insert(spec, cache, position, **stats):
  """Adds one token at `position` (attention it received: none) and returns the kept positions."""
  new = kv.new_entries(jnp.full((1, 1, 1, 2), 9.0), jnp.zeros((1, 1, 1, 2)),
                       jnp.asarray([[position]]), None, None)
  for name, value in stats.items():
    new[name] = jnp.asarray([[value]], jnp.float32)
  kept = kv.select(spec, kv.concat(cache, new), jnp.asarray([position]))
  assert kept["position"].shape == (1, spec.slots)              # exactly the budget
  return sorted(np.asarray(kept["position"][0]).tolist())


POSITIONS = [0, 1, 2, 3, 4, 5, 6, 7]


def test_empty_slots_fill_first_and_the_newest_always_enters():
  c = _cache([0, 1, -1, 3, -1, -1, -1, -1])
  for policy in kv.POLICIES:
    assert _insert(kv.KVSpec(policy, slots=8), c, 4) == [-1, -1, -1, -1, 0, 1, 3, 4]


def test_recent_and_sinks():
  c = _cache(POSITIONS)
  assert _insert(kv.KVSpec("recent", slots=8), c, 8) == [1, 2, 3, 4, 5, 6, 7, 8]
  assert _insert(kv.KVSpec("sinks", slots=8, sinks=4), c, 8) == [0, 1, 2, 3, 5, 6, 7, 8]
  with pytest.raises(ValueError, match="no room after the 4 attention sinks"):
    kv.KVSpec("sinks", slots=4)


def test_h2o_keeps_the_recent_half_and_the_heaviest_of_the_rest():
  # Slot 1 received the least attention but is old; slot 6 received less but is recent.
  attn = [5.0, 0.1, 3.0, 2.0, 4.0, 6.0, 0.0, 0.0]
  c = _cache(POSITIONS, attn_sum=attn)
  assert _insert(kv.KVSpec("h2o", slots=8), c, 8) == [0, 2, 3, 4, 5, 6, 7, 8]
  # With no recent window the lightest overall (slot 6) goes.
  assert _insert(kv.KVSpec("h2o", slots=8, recent=0), c, 8) == [0, 1, 2, 3, 4, 5, 7, 8]


def test_tova_evicts_what_the_newest_query_ignored_and_knorm_the_largest_key():
  c = _cache(POSITIONS, attn_last=[0.3, 0.2, 0.01, 0.1, 0.1, 0.1, 0.1, 0.09])
  assert _insert(kv.KVSpec("tova", slots=8), c, 8) == [0, 1, 3, 4, 5, 6, 7, 8]
  c = _cache(POSITIONS, knorm=[1.0, 1.0, 1.0, 7.0, 1.0, 1.0, 1.0, 1.0])
  assert _insert(kv.KVSpec("knorm", slots=8), c, 8) == [0, 1, 2, 4, 5, 6, 7, 8]


def test_gravity_evicts_the_lightest_mass_and_each_term_can_be_switched_off():
  stats = dict(key_mass=[1.0, 0.05, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],     # slot 1: light tag
               surprisal=[2.0, 2.0, 0.1, 2.0, 2.0, 2.0, 2.0, 2.0],     # slot 2: predictable
               attn_sum=[1.0, 1.0, 1.0, 0.001, 1.0, 1.0, 1.0, 1.0],   # slot 3: ignored
               queries=[4.0] * 8)
  c = _cache(POSITIONS, **stats)
  spec = lambda *terms: kv.KVSpec("gravity", slots=8, recent=2, terms=terms)
  assert 1 not in _insert(spec("tag"), c, 8)
  assert 2 not in _insert(spec("surprisal"), c, 8)
  assert 3 not in _insert(spec("attention"), c, 8)
  # All three: log M = log m + s + log ā; slot 3's ā = 0.00025 is the lightest mass.
  logm = np.asarray(kv.gravity_log_mass(c))[0]
  want = np.log(stats["key_mass"]) + stats["surprisal"] + np.log(np.asarray(
      stats["attn_sum"]) / 4 + 1e-9)
  np.testing.assert_allclose(logm, want, rtol=1e-6)
  assert 3 not in _insert(spec(*kv.GRAVITY_TERMS), c, 8)
  # The recent window protects the newest even when they are light.
  c = _cache(POSITIONS, **dict(stats, key_mass=[1.0] * 7 + [0.001]))
  assert 7 in _insert(spec("tag"), c, 8)


def test_a_prompt_longer_than_the_budget_keeps_the_top_scores():
  c = kv.empty(1, 4, 1, 2, 2, jnp.float32)
  new = kv.new_entries(jnp.ones((1, 6, 1, 2)), jnp.zeros((1, 6, 1, 2)),
                       jnp.arange(6)[None], None, None)
  kept = kv.select(kv.KVSpec("recent", slots=4), kv.concat(c, new), jnp.asarray([5]))
  assert sorted(np.asarray(kept["position"][0]).tolist()) == [2, 3, 4, 5]
  kept = kv.select(kv.KVSpec("sinks", slots=4, sinks=2), kv.concat(c, new), jnp.asarray([5]))
  assert sorted(np.asarray(kept["position"][0]).tolist()) == [0, 1, 4, 5]


def test_observe_accumulates_attention_per_query():
  c = _cache([0, 1, -1])
  new = kv.new_entries(jnp.ones((1, 2, 1, 2)), jnp.zeros((1, 2, 1, 2)),
                       jnp.asarray([[2, 3]]), None, None)
  cand = kv.concat(c, new)                                            # 3 slots + 2 new
  w = jnp.asarray([[[[0.5, 0.5, 0.0, 0.0, 0.0], [0.25, 0.25, 0.0, 0.25, 0.25]]]])  # 1 head
  out = kv.observe(cand, w)
  np.testing.assert_allclose(out["attn_sum"][0], [0.75, 0.75, 0.0, 0.25, 0.25])
  np.testing.assert_allclose(out["attn_last"][0], [0.25, 0.25, 0.0, 0.25, 0.25])
  np.testing.assert_allclose(out["queries"][0], [2, 2, 2, 2, 1])


def test_bad_specs_are_one_clear_error():
  with pytest.raises(ValueError, match="kv policy 'lru' is unknown"):
    kv.KVSpec("lru")
  with pytest.raises(ValueError, match="positive number of slots"):
    kv.KVSpec("recent", slots=0)
  with pytest.raises(ValueError, match="gravity terms"):
    kv.KVSpec("gravity", terms=("mass",))
