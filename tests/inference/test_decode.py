"""Decoding through the KV cache equals the full forward, for a pairwise cover of the models."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax import models
from ban_jax.inference import decode
from ban_jax.ops import kv_cache as kv

FACTORS = {
    "name": ("ban", "transformer"),
    "attention": ("dot", "gravity", "inverse_square"),
    "positional": ("rope", "power_law", "alibi", "none"),
    "tagging": ("off", "hidden", "surprisal"),
    "num_kv_heads": (4, 2, 1),
}


def pairwise_cover(factors):
  """A small set of settings in which every pair of values of two factors occurs (greedy)."""
  names = list(factors)
  todo = {((a, x), (b, y)) for a, b in itertools.combinations(names, 2)
          for x in factors[a] for y in factors[b]}
  rows = []
  candidates = [dict(zip(names, values)) for values in itertools.product(*factors.values())]
  while todo:
    pairs = lambda row: {((a, row[a]), (b, row[b])) for a, b in itertools.combinations(names, 2)}
    best = max(candidates, key=lambda row: len(pairs(row) & todo))
    todo -= pairs(best)
    rows.append(best)
  return rows


COVER = pairwise_cover(FACTORS)
VOCAB = 40


def _model(setting):
  flat = dict(name=setting["name"], d_model=32, num_layers=2, num_heads=4,
              num_kv_heads=setting["num_kv_heads"], head_dim=8, attention=setting["attention"],
              positional=setting["positional"], tagging=setting["tagging"] != "off",
              tagging_source="surprisal" if setting["tagging"] == "surprisal" else "hidden",
              dtype="float32")
  if setting["name"] == "ban":
    flat.update(num_branches=3, attractor_steps=3)
  else:
    flat.update(mlp_dim=64)
  return models.get_model(flat, VOCAB)


def _params(model, seed=0):
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = model.init(jax.random.key(seed), tokens)["params"]
  # Move tagging off its neutral start, so that masses differ per token and matter.
  def jitter(path, x):
    name = jax.tree_util.keystr(path)
    if "tagging" in name:
      return x + 0.5 * jax.random.normal(jax.random.key(len(name)), x.shape)
    return x
  return jax.tree_util.tree_map_with_path(jitter, params)


def test_the_cover_covers_every_pair():
  assert len(COVER) <= 18          # of 216 combinations; a pair cover needs at least 12
  for a, b in itertools.combinations(FACTORS, 2):
    seen = {(row[a], row[b]) for row in COVER}
    assert seen == set(itertools.product(FACTORS[a], FACTORS[b])), (a, b)


@pytest.mark.parametrize("setting", COVER, ids=lambda s: "-".join(map(str, s.values())))
def test_decoding_with_an_unbounded_cache_equals_the_full_forward(setting):
  model = _model(setting)
  params = _params(model)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, VOCAB)
  full = model.apply({"params": params}, tokens)
  dec = decode.Decoder(model, kv.KVSpec("full", slots=16))
  logits, cache = dec.prefill(params, tokens[:, :5])
  outs = [logits]
  for t in range(5, 12):
    out, cache = dec.step(params, cache, tokens[:, t:t + 1], jnp.full((2, 1), t))
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-4, rtol=1e-4)
  if setting["tagging"] == "surprisal":
    # The teacher-forced scan gives the same negative log-likelihoods.
    nll = dec.score(params, tokens)
    want = -jnp.take_along_axis(jax.nn.log_softmax(full[:, :-1]), tokens[:, 1:, None],
                                -1)[..., 0]
    np.testing.assert_allclose(nll, want, atol=1e-4, rtol=1e-4)
    # And the argmax the parallel forward takes (where its top two logits are apart).
    top2 = jnp.sort(full[:, :-1], axis=-1)[..., -2:]
    clear = np.asarray(top2[..., 1] - top2[..., 0] > 1e-3)
    guess = np.asarray(dec.predict(params, tokens))
    np.testing.assert_array_equal(guess[clear], np.asarray(jnp.argmax(full[:, :-1], -1))[clear])


def test_greedy_generation_equals_recomputing_the_window_and_a_small_cache_differs():
  setting = dict(name="ban", attention="gravity", positional="power_law", tagging="hidden",
                 num_kv_heads=2)
  model = _model(setting)
  params = _params(model, seed=3)
  prompt = jax.random.randint(jax.random.key(2), (1, 4), 0, VOCAB)

  # Recompute the whole (causal) window for every token, in one fixed-shape buffer.
  forward = jax.jit(lambda buf: model.apply({"params": params}, buf))
  recomputed = jnp.zeros((1, 14), jnp.int32).at[:, :4].set(prompt)
  for t in range(4, 14):
    recomputed = recomputed.at[:, t].set(jnp.argmax(forward(recomputed)[:, t - 1], -1))

  def greedy(spec):
    dec = decode.Decoder(model, spec)
    logits, cache = dec.prefill(params, prompt)
    out = prompt
    for t in range(4, 14):
      nxt = jnp.argmax(logits[:, -1:], -1)
      out = jnp.concatenate([out, nxt], axis=1)
      if t < 13:
        logits, cache = dec.step(params, cache, nxt, jnp.full((1, 1), t))
    return out, cache

  cached, cache = greedy(kv.KVSpec("full", slots=16))
  np.testing.assert_array_equal(cached, recomputed)
  tokens = jnp.concatenate([prompt, recomputed[:, 4:]], axis=1)
  full_nll = decode.Decoder(model, kv.KVSpec("full", slots=16)).score(params, tokens)
  small_nll = decode.Decoder(model, kv.KVSpec("recent", slots=3)).score(params, tokens)
  np.testing.assert_allclose(small_nll[:, :2], full_nll[:, :2], atol=1e-5)   # fits: same
  assert np.max(np.abs(np.asarray(small_nll[:, 4:] - full_nll[:, 4:]))) > 1e-3  # evicted: not


def test_generation_past_the_window_keeps_exactly_the_budget():
  model = _model(dict(name="transformer", attention="dot", positional="alibi", tagging="off",
                      num_kv_heads=4))
  params = _params(model)
  dec = decode.Decoder(model, kv.KVSpec("sinks", slots=8, sinks=2))
  logits, cache = dec.prefill(params, jnp.zeros((1, 3), jnp.int32))
  for t in range(3, 40):
    logits, cache = dec.step(params, cache, jnp.argmax(logits[:, -1:], -1), jnp.full((1, 1), t))
  for layer in ("block_0", "block_1"):
    held = sorted(np.asarray(cache[layer]["attn"]["slots"]["position"][0]).tolist())
    assert held == [0, 1] + list(range(34, 40))
  assert np.all(np.isfinite(np.asarray(logits)))
