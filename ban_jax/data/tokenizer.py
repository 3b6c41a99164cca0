"""Tokenizers: UTF-8 bytes (default) and SentencePiece (optional).

Both report `token_bytes`, the number of UTF-8 bytes each token id stands for, so that losses
convert to bits per byte whatever the tokenizer: bits/byte = Σ nll / ln 2 / Σ token_bytes[target].
"""

import os
from typing import Iterable, Protocol

import numpy as np

from ban_jax.errors import UserError

PAD, BOS, EOS = 0, 1, 2


class Tokenizer(Protocol):
  vocab_size: int
  token_bytes: np.ndarray  # int32 [vocab_size]
  name: str                # a fingerprint, used to key caches
  bos_id: int              # begins every document
  eos_id: int              # ends every document

  def encode(self, text: bytes | str) -> np.ndarray: ...
  def decode(self, ids: Iterable[int]) -> str: ...
  def to_bytes(self, ids) -> bytes: ...  # exactly token_bytes[ids].sum() bytes


class ByteTokenizer:
  """UTF-8 bytes shifted past three specials: 0 = pad, 1 = begin, 2 = end of document."""

  num_specials = 3
  vocab_size = 256 + num_specials
  name = "bytes"
  bos_id = BOS
  eos_id = EOS

  def __init__(self):
    self.token_bytes = np.concatenate(
        [np.zeros(self.num_specials, np.int32), np.ones(256, np.int32)])

  def encode(self, text: bytes | str) -> np.ndarray:
    if isinstance(text, str):
      text = text.encode("utf-8")
    return np.frombuffer(text, np.uint8).astype(np.int32) + self.num_specials

  def decode(self, ids: Iterable[int]) -> str:
    ids = np.asarray(list(ids), np.int64)
    data = (ids[ids >= self.num_specials] - self.num_specials).astype(np.uint8).tobytes()
    return data.decode("utf-8", errors="replace")

  def to_bytes(self, ids) -> bytes:
    """int [n] -> the UTF-8 bytes the ids stand for; specials give none.

    Unlike `decode`, no invalid UTF-8 is replaced (a window may cut a character in two), so
    `len(to_bytes(ids)) == token_bytes[ids].sum()`.
    """
    ids = np.asarray(ids, np.int64).reshape(-1)
    return (ids[ids >= self.num_specials] - self.num_specials).astype(np.uint8).tobytes()


class SentencePieceTokenizer:
  """A SentencePiece model with BOS and EOS pieces (their ids are the model's own)."""

  def __init__(self, model_path: str):
    try:
      import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise UserError("data.tokenizer='spm' needs sentencepiece: pip install -e '.[spm]'.") from e
    if not os.path.exists(model_path):
      raise UserError(f"SentencePiece model {model_path} does not exist; train one with "
                      "ban_jax.data.tokenizer.train_sentencepiece or set data.tokenizer='bytes'.")
    try:
      # A damaged file can fail to parse, or parse into pieces that are not UTF-8.
      self._sp = spm.SentencePieceProcessor(model_file=model_path)
      self.vocab_size = self._sp.get_piece_size()
      self._piece_bytes = [self._piece_bytes_of(i) for i in range(self.vocab_size)]
    except (RuntimeError, OSError, ValueError, TypeError, IndexError) as e:
      reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      raise UserError(f"SentencePiece model {model_path} is unreadable ({reason}): the file is "
                      "damaged or not a SentencePiece model; copy it again or retrain it with "
                      "ban_jax.data.tokenizer.train_sentencepiece.") from None
    if self._sp.bos_id() < 0 or self._sp.eos_id() < 0:
      raise UserError(f"SentencePiece model {model_path} has no BOS or EOS piece, which frame "
                      "every document; train it with ban_jax.data.tokenizer.train_sentencepiece.")
    self.name = f"spm{self.vocab_size}-{os.path.getsize(model_path)}"
    self.token_bytes = np.array([len(b) for b in self._piece_bytes], np.int32)

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  def _piece_bytes_of(self, i: int) -> bytes:
    if self._sp.is_control(i) or self._sp.is_unknown(i):
      return b""
    piece = self._sp.id_to_piece(i)
    if self._sp.is_byte(i):  # byte-fallback pieces, written "<0xE2>", stand for one byte
      return bytes([int(piece[3:-1], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")

  def encode(self, text: bytes | str) -> np.ndarray:
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    return np.asarray(self._sp.encode(text), np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids if not self._sp.is_control(int(i))])

  def to_bytes(self, ids) -> bytes:
    """int [n] -> the pieces' UTF-8 bytes in order, byte pieces as their byte; specials and
    unknowns give none, so `len(to_bytes(ids)) == token_bytes[ids].sum()`."""
    table = self._piece_bytes
    return b"".join([table[i] for i in np.asarray(ids, np.int64).reshape(-1).tolist()])


def train_sentencepiece(texts: Iterable[bytes | str], model_prefix: str, vocab_size: int) -> str:
  """Trains a unigram SentencePiece model with pad/bos/eos = 0/1/2; returns the model path."""
  try:
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError("data.tokenizer='spm' needs sentencepiece: pip install -e '.[spm]'.") from e
  sentences = (t.decode("utf-8", errors="replace") if isinstance(t, bytes) else t for t in texts)
  spm.SentencePieceTrainer.train(
      sentence_iterator=sentences, model_prefix=model_prefix, vocab_size=vocab_size,
      pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=3, byte_fallback=True,
      max_sentence_length=1 << 20, character_coverage=0.9995, minloglevel=2,
      # Text in, same text out: no "▁" prepended, no Unicode or whitespace normalisation. Token
      # bytes then add up to the text's bytes exactly, and bits/byte means what it says.
      add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False)
  return model_prefix + ".model"
