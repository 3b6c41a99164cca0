"""Fixed-length training windows over a split's documents laid end to end.

Every document becomes `[BOS] + tokens + [EOS]`; the split is the concatenation of its documents
in source order, and window `i` is the token run `[i·L, i·L + L + 1)` of that stream (inputs are
its first L tokens, targets its last L). So every token is predicted exactly once per epoch, no
padding is spent, and any window can be read by index — which Gravity Wells needs to re-sample a
well's examples. Windows that span a document boundary carry `segment_ids` (1, 2, … within the
window) so attention never crosses documents, `positions` restart at each document, and the
target after a document's EOS gets weight 0.
"""

import hashlib
import json
import os
from typing import Callable, Sequence

import numpy as np



def document_lengths(docs: Sequence[np.ndarray] | Callable[[], Sequence[int]], cache_key: str,
                     cache_dir: str | None) -> np.ndarray:
  """Token counts (with BOS/EOS) of every document, cached on disk by `cache_key`.

  Args:
    docs: random-access documents of tokens (already with BOS/EOS), or a callable returning the
      lengths directly (cheaper when the tokenizer's length is known without tokenizing).
    cache_key: identifies dataset, split and tokenizer.
    cache_dir: where to keep the lengths; None disables caching.

  Returns:
    int64 [num_documents].
  """
  path = None
  if cache_dir:
    digest = hashlib.sha1(cache_key.encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"lengths-{digest}.npy")
    if os.path.exists(path):
      return np.load(path)
  if callable(docs):
    lengths = np.asarray(docs(), np.int64)
  else:
    lengths = np.fromiter((len(d) for d in docs), np.int64, count=len(docs))
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    np.save(tmp, lengths)
    os.replace(tmp + ".npy", path)
    with open(os.path.join(cache_dir, f"lengths-{digest}.json"), "w") as f:
      json.dump({"key": cache_key}, f)
  return lengths


class PackedWindows:
  """A grain random-access source of fixed-length windows.

  Element `i` is a dict of int32 arrays, each [seq_len] unless noted:
    inputs, targets: tokens and next tokens;
    segment_ids: 1, 2, … per document within the window;
    positions: position of each input token within its document;
    weights: 1 where the target belongs to the input's document, else 0 (float32);
    index: the window's own index, a scalar (Gravity Wells uses it).
  """

  def __init__(self, docs: Sequence[np.ndarray], lengths: np.ndarray, seq_len: int, *,
               preload: bool):
    """Args:
      docs: random-access documents, each int32 [n_i] already framed by BOS ... EOS.
      lengths: int64 [num_docs], len(docs[i]).
      seq_len: L, the model's context length.
      preload: hold the whole token stream in memory (small splits) instead of reading the
        documents a window overlaps on every access.
    """
    self._docs = docs
    self._seq_len = seq_len
    self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(self._starts[-1])
    self._num_windows = max(0, (total - 1) // seq_len)
    self._stream = None
    if preload:
      self._stream = np.concatenate([np.asarray(d, np.int32) for d in docs]) if len(docs) else (
          np.zeros([0], np.int32))
      if len(self._stream) != total:
        raise ValueError("document lengths disagree with the documents; clear the cache dir.")

  @property
  def num_tokens(self) -> int:
    return int(self._starts[-1])

  def __len__(self) -> int:
    return self._num_windows

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index) % self._num_windows
    lo = index * self._seq_len
    hi = lo + self._seq_len + 1
    first = int(np.searchsorted(self._starts, lo, side="right")) - 1
    last = int(np.searchsorted(self._starts, hi - 1, side="right")) - 1
    doc_of = np.repeat(np.arange(first, last + 1),
                       np.minimum(self._starts[first + 1:last + 2], hi)
                       - np.maximum(self._starts[first:last + 1], lo))
    if self._stream is not None:
      tokens = self._stream[lo:hi]
    else:
      tokens = np.concatenate([
          np.asarray(self._docs[d], np.int32)[max(lo, self._starts[d]) - self._starts[d]:
                                              min(hi, self._starts[d + 1]) - self._starts[d]]
          for d in range(first, last + 1)])
    positions = np.arange(lo, hi) - self._starts[doc_of]
    segments = (doc_of - first + 1).astype(np.int32)
    return {
        "inputs": tokens[:-1].astype(np.int32),
        "targets": tokens[1:].astype(np.int32),
        "segment_ids": segments[:-1],
        "positions": positions[:-1].astype(np.int32),
        "weights": (segments[1:] == segments[:-1]).astype(np.float32),
        "index": np.asarray(index, np.int32),
    }


def frame(tokens: np.ndarray, bos_id: int, eos_id: int) -> np.ndarray:
  """[n] -> [n + 2]: a document between its tokenizer's BOS and EOS."""
  return np.concatenate([[bos_id], tokens, [eos_id]]).astype(np.int32)
