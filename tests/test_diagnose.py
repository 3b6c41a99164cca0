"""`python -m ban_jax.diagnose`: every file on a trained run, one `error:` line for bad input."""

import json
import os
import subprocess
import sys

import pytest

from ban_jax.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = ("check1_landscape_pca.png", "check1_landscape_mds.png", "check1_wells_vs_mass.png",
           "check2_errors_vs_mass.png", "check3_temperature.png", "field.png",
           "field_over_training.png")
SMALL = ["--pool=12", "--cloze_items=24", "--sweep_length=12", "--curvature_iterations=2"]


def _diagnose(*args):
  out = subprocess.run([sys.executable, "-m", "ban_jax.diagnose", *args], cwd=REPO,
                       capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  return out.returncode, out.stdout, errors, out.stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tfds_dir, cache_dir):
  """A tiny run of the full system (power-law field, tagging, inverse-square score) that kept
  two checkpoints."""
  from configs import wiki  # pylint: disable=g-import-not-at-top
  c = wiki.get_config("tiny")
  c.model = wiki.get_config("default").model
  c.model.update(d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                 num_branches=2, attractor_steps=2)
  c.data.tfds_data_dir, c.data.cache_dir = tfds_dir, cache_dir
  c.train.steps, c.eval.every_steps, c.checkpoint.every_steps = 8, 8, 4
  c.wells.mode = "off"
  workdir = str(tmp_path_factory.mktemp("diag") / "run")
  train.train_and_evaluate(c, workdir)
  return workdir


def test_writes_every_file_of_the_report(run_dir, tmp_path):
  out = tmp_path / "report"
  code, stdout, errors, stderr = _diagnose(f"--workdir={run_dir}", f"--out={out}", *SMALL)
  assert code == 0 and not errors, stderr[-3000:]
  assert "wrote" in stdout and "diagnose [" in stderr   # the progress lines
  for name in FIGURES + ("report.json", "report.md"):
    assert (out / name).stat().st_size > 0, name
  report = json.loads((out / "report.json").read_text())
  assert {"check1", "check2", "check3", "field", "field_over_training"} <= set(report)
  heads = report["field"]["layers"][0]["heads"]
  assert len(heads) == 2 and all("p" in h and "learned_p" in h for h in heads)
  assert [r["step"] for r in report["field_over_training"]] == [4, 8]
  assert len(report["check1"]["per_query"]["depth"]) == 12
  assert report["check2"]["items"] == 24
  assert [r["temperature"] for r in report["check3"]["rows"]] == [0.1, 0.5, 1.0, 1.5, 2.0, 5.0,
                                                                  10.0]
  assert "| prediction | verdict | measured |" in (out / "report.md").read_text()
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_bad_input_is_one_error_line_and_writes_nothing(run_dir, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  out = tmp_path / "out"
  cases = [
      ([f"--workdir={empty}", f"--out={out}"], "has no checkpoint"),
      ([f"--workdir={tmp_path / 'nowhere'}", f"--out={out}"], "does not exist"),
      ([f"--workdir={run_dir}"], "are both required"),
      ([f"--workdir={run_dir}", f"--out={out}", f"--queries={tmp_path / 'no.txt'}"],
       "cannot be read"),
      ([f"--workdir={run_dir}", f"--out={out}", "--pool=0"], "--pool=0 must be at least 1"),
  ]
  for args, match in cases:
    code, _, errors, stderr = _diagnose(*args)
    assert code == 2 and len(errors) == 1 and match in errors[0], (args, stderr[-2000:])
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".tmp" in p]
