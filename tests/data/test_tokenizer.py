"""Tokenizers."""

import numpy as np

from ban_jax.data import tokenizer


def test_bytes_round_trip_and_byte_counts():
  tok = tokenizer.ByteTokenizer()
  text = "Gödel's ∀x — naïve 日本"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.min() >= tok.num_specials and ids.max() < tok.vocab_size
  assert len(ids) == len(text.encode("utf-8"))
  assert tok.decode(ids) == text
  assert tok.decode([tokenizer.BOS, *ids, tokenizer.EOS, tokenizer.PAD]) == text
  assert tok.token_bytes[ids].sum() == len(text.encode("utf-8"))
  assert tok.token_bytes[[tokenizer.PAD, tokenizer.BOS, tokenizer.EOS]].sum() == 0
