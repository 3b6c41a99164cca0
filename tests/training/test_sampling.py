"""Sampling takes its document markers from the tokenizer."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ban_jax.data import tokenizer as tokenizer_lib
from ban_jax.training import sampling


class _Tokenizer(tokenizer_lib.ByteTokenizer):
  """Bytes with other begin/end ids than the usual 1/2."""
  bos_id, eos_id = 5, 6


class _MirrorFirst(nn.Module):
  """Always predicts 11 − (first token of the window): 6 after BOS 5, but 10 after BOS 1."""

  @nn.compact
  def __call__(self, tokens, segment_ids, positions, deterministic):
    del segment_ids, positions, deterministic
    self.param("unused", nn.initializers.zeros, ())
    return jax.nn.one_hot(11 - tokens[:, :1], 16) * 100.0 * jnp.ones([1, tokens.shape[1], 1])


def test_generate_starts_with_bos_and_stops_at_eos_of_the_tokenizer():
  model = _MirrorFirst()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros([1, 8], jnp.int32), None, None,
                      True)["params"]
  # Only a window that starts with this tokenizer's BOS (5) makes the model predict its EOS (6)
  # at once, and only stopping at this EOS adds nothing to the prompt.
  out = sampling.generate(model, params, _Tokenizer(), "ab", length=4, seq_len=8,
                          temperature=1e-3, rng=jax.random.PRNGKey(0))
  assert out == "ab"
