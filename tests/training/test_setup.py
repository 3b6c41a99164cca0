"""Setup at the boundary: where the held-out text is found."""

import os

import pytest

from ban_jax.errors import UserError
from ban_jax.training import setup


def test_heldout_path(tmp_path):
  assert setup.heldout_path("") is None
  with pytest.raises(UserError, match="does not exist"):
    setup.heldout_path(str(tmp_path / "missing.txt"))
  f = tmp_path / "t.txt"
  f.write_text("hello")
  assert setup.heldout_path(str(f)) == str(f)


def test_auto_heldout_path_reads_the_env_folder_then_the_default(tmp_path, monkeypatch):
  monkeypatch.setenv(setup.HELDOUT_DIR_ENV, str(tmp_path))
  assert setup.heldout_path("auto") is None              # no file there: skipped, no error
  (tmp_path / setup.HELDOUT_FILE).write_text("held-out text")
  assert setup.heldout_path("auto") == str(tmp_path / setup.HELDOUT_FILE)
  monkeypatch.delenv(setup.HELDOUT_DIR_ENV)
  default = os.path.join(setup.DEFAULT_HELDOUT_DIR, setup.HELDOUT_FILE)
  assert setup.heldout_path("auto") == (default if os.path.exists(default) else None)
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert setup.DEFAULT_HELDOUT_DIR == os.path.normpath(os.path.join(repo, "..", "shared", "data"))
