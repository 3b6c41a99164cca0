"""Tokenizers."""

import numpy as np
import pytest

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
  assert (tok.bos_id, tok.eos_id) == (tokenizer.BOS, tokenizer.EOS)


def test_sentencepiece_round_trip_and_exact_byte_counts(tmp_path):
  pytest.importorskip("sentencepiece")
  rng = np.random.default_rng()
  words = ["gravity", "attention", "attractor", "naïve", "Gödel", "well", "branch", "the", "of"]
  texts = [" ".join(rng.choice(words, size=40)) + f" {i} ∀x." for i in range(300)]
  path = tokenizer.train_sentencepiece(texts, str(tmp_path / "spm"), vocab_size=300)
  tok = tokenizer.SentencePieceTokenizer(path)
  for text in texts[:20] + ["unseen 日本 text"]:   # CJK falls back to bytes
    ids = tok.encode(text)
    assert ids.min() > tokenizer.EOS
    assert tok.decode(ids) == text
    assert tok.token_bytes[ids].sum() == len(text.encode("utf-8"))
  assert tok.token_bytes[[tokenizer.PAD, tokenizer.BOS, tokenizer.EOS]].sum() == 0
  assert (tok.bos_id, tok.eos_id) == (tokenizer.BOS, tokenizer.EOS)
