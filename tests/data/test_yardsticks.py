"""Compressor yardsticks: sizes agree with the compressors run independently."""

import bz2
import gzip
import lzma
import math
import random

import pytest

from ban_jax.data import yardsticks


def _text(n, seed=0):
  rng = random.Random(seed)
  words = ["gravity", "attention", "the", "of", "information", "mass", "well", "branch"]
  return " ".join(rng.choice(words) for _ in range(n)).encode()


def test_repetitive_text_compresses_far_below_random_bytes():
  rng = random.Random(1)
  noise = bytes(rng.randrange(256) for _ in range(20_000))
  text = _text(4_000)
  for name, value in yardsticks.bits_per_byte(noise).items():
    assert 7.9 < value < 8.5, name          # incompressible: about 8 bits/byte plus framing
  for name, value in yardsticks.bits_per_byte(text).items():
    assert value < 2.5, name                # 8 words: at most 3 bits per word of ~6 bytes


def test_matches_the_standard_library_compressors():
  data = _text(3_000, seed=2)
  got = yardsticks.bits_per_byte(data)
  # gzip adds an 18-byte header/trailer around the same deflate stream zlib adds 6 around.
  assert abs(got["gzip"] * len(data) / 8 - (len(gzip.compress(data, 9)) - 12)) <= 2
  assert got["bz2"] == 8 * len(bz2.compress(data, 9)) / len(data)
  assert got["xz"] == 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / len(data)


def test_bad_input():
  assert all(math.isnan(v) for v in yardsticks.bits_per_byte(b"").values())
  with pytest.raises(TypeError, match="encode text"):
    yardsticks.bits_per_byte("text")
  with pytest.raises(ValueError, match="unknown compressor"):
    yardsticks.bits_per_byte(b"abc", compressors=("zip",))
