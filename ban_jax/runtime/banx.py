"""The `.banx` file: one self-describing file holding a model's config, tokenizer and weights.

Layout (little-endian):

| bytes                | what                                                          |
|----------------------|---------------------------------------------------------------|
| 0-3                  | magic `BANX`                                                  |
| 4-7                  | uint32 format version (`VERSION`)                             |
| 8-15                 | uint64 length H of the header                                 |
| 16 .. 16+H           | UTF-8 JSON header (below)                                     |
| then, 64-byte aligned | each tensor's raw bytes, C order, each start 64-byte aligned |

The header holds `model` (the model config: kind "ban" | "transformer", width, depth, the
attention and attractor settings), `vocab_size`, `seq_len`, `tokenizer` ({"kind": "bytes",
...}), `config` (the run's whole saved config, for the record), `dtype` (what the export asked
for), `file_size`, and `tensors`: {name: {"dtype", "shape", "offset", "scale": null | {"shape",
"offset"}}} with flax's parameter paths as names (`layer_0/attention/query/kernel`). Because
every tensor is a contiguous aligned block at a known offset, the reader maps each with
`np.memmap`: nothing is read until a weight is used, and pages stay shared with the OS cache.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from . import checks

MAGIC = b"BANX"
VERSION = 1
ALIGN = checks.ALIGN
STORED_DTYPES = ("float32", "float16", "int8")
_PREFIX = struct.Struct("<4sIQ")


class BanxError(Exception):
  """A `.banx` file (or a request to the runtime) that cannot be served; the message says why
  and what to do."""


def _aligned(n: int) -> int:
  return -(-n // ALIGN) * ALIGN


def write(path: str, header: dict, tensors: dict[str, tuple[np.ndarray, np.ndarray | None]]):
  """Writes a `.banx` file whole: to a temporary file beside `path`, then renamed over it.

  Args:
    path: the file to write (replaced if it exists).
    header: JSON-able description (model, vocab_size, seq_len, tokenizer, config, dtype).
    tensors: {name: (array, scale or None)}; arrays are stored in their own dtype (float32,
      float16 or int8), scales as float32.
  """
  order = sorted(tensors)
  table, blocks = {}, []
  offset = 0  # relative to the start of the data section until the header's size is known
  for name in order:
    array, scale = tensors[name]
    array = np.ascontiguousarray(array)
    if array.dtype.name not in STORED_DTYPES:
      raise ValueError(f"tensor {name} is {array.dtype.name}; a .banx file stores "
                       f"{STORED_DTYPES}: cast it first.")
    entry = {"dtype": array.dtype.name, "shape": list(array.shape), "offset": offset,
             "scale": None}
    blocks.append((offset, array))
    offset = _aligned(offset + array.nbytes)
    if scale is not None:
      scale = np.ascontiguousarray(scale, np.float32)
      entry["scale"] = {"shape": list(scale.shape), "offset": offset}
      blocks.append((offset, scale))
      offset = _aligned(offset + scale.nbytes)
    table[name] = entry
  # The header states absolute offsets, which depend on its own length: iterate to a fixpoint.
  start = 0
  while True:
    full = dict(header, format="banx", version=VERSION, tensors=_shift(table, start),
                file_size=start + offset)
    text = json.dumps(full, sort_keys=True, default=str).encode("utf-8")
    need = _aligned(_PREFIX.size + len(text))
    if need == start:
      break
    start = need
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(_PREFIX.pack(MAGIC, VERSION, len(text)))
      f.write(text)
      for rel, array in blocks:
        f.seek(start + rel)
        f.write(array.tobytes())
      f.truncate(start + offset)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _shift(table, start):
  out = {}
  for name, e in table.items():
    e = dict(e, offset=e["offset"] + start)
    if e["scale"] is not None:
      e["scale"] = dict(e["scale"], offset=e["scale"]["offset"] + start)
    out[name] = e
  return out


def read_header(path: str) -> dict:
  """The header of a `.banx` file, checked against the file (magic, version, size)."""
  try:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      prefix = f.read(_PREFIX.size)
      if len(prefix) < _PREFIX.size or prefix[:4] != MAGIC:
        raise BanxError(f"{path} is not a .banx model file (it does not start with BANX); "
                        "write one with python -m ban_jax.export --workdir=RUN --out=FILE.")
      _, version, length = _PREFIX.unpack(prefix)
      if version > VERSION:
        raise BanxError(f"{path} is .banx version {version}, newer than this ban_jax reads "
                        f"(version {VERSION}): upgrade ban_jax (pip install -U ban_jax, or "
                        "pull the checkout).")
      if version < VERSION:
        raise BanxError(f"{path} is .banx version {version}, older than this ban_jax reads "
                        f"(version {VERSION}): export the run again with this version.")
      if length > size - _PREFIX.size:
        raise BanxError(f"{path} says its header is {length} bytes, more than the file holds: "
                        "the file was cut short or damaged; copy or export it again.")
      text = f.read(length)
  except IsADirectoryError:
    raise BanxError(f"--model={path} is a folder; pass the .banx file that "
                    "python -m ban_jax.export wrote.") from None
  except FileNotFoundError:
    raise BanxError(f"{path} does not exist; write it with python -m ban_jax.export "
                    "--workdir=RUN --out=FILE, or fix the path.") from None
  except PermissionError as e:
    raise BanxError(f"{path} cannot be read ({e}); check its permissions.") from e
  try:
    header = json.loads(text.decode("utf-8"))
  except MemoryError:
    # A header of deeply nested or very many JSON values can take far more memory parsed than
    # its bytes; refuse it as damaged rather than dying with a traceback.
    raise BanxError(f"{path} has a header too large to parse in the memory available "
                    f"({length} bytes); it is damaged or not a ban_jax export.") from None
  except (UnicodeDecodeError, ValueError, RecursionError) as e:
    reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise BanxError(f"{path} has a damaged header ({reason}); export the run again.") from None
  if isinstance(header, dict) and header.get("file_size") != size:
    raise BanxError(f"{path} is {size} bytes but its header says "
                    f"{checks.show(header.get('file_size'))}: the file was cut short or changed "
                    "(an unfinished copy?); copy or export it again.")
  try:
    return checks.header(header, size=size, path=path,
                         data_start=_aligned(_PREFIX.size + length))
  except checks.Bad as e:
    raise BanxError(str(e)) from None


class Weights:
  """The tensors of a `.banx` file, memory-mapped.

  `get(name)` returns float32 (int8 weights dequantised, float16 cast; a float32 weight is the
  mapped array itself, no copy). `load_into_memory(prefix)` copies the tensors whose names start
  with `prefix` into private memory (the benchmark's "loaded" arm).
  """

  def __init__(self, path: str, header: dict):
    self.path, self.header = path, header
    self._arrays = {}
    # One map of the whole file, every tensor a view of it: a map per tensor held a file
    # descriptor each, and a file with thousands of tensors ran out of them.
    self._file = (np.memmap(path, dtype=np.uint8, mode="r")
                  if os.path.getsize(path) else np.zeros([0], np.uint8))
    for name, e in header["tensors"].items():
      array = self._map(e["dtype"], e["shape"], e["offset"])
      scale = None
      if e.get("scale") is not None:
        scale = self._map("float32", e["scale"]["shape"], e["scale"]["offset"])
      self._arrays[name] = (array, scale)

  def _map(self, dtype, shape, offset):
    # dtype, shape and offset were checked against the file by `read_header` (checks.header).
    if not shape or 0 in shape:
      return np.zeros(shape, dtype)
    dtype = np.dtype(dtype).newbyteorder("<")
    nbytes = int(np.prod(shape)) * dtype.itemsize
    return self._file[offset:offset + nbytes].view(dtype).reshape(tuple(shape))

  def __contains__(self, name: str) -> bool:
    return name in self._arrays

  def names(self) -> list[str]:
    return sorted(self._arrays)

  def raw(self, name: str):
    """(stored array, scale or None) as in the file."""
    try:
      return self._arrays[name]
    except KeyError:
      raise BanxError(f"{self.path} has no tensor {name!r}; it was exported from another "
                      "model or version. Export the run again.") from None

  def get(self, name: str) -> np.ndarray:
    """The tensor as float32 (dequantised when stored as int8)."""
    from . import quantize  # pylint: disable=g-import-not-at-top
    array, scale = self.raw(name)
    return quantize.dequantize(array, scale)

  def load_into_memory(self, prefix: str = "") -> int:
    """Copies tensors named `prefix...` out of the map into private memory; returns bytes."""
    total = 0
    for name, (array, scale) in self._arrays.items():
      if name.startswith(prefix):
        array = np.array(array)
        scale = None if scale is None else np.array(scale)
        self._arrays[name] = (array, scale)
        total += array.nbytes + (0 if scale is None else scale.nbytes)
    return total
