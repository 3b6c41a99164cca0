"""bench/recall_tasks.py: every query's target is what recall must return, and nothing else is
weighted."""

import numpy as np
import pytest

from bench import recall_tasks as rt


@pytest.mark.parametrize("placement", rt.PLACEMENTS)
def test_mqar_targets_are_the_paired_values(placement):
  rng = np.random.default_rng(0)
  b = rt.mqar(rng, batch=16, seq_len=128, vocab=96, pairs=16, placement=placement)
  assert b["inputs"].shape == b["targets"].shape == (16, 128)
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])   # next-token
  for x, y, w in zip(b["inputs"], b["targets"], b["weights"]):
    keys, values = x[0:32:2], x[1:32:2]
    assert len(set(keys)) == 16 and keys.max() < values.min()      # distinct keys below values
    table = dict(zip(keys, values))
    queries = np.flatnonzero(w)
    assert len(queries) == 16 and queries.min() >= 32
    assert sorted(x[queries]) == sorted(keys)                       # each key queried once
    assert all(y[p] == table[x[p]] for p in queries)
  if placement == "end":
    assert np.flatnonzero(b["weights"][0]).max() >= 128 - 3
  # Fresh draws differ; the same seed repeats.
  again = rt.mqar(np.random.default_rng(0), 16, 128, 96, 16, placement)
  np.testing.assert_array_equal(again["inputs"], b["inputs"])


def test_mqar_refuses_what_cannot_fit():
  with pytest.raises(ValueError, match="needs seq_len >= 129"):
    rt.mqar(np.random.default_rng(0), 2, 64, 256, 32)
  with pytest.raises(ValueError, match="a vocabulary of >= 46 tokens, got 44"):
    rt.mqar(np.random.default_rng(0), 2, 128, 44, 21)
  with pytest.raises(ValueError, match="placement='far'"):
    rt.mqar(np.random.default_rng(0), 2, 128, 96, 8, placement="far")


def test_induction_asks_for_the_token_after_the_first_trigger():
  b = rt.induction(np.random.default_rng(1), batch=32, seq_len=64, vocab=40)
  for x, y, w in zip(b["inputs"], b["targets"], b["weights"]):
    (q,) = np.flatnonzero(w)
    assert q == 63 and x[q] == rt.TRIGGER
    first = np.flatnonzero(x == rt.TRIGGER)[0]
    assert first < 32 and y[q] == x[first + 1]


def test_copying_asks_for_the_scattered_tokens_in_order():
  b = rt.copying(np.random.default_rng(2), batch=8, seq_len=64, vocab=40, count=8)
  for x, y, w in zip(b["inputs"], b["targets"], b["weights"]):
    sep = np.flatnonzero(x == rt.SEPARATOR)[0]
    data = x[:sep][x[:sep] != rt.FILLER]
    assert len(data) == 8
    np.testing.assert_array_equal(np.flatnonzero(w), np.arange(sep, sep + 8))
    np.testing.assert_array_equal(y[sep:sep + 8], data)
