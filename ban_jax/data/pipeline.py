"""The grain input pipeline.

tfds.data_source → grain.MapDataset → tokenize → pack into fixed-length windows (random access)
→ seeded shuffle, a new permutation every epoch → batch (no batch spans two epochs) → per-process
slice → global arrays for the mesh.

Every element carries its window `index`; `Dataset.steps_per_epoch` marks epoch boundaries and
`Dataset.fetch(indices)` reads any windows by index: Gravity Wells needs all three.
"""

import dataclasses
import hashlib
import sys
from typing import Iterator

import grain
import jax
import ml_collections
import numpy as np

from ban_jax.data import packing
from ban_jax.data import sources
from ban_jax.errors import UserError


@dataclasses.dataclass
class Split:
  """One split, packed: `windows[i]` is a dict of arrays (see `packing.PackedWindows`)."""
  windows: packing.PackedWindows
  num_documents: int


def example_text(example, text_key):
  """An example's text field (str or bytes); a missing field is one UserError naming it."""
  try:
    return example[text_key]
  except KeyError as e:
    raise UserError(f"examples have no {text_key!r} field (fields: {sorted(example)}); set "
                    "--config.data.text_key.") from e


def _scan(source, chunk: int = 1024):
  """Every record in order, read a chunk at a time (ArrayRecord batches the reads)."""
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, len(source), chunk):
    idx = list(range(start, min(len(source), start + chunk)))
    yield from (getitems(idx) if getitems else (source[i] for i in idx))


def _tokenized(source, tokenizer, text_key):
  return grain.MapDataset.source(source).map(
      lambda example: packing.frame(tokenizer.encode(example_text(example, text_key)),
                                    tokenizer.bos_id, tokenizer.eos_id))


