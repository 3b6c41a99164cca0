"""Tests for ban_jax/ops/surprisal.py against a float64 reference."""

import math

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from ban_jax.ops.surprisal import token_surprisal


def _reference(logits, tokens, segment_ids, first):
  logits = np.asarray(logits, np.float64)
  b, t, v = logits.shape
  out = np.empty((b, t))
  for i in range(b):
    for j in range(t):
      if j == 0 or (segment_ids is not None and segment_ids[i, j] != segment_ids[i, j - 1]):
        out[i, j] = first
        continue
      z = logits[i, j - 1]
      log_norm = z.max() + math.log(np.exp(z - z.max()).sum())
      out[i, j] = log_norm - z[tokens[i, j]]
  return out


@pytest.mark.parametrize("packed", [False, True])
def test_matches_float64_reference(packed):
  rng = np.random.default_rng(7)
  logits = rng.normal(size=(3, 11, 13)) * 4
  tokens = rng.integers(0, 13, size=(3, 11))
  segment_ids = np.repeat(rng.integers(1, 3, size=(3, 11)).cumsum(1) // 2, 1, axis=1) \
      if packed else None
  got = token_surprisal(jnp.asarray(logits, jnp.float32), jnp.asarray(tokens), segment_ids)
  want = _reference(logits, tokens, segment_ids, math.log(13))
  assert got.shape == (3, 11) and got.dtype == jnp.float32
  rel = np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want))
  assert rel < 1e-5
  assert np.all(np.asarray(got) >= 0)


def test_first_token_value_and_gradients():
  rng = np.random.default_rng(8)
  logits = jnp.asarray(rng.normal(size=(2, 6, 5)))
  tokens = jnp.asarray(rng.integers(0, 5, size=(2, 6)))
  got = token_surprisal(logits, tokens, first=0.25)
  np.testing.assert_array_equal(np.asarray(got[:, 0]), 0.25)
  check_grads(lambda z: token_surprisal(z, tokens), (logits,), order=1, modes=["rev"],
              atol=1e-2, rtol=1e-2)
  # A token's surprisal depends on the prediction before it only.
  jac = jax.jacrev(lambda z: token_surprisal(z, tokens)[0])(logits)   # [t, b, t, v]
  norms = np.abs(np.asarray(jac)).sum(axis=(1, 3))                     # [t_out, t_in]
  assert np.all(norms[np.arange(1, 6), np.arange(0, 5)] > 0)
  norms[np.arange(1, 6), np.arange(0, 5)] = 0
  assert np.all(norms == 0)
