"""launch/colab_tpu.ipynb runs end to end (on CPU, with the tiny preset) and ships no outputs."""

import configparser
import os
import re

import nbformat
from nbclient import NotebookClient

from tests.conftest import PRESET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "launch", "colab_tpu.ipynb")
# The diagnostics cell at its smallest: the cell runs, the numbers mean little.
DIAGNOSE = dict(pool=8, cloze_items=8, sweep_prompts=2, sweep_length=8, field_windows=2,
                curvature_iterations=1)


def _repo_url():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, "setup.cfg"))
  return cfg["metadata"]["url"]


def test_notebook_is_committed_without_outputs_and_has_one_parameters_cell():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code)
  tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1 and "PRESET" in tagged[0].source


def test_repo_url_lives_in_setup_cfg():
  url = _repo_url()
  owner_repo = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", url).group(1)
  with open(os.path.join(REPO, "launch", "README.md"), encoding="utf-8") as f:
    launch_readme = f.read()
  badge = (f"https://colab.research.google.com/github/{owner_repo}/blob/main/launch/"
           "colab_tpu.ipynb")
  assert badge in launch_readme, f"launch/README.md's Colab badge should link to {badge}"
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert f'REPO_URL = "{url}"' in "".join(c.source for c in nb.cells)


def test_notebook_runs_on_cpu_with_a_tiny_preset(tfds_dir, cache_dir, tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
  overrides = {"data.tfds_data_dir": tfds_dir, "data.cache_dir": cache_dir,
               "eval.heldout_path": "", "optimizer.warmup_steps": 0,
               "eval.sample_length": 16}
  params.source = (f"PRESET = {PRESET!r}\nSTEPS = 3\nWORKDIR = {str(tmp_path / 'run')!r}\n"
                   f"OVERRIDES = {overrides!r}\nDIAGNOSE = {DIAGNOSE!r}")
  client = NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": REPO}})
  client.execute()      # raises CellExecutionError, with the cell and traceback, if one fails
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
  assert "mesh: {'data': 1" in text
  assert "no TPU here (cpu): the fit check is for TPUs" in text
  assert re.search(r"'eval/bits_per_byte': \d", text)
  assert re.search(r"nats per token: \d", text)
  assert "The history of " in text
  assert os.path.exists(tmp_path / "run" / "loss_curve.png")
  shown = "\n".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells
                    if c.cell_type == "code" for o in c.outputs)
  assert "| prediction | verdict | measured |" in shown
  assert os.path.exists(tmp_path / "run" / "diagnostics" / "report.json")
