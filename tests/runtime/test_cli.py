"""`python -m ban_jax.runtime`: NumPy and the standard library only, text out, one `error:` line.

Mirrors `ban_jax/runtime/__main__.py`; `tests/test_export.py` covers the export CLI.
"""

import ast
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ban_jax.runtime import __main__ as cli
from ban_jax.runtime import banx
from tests.runtime.exports import REPO, TRAINED

RUNTIME = os.path.join(REPO, "ban_jax", "runtime")
# Runs a module with jax, jaxlib and flax made unimportable (argv: module, its arguments).
NO_JAX = """
import runpy, sys
class NoJax:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("jax", "jaxlib", "flax"):
      raise ImportError(name + " is blocked in this process")
sys.meta_path.insert(0, NoJax())
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def test_the_runtime_imports_numpy_and_the_standard_library_only():
  allowed = set(sys.stdlib_module_names) | {"numpy"}
  bad = []
  for name in sorted(os.listdir(RUNTIME)):
    if not name.endswith(".py"):
      continue
    with open(os.path.join(RUNTIME, name), encoding="utf-8") as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        bad += [f"{name}: import {a.name}" for a in node.names
                if a.name.split(".")[0] not in allowed]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        if node.module.split(".")[0] not in allowed:
          bad.append(f"{name}: from {node.module} import ...")
  assert not bad, bad


def test_export_then_run_on_a_device_without_jax(tmp_path):
  model = str(tmp_path / "smoke.banx")
  out = subprocess.run([sys.executable, "-m", "ban_jax.export", f"--workdir={TRAINED['ban']}",
                        f"--out={model}", "--dtype=int8"], cwd=REPO, capture_output=True,
                       text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "int8 weights" in out.stdout
  # The device: this folder and the model file, nothing else of the repository.
  device = tmp_path / "device"
  shutil.copytree(RUNTIME, device / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
  out = subprocess.run([sys.executable, "-c", NO_JAX, "runtime", f"--model={model}",
                        "--prompt=The history of ", "--length=150", "--kv_policy=gravity",
                        "--kv_budget=32", "--seed=1"], cwd=device, capture_output=True,
                       env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": ""})
  assert out.returncode == 0, out.stderr.decode()[-3000:]
  assert out.stdout.startswith(b"The history of ")
  assert len(out.stdout) >= len(b"The history of ") + 100   # bytes, past the 32 slots
  # The block is real, and the runtime also loads as ban_jax.runtime (through ban_jax's
  # __init__) in such a process.
  out = subprocess.run([sys.executable, "-c", NO_JAX, "jax"], capture_output=True, text=True)
  assert out.returncode and "blocked" in out.stderr
  out = subprocess.run([sys.executable, "-c", NO_JAX, "ban_jax.runtime", f"--model={model}",
                        "--prompt=A", "--length=3"], cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0 and out.stdout.startswith("A"), out.stderr[-2000:]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
  """A small float32 export (no JAX needed to read it)."""
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  from tests.runtime.exports import write_banx  # pylint: disable=g-import-not-at-top
  run = trained.load(TRAINED["transformer"])
  return write_banx(tmp_path_factory.mktemp("cli") / "t.banx", run.config, run.model,
                    run.params)


def _cli(capsys, *argv):
  with pytest.raises(SystemExit) as e:
    cli.main(list(argv))
  errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
  return e.value.code, errors


def test_greedy_text_in_process(model_file, capsys):
  cli.main([f"--model={model_file}", "--prompt=The ", "--length=20", "--temperature=0",
            "--kv_policy=sinks", "--kv_budget=8"])
  assert capsys.readouterr().out.startswith("The ")


def _spm_copy(model_file, path):
  head = banx.read_header(model_file)
  head["tokenizer"] = {"kind": "sentencepiece", "vocab_size": 4096}
  weights = banx.Weights(model_file, head)
  banx.write(path, {k: v for k, v in head.items() if k not in ("tensors", "file_size")},
             {n: weights.raw(n) for n in weights.names()})
  return path


@pytest.mark.parametrize("make,args,match", [
    (None, ["--model=/nonexistent/m.banx"], "does not exist"),
    ("text", [], "is not a .banx model file"),
    ("cut", [], "was cut short"),
    ("folder", [], "is a folder"),
    ("spm", [], "reads byte tokens only"),
    ("ok", ["--kv_policy=h2o"], "not supported in the runtime"),
    ("ok", ["--kv_policy=sinks", "--kv_budget=3"], "no room after the 4 attention sinks"),
    ("ok", ["--prompt="], "the prompt is empty"),
    ("ok", ["--length=0"], "must be at least 1"),
    ("ok", ["--top_p=0"], "--top_p in (0, 1]"),
    ("ok", ["--kv_budget=x"], "invalid int value"),
    ("ok", ["--branches=disk"], "invalid choice"),
])
def test_bad_input_is_one_error_line(model_file, tmp_path, capsys, make, args, match):
  path = str(tmp_path / "m.banx")
  if make == "text":
    with open(path, "w") as f:
      f.write("hello")
  elif make == "cut":
    with open(model_file, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[: len(data) // 2])
  elif make == "folder":
    path = str(tmp_path)
  elif make == "spm":
    _spm_copy(model_file, path)
  elif make == "ok":
    path = model_file
  argv = [f"--model={path}", "--prompt=Hi", "--length=3", *args]
  if make is None:
    argv = [*args, "--prompt=Hi"]
  code, errors = _cli(capsys, *argv)
  assert code == 2 and len(errors) == 1 and match in errors[0], errors


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
  path = tmp_path / "m.banx"
  tensors = {"x": (np.arange(3, dtype=np.float32), None)}
  banx.write(str(path), {"note": "old"}, tensors)
  with pytest.raises(ValueError, match="float64"):
    banx.write(str(path), {}, {"x": (np.zeros(3), None)})
  def disk_full(*_):
    raise OSError("No space left on device")
  monkeypatch.setattr(banx.os, "replace", disk_full)
  with pytest.raises(OSError):
    banx.write(str(path), {"note": "new"}, tensors)
  assert os.listdir(tmp_path) == ["m.banx"]
  assert banx.read_header(str(path))["note"] == "old"
  np.testing.assert_array_equal(banx.Weights(str(path), banx.read_header(str(path))).get("x"),
                                [0, 1, 2])
