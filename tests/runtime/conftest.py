"""Fixtures of the runtime's tests (helpers are in exports.py)."""

import pytest

from tests.runtime.exports import prompt_ids


@pytest.fixture
def prompt():
  """BOS + "The history of the " as byte tokens, int [20]."""
  return prompt_ids()
