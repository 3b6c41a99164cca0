"""TFDS builder `ban_wikipedia`: MediaWiki XML dumps → clean article text (ArrayRecord).

Configs:
  * `ban_wikipedia/sample`: the 206-page English Wikipedia dump that the `gensim` package ships
    as test data (106 articles once redirects are dropped, 2.9 MB of clean text); it is located
    through package metadata, so gensim itself is never imported.
  * `ban_wikipedia/dump`: every `*pages-articles*.xml*.bz2` in TFDS's manual dir
    (`--config.data.dump_dir`), e.g. a full enwiki dump from dumps.wikimedia.org.

Articles go to `validation` when a hash of their title falls in the configured percentage, to
`train` otherwise: the split is deterministic, by article, and stable when the dump grows.
Building needs no TensorFlow.
"""

import concurrent.futures
import contextlib
import fcntl
import glob
import hashlib
import importlib.metadata
import itertools
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds

from ban_jax.data import mediawiki
from ban_jax.errors import UserError

BUNDLED_DUMP = ("gensim/test/test_data/"
                "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
DUMP_PATTERN = "*pages-articles*.xml*.bz2"


def bundled_dump_path() -> str:
  """Path of the Wikipedia dump shipped inside the installed gensim package."""
  try:
    dist = importlib.metadata.distribution("gensim")
  except importlib.metadata.PackageNotFoundError as e:
    raise UserError("the bundled Wikipedia sample comes with the gensim package, which is not "
                    "installed: run `pip install -e .` (or `pip install gensim`).") from e
  path = str(dist.locate_file(BUNDLED_DUMP))
  if not os.path.exists(path):
    raise UserError(f"gensim is installed but its bundled Wikipedia dump is missing ({path}); "
                    "reinstall it with `pip install --force-reinstall gensim`.")
  return path


def split_of(title: str, validation_percent: float) -> str:
  bucket = int.from_bytes(hashlib.md5(title.encode("utf-8")).digest()[:4], "little") % 10_000
  return "validation" if bucket < validation_percent * 100 else "train"


class BanWikipediaConfig(tfds.core.BuilderConfig):
  """Where the dump comes from and how much of it is held out."""

  def __init__(self, *, bundled: bool, validation_percent: float, **kwargs):
    super().__init__(**kwargs)
    self.bundled = bundled
    self.validation_percent = validation_percent


class BanWikipedia(tfds.core.GeneratorBasedBuilder):
  """Clean English Wikipedia article text from MediaWiki XML dumps."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Markup stripped with mwparserfromhell; split by title hash.",
      "1.1.0": "Only language and sister-project prefixes count as interwiki links.",
  }
  BUILDER_CONFIGS = [
      BanWikipediaConfig(name="sample", bundled=True, validation_percent=10.0,
                         description="gensim's bundled 206-page enwiki dump."),
      BanWikipediaConfig(name="dump", bundled=False, validation_percent=1.0,
                         description="*pages-articles*.xml*.bz2 files in the manual dir."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download a dump, e.g. https://dumps.wikimedia.org/enwiki/latest/"
      "enwiki-latest-pages-articles.xml.bz2, into a folder and pass it as "
      "--config.data.dump_dir=FOLDER.")

  def __init__(self, *, workers: int = 1, **kwargs):
    super().__init__(**kwargs)
    self._workers = workers

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Scalar(dtype=np.int64),
            "title": tfds.features.Text(),
            "text": tfds.features.Text(),
        }),
        homepage="https://dumps.wikimedia.org/",
    )

  def _split_generators(self, dl_manager):
    if self.builder_config.bundled:
      paths = [bundled_dump_path()]
    else:
      pattern = os.path.join(str(dl_manager.manual_dir), DUMP_PATTERN)
      paths = sorted(glob.glob(pattern))
      if not paths:
        raise UserError(f"no MediaWiki dump matches {pattern}. "
                        + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return {split: self._generate_examples(paths, split) for split in ("train", "validation")}

  def _generate_examples(self, paths, split):
    percent = self.builder_config.validation_percent
    pages = ((pid, title, text) for path in paths
             for pid, title, text in mediawiki.iter_articles(path)
             if split_of(title, percent) == split)
    for pid, title, text in _clean_all(pages, self._workers):
      if text:
        yield pid, {"id": pid, "title": title, "text": text}


def _clean_page(page):
  pid, title, wikitext = page
  return pid, title, mediawiki.clean_wikitext(wikitext)


def _clean_all(pages, workers, chunk=512):
  if workers <= 1:
    yield from map(_clean_page, pages)
    return
  # spawn, not fork: the parent may have started JAX's threads. Pages go out a chunk at a time,
  # so a full dump is never held in memory.
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
    for batch in iter(lambda: list(itertools.islice(pages, chunk)), []):
      yield from pool.map(_clean_page, batch, chunksize=max(1, len(batch) // (4 * workers)))


@contextlib.contextmanager
def _build_lock(data_dir: str):
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".ban_wikipedia.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare(config_name: str, data_dir: str | None, dump_dir: str | None = None,
            workers: int = 1) -> BanWikipedia:
  """Builds `ban_wikipedia/<config_name>` into `data_dir` unless it is there; returns the builder.

  Concurrent callers (test workers, hosts sharing a disk) wait on a file lock; TFDS writes into
  a temporary folder and renames it, so an interrupted build leaves nothing half-written.
  """
  if config_name not in ("sample", "dump"):
    raise UserError(f"unknown ban_wikipedia config {config_name!r}: use 'sample' or 'dump'.")
  if config_name == "dump":
    if not dump_dir:
      raise UserError("data.source='dump' needs --config.data.dump_dir=FOLDER holding a "
                      "*pages-articles*.xml.bz2 dump.")
    pattern = os.path.join(dump_dir, DUMP_PATTERN)
    if not glob.glob(pattern):
      raise UserError(f"no MediaWiki dump matches {pattern}. "
                      + BanWikipedia.MANUAL_DOWNLOAD_INSTRUCTIONS)
  config = config_name
  if config_name == "dump":
    # One dataset per set of dump files: a different dump never reuses an older build.
    files = sorted(glob.glob(os.path.join(dump_dir, DUMP_PATTERN)))
    stamp = hashlib.sha1("|".join(f"{os.path.basename(f)}:{os.path.getsize(f)}"
                                  for f in files).encode()).hexdigest()[:10]
    config = BanWikipediaConfig(name=f"dump-{stamp}", bundled=False, validation_percent=1.0,
                                description=f"{len(files)} dump file(s) in {dump_dir}.")
  builder = BanWikipedia(config=config, data_dir=data_dir, workers=workers,
                         file_format="array_record")
  if builder.is_prepared():
    return builder
  with _build_lock(str(builder.data_dir_root)):
    builder = BanWikipedia(config=config, data_dir=data_dir, workers=workers,
                           file_format="array_record")
    if not builder.is_prepared():
      download_config = tfds.download.DownloadConfig(manual_dir=dump_dir)
      builder.download_and_prepare(download_config=download_config)
  return builder
