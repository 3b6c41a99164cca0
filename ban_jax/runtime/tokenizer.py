"""The byte tokenizer a `.banx` header describes (`ban_jax.data.tokenizer.ByteTokenizer`).

UTF-8 bytes shifted past `specials` ids (0 pad, 1 begin, 2 end of document). A model trained
with a SentencePiece vocabulary cannot be served: the runtime carries no SentencePiece.
"""

from __future__ import annotations

import numpy as np

from . import banx
from . import checks


class ByteTokenizer:
  """Bytes <-> ids as the header says (specials, bos_id, eos_id)."""

  def __init__(self, description: dict, path: str = "the model"):
    kind = description.get("kind")
    if kind != "bytes":
      raise banx.BanxError(f"{path} uses a {checks.show(kind)} tokenizer; the NumPy runtime "
                           "reads byte tokens only (data.tokenizer='bytes'). Run this model with python "
                           "-m ban_jax.generate, or train it with byte tokens.")
    self.specials = int(description["specials"])
    self.bos_id = int(description["bos_id"])
    self.eos_id = int(description["eos_id"])
    self.vocab_size = int(description["vocab_size"])

  def encode(self, text: str | bytes) -> np.ndarray:
    """text -> int32 [n] ids (no BOS)."""
    if isinstance(text, str):
      text = text.encode("utf-8")
    return np.frombuffer(text, np.uint8).astype(np.int32) + self.specials

  def to_bytes(self, ids) -> bytes:
    """ids -> the bytes they stand for; specials give none."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    return (ids[ids >= self.specials] - self.specials).astype(np.uint8).tobytes()
