"""The ban_wikipedia TFDS builder."""

import bz2
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from ban_jax.data import wikipedia
from ban_jax.errors import UserError


def test_bundled_sample_builds_into_two_disjoint_splits(tfds_dir):
  src = tfds.data_source("ban_wikipedia/sample", data_dir=tfds_dir, download=False)
  train = [src["train"][i] for i in range(len(src["train"]))]
  valid = [src["validation"][i] for i in range(len(src["validation"]))]
  # gensim's dump: 206 pages, 106 of them articles once redirects are dropped.
  assert len(train) + len(valid) == 106
  titles = {ex["title"].decode() for ex in train} | {ex["title"].decode() for ex in valid}
  assert len(titles) == 106
  for ex in valid:
    assert wikipedia.split_of(ex["title"].decode(), 10.0) == "validation"
  for ex in train:
    assert wikipedia.split_of(ex["title"].decode(), 10.0) == "train"
    assert b"[[" not in ex["text"] and b"{{" not in ex["text"]
  total = sum(len(ex["text"]) for ex in train + valid)
  assert 2.5e6 < total < 3.5e6


def test_split_is_deterministic_and_proportional():
  titles = [f"Article {i}" for i in range(20_000)]
  first = [wikipedia.split_of(t, 5.0) for t in titles]
  assert first == [wikipedia.split_of(t, 5.0) for t in titles]
  assert 0.045 < first.count("validation") / len(titles) < 0.055


def test_bundled_dump_is_found_without_importing_gensim():
  code = ("import sys; from ban_jax.data import wikipedia; p = wikipedia.bundled_dump_path(); "
          "print(p.endswith('.bz2'), 'gensim' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["True", "False"]


def test_dump_config_without_dump_files_fails_clearly(tmp_path):
  (tmp_path / "dumps").mkdir()
  with pytest.raises(UserError, match="no MediaWiki dump matches"):
    wikipedia.prepare("dump", str(tmp_path / "data"), dump_dir=str(tmp_path / "dumps"))
  with pytest.raises(UserError, match="dump_dir"):
    wikipedia.prepare("dump", str(tmp_path / "data"), dump_dir="")


def test_corrupt_dump_fails_clearly_and_leaves_nothing_half_written(tmp_path):
  dumps = tmp_path / "dumps"
  dumps.mkdir()
  good = bz2.compress(b"<mediawiki><page><title>A</title><ns>0</ns><id>1</id><revision><text>"
                      + b"alpha " * 5000 + b"</text></revision></page></mediawiki>")
  (dumps / "enwiki-pages-articles.xml.bz2").write_bytes(good[: len(good) // 2])
  data_dir = tmp_path / "data"
  with pytest.raises(UserError, match="corrupt or truncated"):
    wikipedia.prepare("dump", str(data_dir), dump_dir=str(dumps))
  leftovers = [os.path.join(r, f) for r, _, fs in os.walk(data_dir) for f in fs
               if "array_record" in f or "dataset_info" in f]
  assert leftovers == []
  assert not wikipedia.BanWikipedia(config="dump", data_dir=str(data_dir)).is_prepared()


def test_unknown_builder_config_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="unknown ban_wikipedia config"):
    wikipedia.prepare("full", str(tmp_path))


def _dump_of(path, word, n=300):
  pages = "".join(f"<page><title>T{i}</title><ns>0</ns><id>{i + 1}</id><revision><text>{word} "
                  f"{i}</text></revision></page>" for i in range(n))
  path.write_bytes(bz2.compress(f"<mediawiki>{pages}</mediawiki>".encode()))


def test_a_different_dump_builds_a_different_dataset(tmp_path):
  data_dir = str(tmp_path / "data")
  for i, word in enumerate(("alpha", "omega")):
    dumps = tmp_path / f"dumps{i}"
    dumps.mkdir()
    _dump_of(dumps / "enwiki-pages-articles.xml.bz2", word)
    src = wikipedia.prepare("dump", data_dir, dump_dir=str(dumps)).as_data_source()
    texts = {ex["text"].split()[0] for split in src.values() for ex in split}
    assert texts == {word.encode()}
    assert sum(len(split) for split in src.values()) == 300
