"""The runtime samples as `ban_jax.inference.generate` does: the same filtered distribution."""

import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.inference import generate as jax_generate
from ban_jax.runtime import sampling


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0),
                                                     (1.3, 0, 0.8), (0.9, 20, 0.5)])
def test_filter_logits_matches_jax(temperature, top_k, top_p):
  logits = np.random.default_rng(top_k).standard_normal((8, 259)).astype(np.float32) * 3
  theirs = np.asarray(jax_generate.filter_logits(jnp.asarray(logits), temperature=temperature,
                                                 top_k=top_k, top_p=top_p))
  ours = np.stack([sampling.filter_logits(row, temperature=temperature, top_k=top_k,
                                          top_p=top_p) for row in logits])
  np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
  np.testing.assert_allclose(ours[np.isfinite(ours)], theirs[np.isfinite(theirs)], rtol=1e-6)


def test_draws_follow_the_filtered_distribution():
  logits = np.asarray([2.0, 1.0, 0.5, 0.0, -1.0], np.float32)
  rng = np.random.default_rng(0)
  draws = [sampling.choose(logits, rng, temperature=1.0, top_k=3) for _ in range(20000)]
  counts = np.bincount(draws, minlength=5) / len(draws)
  expected = np.exp(logits[:3]) / np.exp(logits[:3]).sum()
  assert counts[3:].sum() == 0
  np.testing.assert_allclose(counts[:3], expected, atol=0.015)
  assert sampling.choose(logits, rng, temperature=0) == 0
