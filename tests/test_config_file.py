"""ban_jax/config_file.py: the CLI's own checks of --config and its overrides."""

import os

import pytest

from ban_jax import config_file
from ban_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIKI = os.path.join(REPO, "configs", "wiki.py")


def test_load_runs_get_config_with_the_preset():
  assert config_file.load(f"{WIKI}:tiny").preset == "tiny"
  assert config_file.load(WIKI).preset == "default"


def test_load_errors_name_the_argument(tmp_path):
  with pytest.raises(UserError, match="no such file"):
    config_file.load(str(tmp_path / "missing.py"))
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config():\n  raise KeyError('oops')\n")
  with pytest.raises(UserError, match=r"broken.py: the config file raised KeyError: 'oops'"):
    config_file.load(str(broken))


@pytest.mark.parametrize("arg,match", [
    ("--config.train.stepz=3", "config.train has no field 'stepz' \\(did you mean 'steps'\\?\\)"),
    ("--config.nope=1", "config has no field 'nope'; its fields are checkpoint, data, "),
    ("--config.foo.bar=3", "config has no field 'foo'"),
    ("--config.model.num_layer=3", "did you mean 'num_layers'"),
    ("--config.train.steps.x=1", "config.train.steps is a value, not a block"),
    ("--config.train.steps=3.5", "takes an integer"),
    ("--config.optimizer.learning_rate=fast", "takes a number"),
    ("--config.model.tagging=maybe", "expected true or false"),
])
def test_bad_overrides(arg, match):
  config = config_file.load(f"{WIKI}:tiny")
  with pytest.raises(UserError, match=match):
    config_file.check_overrides(config, ["prog", arg])


def test_good_overrides_pass():
  config = config_file.load(f"{WIKI}:smoke")
  config_file.check_overrides(config, ["prog", "--config.train.steps=3", "--workdir=x",
                                       "--config.optimizer.learning_rate=1e-3",
                                       "--config.model.tagging=false",
                                       "--config.model.attention=dot"])


PACKAGED = os.path.join(REPO, "ban_jax", "configs", "wiki.py")


@pytest.mark.parametrize("typed", ["configs/wiki.py", "ban_jax/configs/wiki.py",
                                   "./configs/wiki.py"])
def test_a_relative_path_missing_here_resolves_to_the_packaged_config(typed, tmp_path,
                                                                      monkeypatch):
  monkeypatch.chdir(tmp_path)   # outside the repository: no configs/ folder here
  assert config_file.resolve(f"{typed}:smoke") == f"{PACKAGED}:smoke"
  assert config_file.resolve(typed) == PACKAGED
  assert config_file.load(f"{typed}:tiny").preset == "tiny"


def test_a_config_in_the_current_folder_wins_over_the_packaged_one(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "wiki.py").write_text(
      "import ml_collections\n"
      "def get_config(preset='mine'):\n"
      "  return ml_collections.ConfigDict({'preset': preset + '!'})\n")
  assert config_file.resolve("configs/wiki.py:x") == "configs/wiki.py:x"
  assert config_file.load("configs/wiki.py:x").preset == "x!"


def test_the_checkout_shim_is_the_packaged_config():
  assert config_file.load(f"{WIKI}:smoke") == config_file.load(f"{PACKAGED}:smoke")
  from configs import wiki  # pylint: disable=g-import-not-at-top
  from ban_jax.configs import wiki as packaged  # pylint: disable=g-import-not-at-top
  assert wiki.get_config is packaged.get_config


def test_unresolvable_paths_are_left_for_the_error(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for spec in ("configs/nope.py:smoke", "ban_jax", "/abs/configs/wiki.py"):
    assert config_file.resolve(spec) == spec
  with pytest.raises(UserError, match=r"no such file 'configs/nope.py' \(relative to .*, nor "
                                      r"in the installed package"):
    config_file.load("configs/nope.py:smoke")
