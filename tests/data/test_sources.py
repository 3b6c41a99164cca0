"""Opening the configured dataset and tokenizer."""

import numpy as np
import pytest

from ban_jax.data import pipeline
from ban_jax.data import sources
from ban_jax.errors import UserError
from configs import wiki


def _data_cfg(tfds_dir, cache_dir, **kw):
  c = wiki.get_config("smoke").data
  c.tfds_data_dir, c.cache_dir = tfds_dir, cache_dir
  c.update(kw)
  return c


def test_sentencepiece_trained_on_the_train_split_packs_like_bytes(tfds_dir, tmp_path):
  pytest.importorskip("sentencepiece")
  cfg = _data_cfg(tfds_dir, str(tmp_path), tokenizer="spm", spm_vocab_size=512,
                  spm_train_documents=10, seq_len=64)
  splits, name = sources.open_splits(cfg)
  tok = sources.make_tokenizer(cfg, splits["train"])
  assert tok.vocab_size == 512
  split = pipeline.open_split(splits["validation"], name, tok, cfg)
  w = split.windows[3]
  assert w["inputs"].max() < 512
  # Fewer tokens than bytes: the subword model compresses.
  doc = splits["validation"][0]["text"]
  assert len(tok.encode(doc)) < 0.6 * len(doc)
  assert tok.token_bytes[tok.encode(doc)].sum() == len(doc)
  # A second call reuses the trained model from the cache.
  assert sources.make_tokenizer(cfg, None).name == tok.name


def test_unknown_split_is_a_user_error(tfds_dir, cache_dir):
  with pytest.raises(UserError, match="validation_split"):
    sources.open_splits(_data_cfg(tfds_dir, cache_dir, validation_split="test"))


def test_wrong_text_key_names_the_fields(tfds_dir, cache_dir):
  cfg = _data_cfg(tfds_dir, cache_dir, text_key="body")
  splits, name = sources.open_splits(cfg)
  with pytest.raises(UserError, match="'text'"):
    pipeline.open_split(splits["validation"], name, sources.make_tokenizer(cfg), cfg)


def test_byte_windows_cover_the_validation_text(tfds_dir, cache_dir):
  cfg = _data_cfg(tfds_dir, cache_dir, seq_len=128)
  splits, name = sources.open_splits(cfg)
  split = pipeline.open_split(splits["validation"], name, sources.make_tokenizer(cfg), cfg)
  total = sum(len(ex["text"]) + 2 for ex in splits["validation"])
  assert split.windows.num_tokens == total
  assert len(split.windows) == (total - 1) // 128
  assert np.all(split.windows[0]["inputs"][:1] == 1)   # starts with BOS
