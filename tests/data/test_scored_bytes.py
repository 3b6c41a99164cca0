"""Exactly the bytes an evaluation scores, for the compressor yardsticks."""

import numpy as np
import pytest

from ban_jax.data import packing
from ban_jax.data import pipeline
from ban_jax.data import tokenizer as tokenizer_lib

DOCS = [b"The history of gravity. " * 7, "caf\u00e9 na\u00efve \u4e2d\u6587 ".encode() * 5,
        b"short", b"A well is a training example. " * 4]


def _split(tok, seq_len):
  docs = [packing.frame(tok.encode(d), tok.bos_id, tok.eos_id) for d in DOCS]
  return pipeline.Split(packing.PackedWindows(docs, np.array([len(d) for d in docs]), seq_len,
                                              preload=True), len(docs))


@pytest.fixture(scope="module", name="tokenizers")
def fixture_tokenizers(tmp_path_factory):
  spm = pytest.importorskip("sentencepiece")
  del spm
  rng = np.random.default_rng(0)
  words = ["gravity", "attention", "history", "na\u00efve", "caf\u00e9", "well", "the", "of"]
  texts = [" ".join(rng.choice(words, size=40)) + f" {i}." for i in range(300)] + DOCS
  path = tokenizer_lib.train_sentencepiece(
      texts, str(tmp_path_factory.mktemp("spm") / "spm"), 300)
  return [tokenizer_lib.ByteTokenizer(), tokenizer_lib.SentencePieceTokenizer(path)]


def test_to_bytes_length_is_token_bytes_sum(tokenizers):
  # The globe is in no training text: SentencePiece spells it in byte-fallback pieces.
  text = b"".join(DOCS) + "🌍 x".encode()
  for tok in tokenizers:
    ids = np.concatenate([[tok.bos_id], tok.encode(text), [tok.eos_id, 0]])
    assert len(tok.to_bytes(ids)) == tok.token_bytes[ids].sum()
    # Specials give nothing; everything else round-trips to the text's bytes.
    assert tok.to_bytes(ids) == text


@pytest.mark.parametrize("batch_size,max_batches", [(3, 0), (4, 2), (64, 0), (2, 3)])
def test_scored_bytes_are_the_weighted_targets_once(tokenizers, batch_size, max_batches):
  for tok in tokenizers:
    split = _split(tok, seq_len=16)
    data = pipeline.scored_bytes(split, batch_size, max_batches, tok)
    # What eval_step counts: Σ token_bytes[targets] · weights over the same batches.
    counted = sum(float(np.sum(tok.token_bytes[b["targets"]] * b["weights"]))
                  for b in pipeline.eval_batches(split, batch_size, max_batches))
    assert len(data) == counted
    if not max_batches:
      # Every document's bytes, each once, in order: the first token of the split (BOS) is never
      # a target, and each document's EOS→next BOS target has weight 0.
      assert data == b"".join(DOCS)[:len(data)]
      assert len(b"".join(DOCS)) - len(data) < 16 + 1
