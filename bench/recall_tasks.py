"""Synthetic recall tasks, as batches the language models train on: MQAR, induction, copying.

Each generator draws `batch` sequences of length `seq_len` from a NumPy generator and returns
the training batch layout (`inputs`, `targets`, `weights`, `positions`, `segment_ids`, all
[batch, seq_len]): next-token prediction where only the positions that test recall carry
weight. Accuracy is exact match of the argmax at those positions ("per query").

Token layout (shared): 0 is padding, 1 the filler of the gaps, 2 the induction trigger, 3 the
copy separator; task tokens start at `FIRST`. MQAR draws keys from the lower half of the task
tokens and values from the upper half (as Zoology does), so a key never looks like a value.

* MQAR (Arora et al. 2023, "Zoology"): `pairs` key-value pairs `k1 v1 ... kN vN` open the
  sequence; each key is queried once later (`... k_i` -> predict `v_i`), the queries in random
  order at positions set by `placement`: "uniform" (anywhere after the pairs), "power_law" (gaps
  after the context drawn with p(gap) ∝ gap^-α, α = 0.01 as in Zoology, nearly uniform, packed
  toward the context), "end" (all queries packed at the end of the sequence, as far from their
  keys as the length allows: what a bounded cache must keep).
* Induction heads: random task tokens with the trigger `2` followed by a token `b` somewhere in
  the first half; the sequence ends with `2` and the target is `b` (one query per sequence).
* Selective copying (Gu & Dao 2023, "Mamba"): `count` task tokens scattered in order among
  fillers, then the separator `3`; the model must emit the tokens in order after it (targets
  at the separator and the `count - 1` positions after it, whose inputs are the tokens so far).
"""

import numpy as np

PAD, FILLER, TRIGGER, SEPARATOR = 0, 1, 2, 3
FIRST = 4
PLACEMENTS = ("uniform", "power_law", "end")
TASKS = ("mqar", "induction", "copying")


def _batch(inputs: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> dict:
  b, t = inputs.shape
  return {"inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32),
          "weights": weights.astype(np.float32),
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
          "segment_ids": np.ones((b, t), np.int32)}


def _check(seq_len, vocab, need_len, need_vocab, what):
  if seq_len < need_len:
    raise ValueError(f"{what} needs seq_len >= {need_len}, got {seq_len}.")
  if vocab < need_vocab:
    raise ValueError(f"{what} needs a vocabulary of >= {need_vocab} tokens, got {vocab}.")


def mqar(rng: np.random.Generator, batch: int, seq_len: int, vocab: int, pairs: int,
         placement: str = "uniform", alpha: float = 0.01) -> dict:
  """Multi-query associative recall: `pairs` queries per sequence (see the module docstring).

  Returns:
    The batch dict; weights are 1 at the `pairs` query positions of each sequence.
  """
  if placement not in PLACEMENTS:
    raise ValueError(f"placement={placement!r} is not one of {PLACEMENTS}.")
  half = (vocab - FIRST) // 2
  _check(seq_len, vocab, 4 * pairs + 1, FIRST + 2 * pairs, f"MQAR with {pairs} pairs")
  inputs = np.full((batch, seq_len + 1), FILLER, np.int64)
  weights = np.zeros((batch, seq_len + 1), np.float32)
  context = 2 * pairs
  slots = (seq_len - context) // 2          # query positions p = context + 2 * slot, p+1 holds v
  for i in range(batch):
    keys = FIRST + rng.choice(half, pairs, replace=False)
    values = FIRST + half + rng.integers(0, half, pairs)
    inputs[i, 0:context:2], inputs[i, 1:context:2] = keys, values
    if placement == "end":
      chosen = np.arange(slots - pairs, slots)
    elif placement == "uniform":
      chosen = np.sort(rng.choice(slots, pairs, replace=False))
    else:
      p = (np.arange(slots) + 1.0) ** -alpha
      chosen = np.sort(rng.choice(slots, pairs, replace=False, p=p / p.sum()))
    where = context + 2 * chosen
    order = rng.permutation(pairs)
    inputs[i, where], inputs[i, where + 1] = keys[order], values[order]
    weights[i, where] = 1.0
  return _batch(inputs[:, :-1], inputs[:, 1:], weights[:, :-1])


def induction(rng: np.random.Generator, batch: int, seq_len: int, vocab: int) -> dict:
  """Induction heads: `2 b` early, `2` at the end, predict `b` (one query per sequence)."""
  _check(seq_len, vocab, 8, FIRST + 2, "induction")
  inputs = rng.integers(FIRST, vocab, (batch, seq_len + 1))
  weights = np.zeros((batch, seq_len + 1), np.float32)
  at = rng.integers(0, seq_len // 2 - 1, batch)
  rows = np.arange(batch)
  inputs[rows, at] = TRIGGER
  inputs[:, seq_len - 1] = TRIGGER
  inputs[:, seq_len] = inputs[rows, at + 1]
  weights[:, seq_len - 1] = 1.0
  return _batch(inputs[:, :-1], inputs[:, 1:], weights[:, :-1])


def copying(rng: np.random.Generator, batch: int, seq_len: int, vocab: int,
            count: int = 8) -> dict:
  """Selective copying of `count` tokens scattered among fillers, after the separator."""
  _check(seq_len, vocab, 2 * count + 2, FIRST + 1, f"copying {count} tokens")
  body = seq_len - count                      # fillers and data, then the separator
  inputs = np.full((batch, seq_len + 1), FILLER, np.int64)
  weights = np.zeros((batch, seq_len + 1), np.float32)
  for i in range(batch):
    data = rng.integers(FIRST, vocab, count)
    inputs[i, np.sort(rng.choice(body, count, replace=False))] = data
    inputs[i, body] = SEPARATOR
    inputs[i, body + 1:body + 1 + count] = data
    weights[i, body:body + count] = 1.0
  return _batch(inputs[:, :-1], inputs[:, 1:], weights[:, :-1])


def generate(task: str, rng: np.random.Generator, batch: int, seq_len: int, vocab: int,
             **kw) -> dict:
  """The batch of `task` (one of TASKS) with its own keyword arguments."""
  if task not in TASKS:
    raise ValueError(f"task={task!r} is not one of {TASKS}.")
  return {"mqar": mqar, "induction": induction, "copying": copying}[task](
      rng, batch, seq_len, vocab, **kw)
