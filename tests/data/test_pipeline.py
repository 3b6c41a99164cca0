"""The grain pipeline: epochs, order, random access, checkpointable iteration."""

import grain
import numpy as np
import pytest

from ban_jax.data import packing
from ban_jax.data import pipeline
from ban_jax.data.tokenizer import BOS, EOS
from ban_jax.errors import UserError


def _split(num_docs=30, seq_len=16, seed=0):
  rng = np.random.default_rng(seed)
  docs = [packing.frame(rng.integers(3, 259, size=rng.integers(10, 80)).astype(np.int32),
                        BOS, EOS)
          for _ in range(num_docs)]
  windows = packing.PackedWindows(docs, np.array([len(d) for d in docs]), seq_len, preload=True)
  return pipeline.Split(windows=windows, num_documents=num_docs)


def test_every_epoch_is_a_fresh_permutation_without_straddling_batches():
  split = _split()
  ds = pipeline.Dataset(split, global_batch=7, seed=3)
  n, spe = len(split.windows), ds.steps_per_epoch
  assert spe == n // 7
  epochs = [np.concatenate([ds.batch_at(e * spe + s)["index"] for s in range(spe)])
            for e in range(3)]
  for idx in epochs:
    assert len(set(idx.tolist())) == spe * 7       # no repeats inside an epoch
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled
  assert not np.array_equal(epochs[1], epochs[2])
  # The window behind each index is the one the batch carries.
  b = ds.batch_at(5)
  for row, i in enumerate(b["index"]):
    np.testing.assert_array_equal(b["inputs"][row], split.windows[int(i)]["inputs"])


def test_order_depends_on_the_seed_alone():
  split = _split()
  a = pipeline.Dataset(split, global_batch=4, seed=1)
  b = pipeline.Dataset(split, global_batch=4, seed=1)
  c = pipeline.Dataset(split, global_batch=4, seed=2)
  for s in (0, 9, 40):
    np.testing.assert_array_equal(a.batch_at(s)["index"], b.batch_at(s)["index"])
  assert any(not np.array_equal(a.batch_at(s)["index"], c.batch_at(s)["index"])
             for s in range(5))


def test_iterator_state_resumes_the_exact_sequence():
  ds = pipeline.Dataset(_split(), global_batch=4, seed=0)
  it = ds.iterator()
  for _ in range(11):
    next(it)
  state = it.get_state()
  expected = [next(it)["index"] for _ in range(5)]
  fresh = ds.iterator()
  fresh.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(fresh)["index"], want)
  np.testing.assert_array_equal(ds.batch_at(11)["index"], expected[0])


def test_processes_read_disjoint_slices_of_the_global_batch():
  split = _split()
  shuffled = grain.MapDataset.source(split.windows).shuffle(seed=0)
  whole = pipeline._EpochOrder(shuffled, 6, 0, 1).batch(6)
  parts = [pipeline._EpochOrder(shuffled, 6, p, 3).batch(2) for p in range(3)]
  for step in (0, 4, ds_steps := len(split.windows) // 6, ds_steps + 1):
    joined = np.concatenate([p[step]["index"] for p in parts])
    np.testing.assert_array_equal(joined, whole[step]["index"])


def test_fetch_reads_windows_by_index():
  split = _split()
  ds = pipeline.Dataset(split, global_batch=4, seed=0)
  got = ds.fetch(np.array([5, 0, 5]))
  assert got["inputs"].shape == (3, 16)
  for row, i in enumerate([5, 0, 5]):
    np.testing.assert_array_equal(got["inputs"][row], split.windows[i]["inputs"])


def test_eval_batches_cover_the_split_once_and_pad_with_zero_weight():
  split = _split()
  batches = list(pipeline.eval_batches(split, 8))
  n = len(split.windows)
  assert len(batches) == -(-n // 8)
  real = np.concatenate([b["weights"].sum(-1) > 0 for b in batches])
  idx = np.concatenate([b["index"] for b in batches])[: n]
  np.testing.assert_array_equal(idx, np.arange(n))
  assert batches[-1]["weights"][n % 8 or 8:].sum() == 0
  assert real[n:].sum() == 0
  assert len(list(pipeline.eval_batches(split, 8, max_batches=2))) == 2


def test_batch_larger_than_the_split_is_a_user_error():
  with pytest.raises(UserError, match="exceeds"):
    pipeline.Dataset(_split(num_docs=2), global_batch=10_000, seed=0)