def open_split(source, name: str, tokenizer, cfg: ml_collections.ConfigDict) -> Split:
  """Packs one TFDS split into windows of `cfg.seq_len` tokens."""
  docs = _tokenized(source, tokenizer, cfg.text_key)
  if len(docs) == 0:
    raise UserError(f"split of {name} has no documents; check data.train_split/validation_split.")
  # The key names the content, not just the dataset: a rebuilt dataset must not reuse lengths.
  probe = [example_text(source[i], cfg.text_key)
           for i in sorted({0, len(source) // 2, len(source) - 1})]
  digest = hashlib.sha1(b"\0".join(probe)).hexdigest()
  key = f"{name}|{source}|{len(source)}|{tokenizer.name}|{digest}"
  cache_dir = cfg.cache_dir or sources.default_cache_dir()
  if tokenizer.name == "bytes":
    # The byte count is the token count: skip tokenizing.
    lengths_fn = lambda: [len(example_text(ex, cfg.text_key)) + 2 for ex in _scan(source)]
    lengths = packing.document_lengths(lengths_fn, key, cache_dir)
  else:
    lengths = packing.document_lengths(docs, key, cache_dir)
  preload = int(lengths.sum()) <= cfg.preload_max_tokens
  windows = packing.PackedWindows(docs, lengths, cfg.seq_len, preload=preload)
  if len(windows) == 0:
    raise UserError(f"a split of {name} has fewer than seq_len={cfg.seq_len} tokens.")
  return Split(windows=windows, num_documents=len(docs))


def text_split(text: bytes, tokenizer, seq_len: int) -> Split:
  """A held-out text file as one document, packed like the splits."""
  doc = packing.frame(tokenizer.encode(text), tokenizer.bos_id, tokenizer.eos_id)
  windows = packing.PackedWindows([doc], np.array([len(doc)]), seq_len, preload=True)
  return Split(windows=windows, num_documents=1)


class _EpochOrder(grain.MapDataset):
  """Element k of this process, over all epochs, from a per-epoch-shuffled parent.

  Each epoch keeps `steps_per_epoch · global_batch` windows (the remainder waits for a later
  epoch's permutation), so batches never straddle an epoch; process p of P reads the p-th slice
  of every global batch.
  """

  def __init__(self, parent, global_batch, process_index, process_count):
    super().__init__(parent)
    self._global = global_batch
    self._local = global_batch // process_count
    self._offset = process_index * self._local
    self._steps = len(parent) // global_batch

  def __len__(self):
    return sys.maxsize

  def __str__(self):
    return "EpochOrder"

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    epoch, j = divmod(int(k), self._steps * self._local)
    step, row = divmod(j, self._local)
    return self._parent[epoch * len(self._parent) + step * self._global + self._offset + row]


class Dataset:
  """Training batches, endless, in a data order fixed by the seed alone."""

  def __init__(self, split: Split, *, global_batch: int, seed: int, read_threads: int = 2,
               prefetch: int = 4):
    count, index = jax.process_count(), jax.process_index()
    if global_batch % count:
      raise UserError(f"train.batch_size={global_batch} must be divisible by the "
                      f"{count} processes.")
    self.split = split
    self.global_batch = global_batch
    self.local_batch = global_batch // count
    self.steps_per_epoch = len(split.windows) // global_batch
    if self.steps_per_epoch == 0:
      raise UserError(f"train.batch_size={global_batch} exceeds the {len(split.windows)} "
                      "training windows; lower the batch size or data.seq_len.")
    # grain seeds epoch e with (seed + e): without mixing, run s's epoch 1 would be run s+1's
    # epoch 0 and "independent" seeds would share data orders.
    mixed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    shuffled = grain.MapDataset.source(split.windows).shuffle(seed=mixed)
    self._batches = _EpochOrder(shuffled, global_batch, index, count).batch(self.local_batch)
    self._read_options = grain.ReadOptions(num_threads=read_threads,
                                           prefetch_buffer_size=prefetch)

  def iterator(self) -> grain.DatasetIterator:
    """A checkpointable iterator (`get_state`/`set_state`) over local batches."""
    return iter(self._batches.to_iter_dataset(self._read_options))

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    """The local batch of `step`, by random access (tests, debugging)."""
    return self._batches[step]

  def fetch(self, indices) -> dict[str, np.ndarray]:
    """Windows by index, stacked: [len(indices), ...] per field."""
    items = [self.split.windows[int(i)] for i in np.asarray(indices).reshape(-1)]
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


def eval_batches(split: Split, batch_size: int, max_batches: int = 0
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Global batches of the split's windows, in order; the last is padded with zero-weight rows.

  Args:
    split: the packed split.
    batch_size: rows per (global) batch.
    max_batches: at most this many batches (0: the whole split), spread evenly over the split so
      that every part of it (every article of a small split) is represented.
  """
  n = len(split.windows)
  num = -(-n // batch_size)
  chosen = range(num)
  if max_batches and max_batches < num:
    chosen = np.linspace(0, num - 1, max_batches).round().astype(int)
  for b in chosen:
    rows = [split.windows[i] for i in range(b * batch_size, min(n, (b + 1) * batch_size))]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    pad = batch_size - len(rows)
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch


def scored_bytes(split: Split, batch_size: int, max_batches: int, tokenizer) -> bytes:
  """The bytes an evaluation scores: targets of weight > 0 in `eval_batches`' batches, in order.

  Window i's targets are tokens (i·L, i·L + L] of the split, so consecutive windows' targets
  never overlap and each scored token appears once; zero-weight targets (the BOS after a
  document's EOS, padding rows) are left out, as the loss leaves them out. So
  `len(result) == Σ token_bytes[targets] · weights`, the `bytes` total of `steps.eval_step`.

  Args:
    split, batch_size, max_batches: as for `eval_batches`.
    tokenizer: the split's tokenizer (`to_bytes`).

  Returns:
    The concatenated UTF-8 bytes (a character may be cut where a window starts).
  """
  parts = []
  for batch in eval_batches(split, batch_size, max_batches):
    parts.append(tokenizer.to_bytes(batch["targets"][batch["weights"] > 0]))
  return b"".join(parts)
