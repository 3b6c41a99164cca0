"""Fixed-length windows over documents laid end to end."""

import numpy as np
import pytest

from ban_jax.data import packing
from ban_jax.data.tokenizer import BOS, EOS


def _docs(rng, n):
  return [packing.frame(rng.integers(3, 259, size=rng.integers(0, 90)).astype(np.int32),
                        BOS, EOS)
          for _ in range(n)]


@pytest.mark.parametrize("preload", [True, False])
def test_windows_tile_the_stream_with_correct_segments(preload):
  rng = np.random.default_rng()
  docs = _docs(rng, 40)
  lengths = np.array([len(d) for d in docs])
  seq_len = int(rng.integers(5, 40))
  win = packing.PackedWindows(docs, lengths, seq_len, preload=preload)
  stream = np.concatenate(docs)
  doc_of = np.repeat(np.arange(len(docs)), lengths)
  pos_of = np.concatenate([np.arange(n) for n in lengths])
  assert len(win) == (len(stream) - 1) // seq_len
  for i in range(len(win)):
    w = win[i]
    lo = i * seq_len
    np.testing.assert_array_equal(w["inputs"], stream[lo:lo + seq_len])
    np.testing.assert_array_equal(w["targets"], stream[lo + 1:lo + seq_len + 1])
    np.testing.assert_array_equal(w["positions"], pos_of[lo:lo + seq_len])
    d_in, d_tgt = doc_of[lo:lo + seq_len], doc_of[lo + 1:lo + seq_len + 1]
    np.testing.assert_array_equal(w["segment_ids"], d_in - d_in[0] + 1)
    np.testing.assert_array_equal(w["weights"], (d_in == d_tgt).astype(np.float32))
    assert int(w["index"]) == i
    # The only unweighted targets follow an EOS.
    assert set(w["inputs"][w["weights"] == 0].tolist()) <= {EOS}
  # Every token but the very first is a target exactly once per pass over the windows.
  targets = np.concatenate([win[i]["targets"] for i in range(len(win))])
  np.testing.assert_array_equal(targets, stream[1:len(win) * seq_len + 1])
  np.testing.assert_array_equal(win[len(win) + 3]["inputs"], win[3]["inputs"])


def test_frame():
  np.testing.assert_array_equal(packing.frame(np.array([7, 8], np.int32), BOS, EOS),
                                [BOS, 7, 8, EOS])
  np.testing.assert_array_equal(packing.frame(np.array([7], np.int32), 5, 6), [5, 7, 6])


def test_document_lengths_cache(tmp_path):
  calls = []
  fn = lambda: calls.append(1) or [3, 4, 5]
  a = packing.document_lengths(fn, "k1", str(tmp_path))
  b = packing.document_lengths(fn, "k1", str(tmp_path))
  c = packing.document_lengths(fn, "k2", str(tmp_path))
  np.testing.assert_array_equal(a, [3, 4, 5])
  np.testing.assert_array_equal(b, a)
  np.testing.assert_array_equal(c, a)
  assert len(calls) == 2
