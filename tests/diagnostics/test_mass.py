"""Tests for ban_jax/diagnostics/mass.py."""

import jax
import jax.numpy as jnp
import numpy as np

from ban_jax.diagnostics import mass


def test_context_depth_on_planted_attention():
  # Layer 0 head 0: all attention on the query itself (span 0); head 1: half on itself, half
  # 5 back (span 5 at 0.9); layer 1: uniform over 10 keys (9 keys hold 0.9: span 8).
  w = np.zeros((2, 2, 10))
  w[0, 0, -1] = 1
  w[0, 1, -1] = w[0, 1, -6] = 0.5
  w[1, :] = 0.1
  d, spans = mass.context_depth(w)
  np.testing.assert_array_equal(spans, [[0, 5], [8, 8]])
  assert np.isclose(float(d), (0 + 5 + 8 + 8) / 4)
  w[1, 1] = 0.0   # a row that never reaches 90% (padding): no span, left out of D
  d, spans = mass.context_depth(w)
  assert np.isnan(spans[1, 1]) and np.isclose(float(d), (0 + 5 + 8) / 3)


def test_novelty_estimators_match_float64():
  rng = np.random.default_rng()
  counts = rng.integers(0, 1000, 30)
  train = mass.unigram_distribution(counts)
  np.testing.assert_allclose(train, (counts + 1) / (counts.sum() + 30), rtol=1e-14)
  tokens = rng.integers(0, 30, 50)
  p = np.bincount(tokens, minlength=30) / 50
  nz = p > 0
  want = (p[nz] * np.log(p[nz] / train[nz])).sum()
  assert abs(mass.unigram_novelty(tokens, train) - want) / want < 1e-12
  logits = rng.normal(size=(50, 30))
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -log_p[np.arange(49), tokens[1:]].mean()
  with jax.enable_x64(True):
    got = float(mass.surprisal_novelty(jnp.asarray(logits), tokens))
  assert abs(got - want) / want < 1e-12


def test_mass_standardises_components():
  h, d, n = np.arange(5.0), np.arange(5.0) * 100, np.zeros(5)
  m = mass.information_mass(h, d, n, alpha=1.0, beta=2.0, gamma=5.0)
  z = (h - h.mean()) / h.std()
  np.testing.assert_allclose(m, 3 * z, rtol=1e-12)
  ent, mean_ent = mass.mean_entropy(jnp.zeros((4, 8)))
  assert np.isclose(float(ent), np.log(8)) and np.isclose(float(mean_ent), np.log(8))
