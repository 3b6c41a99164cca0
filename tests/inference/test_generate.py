"""Sampling through the cache: filters, document markers, streaming, bounded generation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.data import tokenizer as tokenizer_lib
from ban_jax.inference import generate
from ban_jax.ops import kv_cache as kv


def test_top_k_and_top_p_keep_the_right_tokens():
  logits = jnp.log(jnp.asarray([[0.5, 0.05, 0.3, 0.15], [0.25, 0.25, 0.25, 0.25]]))
  z = generate.filter_logits(logits, temperature=1.0, top_k=2)
  np.testing.assert_array_equal(np.isfinite(np.asarray(z[0])), [True, False, True, False])
  # Nucleus 0.7: 0.5 (before it 0) and 0.3 (before it 0.5 < 0.7) stay; 0.15 (before 0.8) goes.
  z = generate.filter_logits(logits, temperature=1.0, top_p=0.7)
  np.testing.assert_array_equal(np.isfinite(np.asarray(z[0])), [True, False, True, False])
  z = generate.filter_logits(logits, temperature=0.5)
  np.testing.assert_allclose(z, logits / 0.5, rtol=1e-6)


class _Tokenizer(tokenizer_lib.ByteTokenizer):
  """Bytes with other begin/end ids than the usual 1/2."""
  bos_id, eos_id = 5, 6


class _MirrorFirst(nn.Module):
  """Always predicts 11 − (first token of the text): 6 after BOS 5, but 10 after BOS 1."""

  @nn.compact
  def __call__(self, tokens, *, positions=None, kv=None, token_surprisal=None,
               deterministic=True, segment_ids=None):
    del positions, kv, token_surprisal, deterministic, segment_ids
    self.param("unused", nn.initializers.zeros, ())
    first = self.variable("cache", "first", lambda: tokens[:, :1])
    return jax.nn.one_hot(11 - first.value, 16) * 100.0 * jnp.ones([1, tokens.shape[1], 1])


def test_sample_text_starts_with_bos_and_stops_at_eos_of_the_tokenizer():
  model = _MirrorFirst()
  params = {"unused": jnp.zeros(())}
  # Only a text that starts with this tokenizer's BOS (5) makes the model predict its EOS (6)
  # at once, and only stopping at this EOS adds nothing to the prompt.
  out = generate.sample_text(model, params, _Tokenizer(), "ab", length=4, temperature=1e-3,
                             rng=jax.random.PRNGKey(0))
  assert out == "ab"


def test_tokens_stream_as_they_are_made_and_a_full_cache_must_fit():
  seen = []
  model = _MirrorFirst()
  params = {"unused": jnp.zeros(())}
  out = generate.generate(model, params, [1, 7], length=5, spec=kv.KVSpec("full", slots=7),
                          temperature=0.0, on_token=seen.append)
  assert out.tolist() == [10] * 5 and seen == [10] * 5
  with pytest.raises(ValueError, match="cannot hold the 2 prompt tokens and 5 new ones"):
    generate.generate(model, params, [1, 7], length=5, spec=kv.KVSpec("full", slots=6))
