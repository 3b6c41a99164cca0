"""bench/compile_time.py: the cases it compiles."""

import json

import pytest

from bench import compile_time


def test_cases_name_preset_wells_and_the_layout():
  assert compile_time.parse_case("default:wells") == dict(preset="default", wells="wells",
                                                          scan=False, remat=False)
  assert compile_time.parse_case("ban:off:remat:scan") == dict(preset="ban", wells="off",
                                                              scan=True, remat=True)
  with pytest.raises(SystemExit, match="flags are scan and remat"):
    compile_time.parse_case("ban:off:scanned")


def test_the_report_shows_every_case_at_its_median_and_the_ratios(tmp_path):
  # Three repeats of the unscanned case (median: the 4 s compile), one of the scanned.
  rows = [dict(preset="ban", wells="off", scan=s, remat=False, lower_s=1.0, compile_s=c,
               total_s=1.0 + c, hlo_chars=2e6, temp_gib=None)
          for s, c in ((False, 9.0), (True, 2.0), (False, 4.0), (False, 3.0))]
  res = dict(target="cpu", jax="0", cpu_count=2, ratios={"ban_scanned_over_unscanned": 0.5},
             rows=rows, machine="load average 0.1 at the start")
  path = tmp_path / "compile_time_cpu.json"
  path.write_text(json.dumps(res))
  text = "\n".join(compile_time.report([str(path)]))
  assert "| ban | off | no | no | 3 | 1.0 | 4.0 | 2.00M | – |" in text
  assert "| ban | off | yes | no | 1 | 1.0 | 2.0 | 2.00M | – |" in text
  assert "9.0" not in text and "load average 0.1 at the start" in text
  assert "ban scanned over unscanned 0.50×" in text
