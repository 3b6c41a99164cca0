"""The NumPy runtime gives the JAX model's logits, greedy tokens and cache slots (float32)."""

import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.inference import trained
from ban_jax.ops import kv_cache as kv_ops
from ban_jax.runtime import cache as rt_cache
from ban_jax.runtime import model as rt_model
from ban_jax import models
from tests.runtime.exports import TRAINED, decode_both, random_params, small_config, write_banx

STEPS = 24   # greedy steps after a 20-token prompt: 44 positions through 12-16 slots


@pytest.mark.parametrize("kind,policy,slots", [("ban", "gravity", 16),
                                               ("transformer", "sinks", 12)])
def test_trained_runs_match_jax_with_a_bounded_cache(tmp_path, prompt, kind, policy, slots):
  run = trained.load(TRAINED[kind])
  path = write_banx(tmp_path / "m.banx", run.config, run.model, run.params)
  spec = kv_ops.KVSpec(policy, slots=slots)
  session = rt_model.load(path).session(rt_cache.Spec(policy, slots=slots))
  worst, theirs, ours, jax_slots, our_slots = decode_both(run.model, run.params, session, spec,
                                                          prompt, STEPS)
  assert worst <= 1e-4
  assert ours == theirs
  for a, b in zip(jax_slots, our_slots):
    np.testing.assert_array_equal(a, b)
  assert min(int(s.min()) for s in our_slots) >= 0 and len(prompt) + STEPS > slots  # evicted


@pytest.mark.parametrize("preset,model,policy", [
    # The default system's attention (inverse-square, tagging, power law), prompt cut at once.
    ("default", {}, "recent"),
    # ALiBi, untied output head, straight-through routing, the gravity policy's recent window.
    ("ban", dict(positional="alibi", attention="gravity", tie_embeddings=False,
                 routing="straight_through"), "gravity"),
])
def test_other_scores_and_fields_match_jax(tmp_path, prompt, preset, model, policy):
  config = small_config(preset, **model)
  net = models.get_model(config.model, 259)
  params = random_params(net)
  path = write_banx(tmp_path / "m.banx", config, net, params)
  spec = kv_ops.KVSpec(policy, slots=10, recent=3 if policy == "gravity" else None)
  session = rt_model.load(path).session(rt_cache.Spec(policy, slots=10, recent=spec.recent))
  worst, theirs, ours, jax_slots, our_slots = decode_both(net, params, session, spec, prompt, 8)
  assert worst <= 1e-4
  assert ours == theirs
  for a, b in zip(jax_slots, our_slots):
    np.testing.assert_array_equal(a, b)


def _random_candidates(rng, n, length):
  stats = {"position": rng.permutation(40)[:n].astype(np.int32),
           "key_mass": rng.uniform(0.2, 3, n).astype(np.float32),
           "surprisal": rng.uniform(0, 6, n).astype(np.float32),
           "attn_sum": rng.uniform(0, 2, n).astype(np.float32),
           "attn_last": rng.uniform(0, 1, n).astype(np.float32),
           "queries": rng.integers(1, 9, n).astype(np.float32)}
  stats["position"][: n // 4] = -1                                  # some empty slots
  stats["position"][-length:] = 50 + np.arange(length)              # the new tokens, newest last
  return stats


@pytest.mark.parametrize("policy", rt_cache.POLICIES)
@pytest.mark.parametrize("length", [1, 5])
def test_the_cache_keeps_what_the_jax_cache_keeps(policy, length):
  rng = np.random.default_rng(length)
  for terms in (("tag", "surprisal", "attention"), ("attention",)):
    spec = kv_ops.KVSpec(policy, slots=8, recent=2, terms=terms)
    ours_spec = rt_cache.Spec(policy, slots=8, recent=2, terms=terms)
    for _ in range(5):
      stats = _random_candidates(rng, 8 + length, length)
      jax_stats = {k: jnp.asarray(v[None]) for k, v in stats.items()}
      jax_stats["knorm"] = jnp.zeros_like(jax_stats["key_mass"])
      kept = kv_ops.select(spec, jax_stats, np.asarray([stats["position"][-1]]))
      ours = rt_cache.select(ours_spec, stats, int(stats["position"][-1]))
      np.testing.assert_array_equal(np.asarray(kept["position"][0]), ours["position"])


def test_policies_the_runtime_lacks_are_one_clear_error():
  with pytest.raises(ValueError, match="not supported in the runtime"):
    rt_cache.Spec("h2o", slots=8)
