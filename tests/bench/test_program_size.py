"""bench/program_size.py: every traced operation lands in one part, by the module that made it."""

import json

from bench import program_size


def test_parts_follow_the_module_path():
  assert program_size.part_of("/jvp(BANLM)/layer_0/attractor/attractor._sow_diagnostics") == (
      "attractor: diagnostics")
  assert program_size.part_of("/jvp(BANLM)/layer_3/attractor_norm") == "norms"
  assert program_size.part_of("/transpose(jvp(BANLM))/layer_1/attractor") == "attractor: rest"
  assert program_size.part_of("/jvp(TransformerLM)/block_0/mlp") == "mlp"
  assert program_size.part_of("/jvp()") == "loss"
  assert program_size.part_of("") == program_size.UNOWNED


def test_a_preset_is_counted_whole_and_the_report_shows_it(tmp_path):
  smoke = program_size.measure("smoke")
  assert smoke["total"] == sum(v for k, v in smoke.items() if k != "total")
  assert smoke["attention"] > 0 and smoke["attractor: loop"] > 0 and smoke.get("mlp", 0) == 0
  res = {"presets": {"smoke": smoke, "transformer": {"mlp": 10, "total": 10}}}
  (tmp_path / "size.json").write_text(json.dumps(res))
  text = "\n".join(program_size.report(res))
  assert f"| **total** | **{smoke['total']:,}** | **10** |" in text
  assert f"smoke {smoke['total'] / 10:.2f}×" in text
