"""bench/compile_time.py: the cases it compiles."""

import pytest

from bench import compile_time


def test_cases_name_preset_wells_and_the_layout():
  assert compile_time.parse_case("default:wells") == dict(preset="default", wells="wells",
                                                          scan=False, remat=False)
  assert compile_time.parse_case("ban:off:remat:scan") == dict(preset="ban", wells="off",
                                                              scan=True, remat=True)
  with pytest.raises(SystemExit, match="flags are scan and remat"):
    compile_time.parse_case("ban:off:scanned")
