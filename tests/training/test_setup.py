"""Setup at the boundary: the held-out text file is opened only if it exists."""


import pytest

from ban_jax.errors import UserError
from ban_jax.training import setup


def test_heldout_path(tmp_path):
  assert setup.heldout_path("") is None
  with pytest.raises(UserError, match="does not exist"):
    setup.heldout_path(str(tmp_path / "missing.txt"))
  with pytest.raises(UserError, match="is a folder"):
    setup.heldout_path(str(tmp_path))
  f = tmp_path / "t.txt"
  f.write_text("hello")
  assert setup.heldout_path(str(f)) == str(f)
