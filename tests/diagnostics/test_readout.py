"""Tests for ban_jax/diagnostics/readout.py on a small transformer with the full system's
attention (inverse-square score, power-law field, tagging), untrained weights; the BAN's own
path runs in tests/test_diagnose.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax import models
from ban_jax.diagnostics import mass
from ban_jax.diagnostics import readout
from ban_jax.inference import generate
from ban_jax.ops import kv_cache


@pytest.fixture(scope="module")
def lm():
  from configs import wiki  # pylint: disable=g-import-not-at-top
  c = wiki.get_config("tiny").model
  c.update(d_model=32, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16, mlp_dim=64,
           attention="inverse_square", positional="power_law", tagging=True, dtype="float32")
  model = models.get_model(c, 40)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  return model, params


def test_forward_gives_every_layers_weights(lm):
  model, params = lm
  tokens = jax.random.randint(jax.random.key(1), (3, 10), 3, 40)
  logits, weights = readout.make_forward(model)(params, tokens)
  np.testing.assert_allclose(logits, model.apply({"params": params}, tokens), rtol=1e-5,
                             atol=1e-6)
  assert weights.shape == (2, 3, 2, 10, 10)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  m = readout.query_measures(model, params, np.asarray(tokens), np.full(40, 1 / 40), batch=2)
  assert m["spans"].shape == (3, 2, 2) and m["logits"].shape == (3, 40)
  depth, _ = mass.context_depth(weights[:, 1, :, -1])
  assert np.isclose(m["depth"][1], float(depth))


def test_batched_sampling_is_the_packages_sampling(lm):
  """One prompt: the draws of `ban_jax.inference.generate`, token for token; a batch: near
  T = 0, each row is that prompt's greedy continuation."""
  model, params = lm
  prompts = np.asarray(jax.random.randint(jax.random.key(2), (2, 6), 3, 40))
  spec = kv_cache.KVSpec(policy="full", slots=64)
  got = readout.sample(model, params, prompts[:1], length=7, temperature=0.8, seed=3)
  want = generate.generate(model, params, prompts[0], length=7, temperature=0.8, spec=spec,
                           rng=jax.random.key(3))
  np.testing.assert_array_equal(got[0], want)
  cold = readout.sample(model, params, prompts, length=7, temperature=1e-4, seed=3)
  for row in range(2):
    greedy = generate.generate(model, params, prompts[row], length=7, temperature=0.0,
                               spec=spec)
    np.testing.assert_array_equal(cold[row], greedy)


def test_continuation_surprisal_is_teacher_forced_nll(lm):
  model, params = lm
  prefixes = np.asarray(jax.random.randint(jax.random.key(4), (2, 5), 3, 40))
  answers = [np.asarray([7, 8, 9]), np.asarray([11])]
  total, rank = readout.continuation_surprisal(model, params, prefixes, answers)
  for i, a in enumerate(answers):
    full = np.concatenate([prefixes[i], a])[None]
    log_p = np.asarray(jax.nn.log_softmax(model.apply({"params": params}, full)[0]), np.float64)
    want = -sum(log_p[4 + k, t] for k, t in enumerate(a))
    assert abs(total[i] - want) < 1e-4
    assert rank[i] == (log_p[4] > log_p[4, a[0]]).sum()
