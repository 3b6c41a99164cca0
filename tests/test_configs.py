"""configs/wiki.py: every preset validates and builds; the default is the paper's full system."""

import os

import jax
import jax.numpy as jnp
import pytest

from ban_jax import config_validation
from ban_jax import models
from configs import wiki


@pytest.mark.parametrize("preset", wiki.PRESETS)
def test_each_preset_validates_and_builds(preset):
  config = wiki.get_config(preset)
  model_config = config_validation.validate(config)
  model = models.get_model(model_config, vocab_size=259)
  tokens = jax.ShapeDtypeStruct((1, 16), jnp.int32)
  params = jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)["params"]
  assert sum(x.size for x in jax.tree.leaves(params)) > 0


def test_default_is_the_full_system():
  config = wiki.get_config()
  assert config.preset == "default"
  assert config.model.name == "ban"
  assert config.model.attention in ("gravity", "inverse_square")
  assert config.model.tagging
  assert config.model.positional == "power_law"
  assert config.wells.mode == "wells"
  ban = wiki.get_config("ban")
  assert (ban.model.name, ban.model.attention, ban.model.positional, ban.wells.mode) == (
      "ban", "dot", "rope", "off")
  assert wiki.get_config("transformer").model.name == "transformer"


def test_baseline_is_an_alias_of_transformer():
  assert wiki.get_config("baseline").to_dict() == wiki.get_config("transformer").to_dict()


@pytest.mark.parametrize("preset", ["default", "ban", "transformer"])
def test_bundled_presets_plan_at_most_four_epochs(preset, tfds_dir, cache_dir):
  from ban_jax.training import budget  # pylint: disable=g-import-not-at-top
  from ban_jax.training import setup  # pylint: disable=g-import-not-at-top
  config = wiki.get_config(preset)
  config.data.tfds_data_dir = tfds_dir
  config.data.cache_dir = cache_dir
  config.eval.heldout_path = ""
  data = setup.build_data(config)
  epochs = budget.planned_epochs(config, len(data.train.split.windows))
  assert 1 <= epochs <= 4, (preset, epochs, data.train.steps_per_epoch)


def test_heldout_default_reads_the_env_folder_then_beside_the_checkout(tmp_path, monkeypatch):
  monkeypatch.setenv(wiki.HELDOUT_DIR_ENV, str(tmp_path))
  assert wiki.heldout_default() == ""                 # no file there: no held-out evaluation
  (tmp_path / wiki.HELDOUT_FILE).write_text("held-out text")
  assert wiki.heldout_default() == str(tmp_path / wiki.HELDOUT_FILE)
  assert wiki.get_config("smoke").eval.heldout_path == str(tmp_path / wiki.HELDOUT_FILE)
  monkeypatch.delenv(wiki.HELDOUT_DIR_ENV)
  beside = os.path.normpath(os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "..", "shared", "data", wiki.HELDOUT_FILE))
  assert wiki.heldout_default() == (beside if os.path.exists(beside) else "")


def test_the_colab_preset_trains_20_tokens_per_parameter():
  config = wiki.get_config("colab_v5e")
  model = models.get_model(config_validation.validate(config), vocab_size=259)
  tokens = jax.ShapeDtypeStruct((1, 16), jnp.int32)
  params = jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)["params"]
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count == wiki.COLAB_V5E_PARAMS
  tokens_per_step = config.train.batch_size * config.data.seq_len
  assert tokens_per_step >= 64 * 512
  assert abs(config.train.steps * tokens_per_step / count - 20) < 0.01
