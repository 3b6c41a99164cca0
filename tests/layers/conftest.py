"""The layers' tests: a deprecated call made by ban_jax's own code fails the test."""

import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(items):
  # The hook sees the whole session's items: mark only the ones under this folder.
  for item in items:
    if str(item.path).startswith(HERE + os.sep):
      item.add_marker(pytest.mark.filterwarnings("error::DeprecationWarning:ban_jax"))
