"""General-purpose compressors as a yardstick for bits per byte.

A language model's bits/byte is only meaningful beside something a reader already trusts: the
size that gzip, bz2 and xz reach on exactly the same bytes. Each runs at its strongest setting
on the whole text at once (one stream, so it can learn from everything before each byte, as the
model does from its context).
"""

import bz2
import lzma
import zlib

COMPRESSORS = ("gzip", "bz2", "xz")


def _compressed_size(name: str, data: bytes) -> int:
  if name == "gzip":
    # zlib's raw stream at level 9 is gzip -9's payload; gzip's 18-byte header is left out.
    return len(zlib.compress(data, 9))
  if name == "bz2":
    return len(bz2.compress(data, 9))
  if name == "xz":
    return len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
  raise ValueError(f"unknown compressor {name!r}; use one of {COMPRESSORS}.")


def bits_per_byte(data: bytes, compressors=COMPRESSORS) -> dict[str, float]:
  """{name: compressed bits / input byte} for each compressor, over `data` as one stream.

  Args:
    data: the exact bytes the model scored, concatenated in order.
    compressors: names from COMPRESSORS.

  Returns:
    e.g. {"gzip": 3.0, "bz2": 2.4, "xz": 2.6}; empty input gives NaN for each.
  """
  if not isinstance(data, (bytes, bytearray)):
    raise TypeError(f"bits_per_byte needs bytes, got {type(data).__name__}; encode text first.")
  if not data:
    return {name: float("nan") for name in compressors}
  return {name: 8.0 * _compressed_size(name, bytes(data)) / len(data) for name in compressors}
