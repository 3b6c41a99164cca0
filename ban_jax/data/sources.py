"""Where article text comes from: the bundled sample, a local dump, or any TFDS Wikipedia."""

import os
import re

import ml_collections
import tensorflow_datasets as tfds

from ban_jax.data import tokenizer as tokenizer_lib
from ban_jax.data import wikipedia
from ban_jax.errors import UserError

SOURCES = ("bundled", "dump", "tfds")
TOKENIZERS = ("bytes", "spm")


def default_cache_dir() -> str:
  return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ban_jax")


def open_splits(cfg: ml_collections.ConfigDict) -> tuple[dict[str, object], str]:
  """Opens the train and validation splits as random-access TFDS data sources.

  Args:
    cfg: the `data` block of the config.

  Returns:
    ({"train": source, "validation": source}, a name identifying dataset and version).
  """
  data_dir = cfg.tfds_data_dir or None
  if cfg.source == "bundled":
    builder = wikipedia.prepare("sample", data_dir, workers=cfg.build_workers)
  elif cfg.source == "dump":
    builder = wikipedia.prepare("dump", data_dir, dump_dir=cfg.dump_dir,
                                workers=cfg.build_workers)
  elif cfg.source == "tfds":
    return _open_tfds(cfg, data_dir)
  else:
    raise UserError(f"data.source={cfg.source!r} is not one of {SOURCES}.")
  name = f"{builder.name}/{builder.builder_config.name}:{builder.version}"
  splits = {}
  for role, split in (("train", cfg.train_split), ("validation", cfg.validation_split)):
    try:
      splits[role] = builder.as_data_source(split=split)
    except (ValueError, KeyError) as e:
      raise UserError(f"data.{role}_split={split!r} does not exist in {name}: {e}") from e
  return splits, name


def _open_tfds(cfg, data_dir):
  splits = {}
  for role, split in (("train", cfg.train_split), ("validation", cfg.validation_split)):
    try:
      # download=False: a missing dataset is an error, never a silent multi-GB download.
      splits[role] = tfds.data_source(cfg.tfds_name, split=split, data_dir=data_dir,
                                      download=False, try_gcs=cfg.try_gcs)
    except Exception as e:  # TFDS raises a zoo of types for "not here"; all mean the same.
      raise UserError(
          f"TFDS dataset {cfg.tfds_name!r} (split {split!r}) cannot be read from "
          f"data_dir={data_dir or tfds.core.constants.DATA_DIR} ({type(e).__name__}: "
          f"{str(e).splitlines()[0] if str(e) else ''}). On a Colab/Cloud TPU with the public "
          "bucket, set --config.data.tfds_data_dir=gs://tensorflow-datasets/datasets; elsewhere "
          "prepare it in ArrayRecord format first (`tfds build wikipedia/20231101.en "
          "--file_format=array_record`, needs apache-beam), or use a "
          "local dump (--config.data.source=dump --config.data.dump_dir=FOLDER), or the bundled "
          "sample (--config.data.source=bundled).") from e
  return splits, f"{cfg.tfds_name}"


def make_tokenizer(cfg: ml_collections.ConfigDict, train_source=None):
  """The configured tokenizer; trains a SentencePiece model on the train split if asked to."""
  if cfg.tokenizer == "bytes":
    return tokenizer_lib.ByteTokenizer()
  if cfg.tokenizer == "spm":
    path = cfg.spm_model
    if not path:
      cache = os.path.join(cfg.cache_dir or default_cache_dir(), "spm")
      os.makedirs(cache, exist_ok=True)
      # Named by everything that shaped it, so a changed setting trains a new model.
      tag = re.sub(r"[^\w.-]+", "_", f"{cfg.source}-{cfg.tfds_name if cfg.source == 'tfds' else ''}"
                   f"-{cfg.train_split}-{cfg.text_key}-v{cfg.spm_vocab_size}"
                   f"-d{cfg.spm_train_documents}")
      prefix = os.path.join(cache, tag)
      path = prefix + ".model"
      if not os.path.exists(path):
        if train_source is None:
          raise UserError("data.tokenizer='spm' with no data.spm_model needs the train split.")
        limit = min(len(train_source), cfg.spm_train_documents)
        tokenizer_lib.train_sentencepiece(
            (train_source[i][cfg.text_key] for i in range(limit)), prefix, cfg.spm_vocab_size)
    return tokenizer_lib.SentencePieceTokenizer(path)
  raise UserError(f"data.tokenizer={cfg.tokenizer!r} is not one of ('bytes', 'spm').")
