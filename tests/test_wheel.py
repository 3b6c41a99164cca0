"""`python -m build` makes a wheel that, installed, trains the quickstart from any folder.

Slow: it builds the sdist and wheel, installs the wheel into a fresh venv and trains 3 steps
(with the bundled data built by the installed code), about two minutes on 2 CPU cores.

The fresh venv sees this environment's site-packages through a `.pth` line (appended after
its own, so the wheel's copy of ban_jax wins), so that jax, flax and the rest are not
downloaded again; `pip install --no-index` still checks that they satisfy the wheel's declared
requirements. What comes from the wheel is checked, not assumed: `ban_jax` and its config
import from the new venv, from a folder outside the repository, with the repository off
sys.path. (`python -m venv --system-site-packages` would expose the base interpreter's
packages, not this venv's, so it cannot stand in for the `.pth` line.)
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a wheel is built from; copied so the build's own folders (build/, *.egg-info) stay out of
# the checkout, and so nothing outside these can leak into the wheel.
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "ban_jax")
# Held-out evaluation is skipped (heldout_path "") unless the variable names a folder.
PROBE = """
import json, os, sys
import ban_jax
from ban_jax import config_file
from ban_jax.configs import wiki
print(json.dumps({"ban_jax": ban_jax.__file__, "config": config_file.resolve("configs/wiki.py"),
                  "repo_on_path": any(os.path.abspath(p or os.curdir) == sys.argv[1]
                                      for p in sys.path),
                  "heldout": wiki.heldout_default()}))
"""


def _run(args, cwd, env, timeout=900):
  out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, f"{args}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
  return out


@pytest.mark.slow
def test_the_built_wheel_installs_and_trains_the_quickstart_from_another_folder(tmp_path):
  pytest.importorskip("build", reason="pip install -e '.[test]' installs `build`")
  src = tmp_path / "src"
  src.mkdir()
  for name in SOURCES:
    if os.path.isdir(os.path.join(REPO, name)):
      shutil.copytree(os.path.join(REPO, name), src / name,
                      ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy(os.path.join(REPO, name), src / name)
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "BAN_JAX_HELDOUT_DIR", "VIRTUAL_ENV")}
  env["JAX_PLATFORMS"] = "cpu"
  _run([sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"), str(src)],
       tmp_path, env)
  wheels = sorted((tmp_path / "dist").glob("*.whl"))
  assert len(wheels) == 1, wheels
  names = zipfile.ZipFile(wheels[0]).namelist()
  assert "ban_jax/configs/wiki.py" in names
  assert not [n for n in names if n.startswith("configs/")]   # no top-level package squatted

  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
  python = str(venv / "bin" / "python")
  purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                 tmp_path, env).stdout.strip()
  with open(os.path.join(purelib, "_parent_env.pth"), "w", encoding="utf-8") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  _run([python, "-m", "pip", "install", "--no-index", str(wheels[0])], tmp_path, env)

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  probe = json.loads(_run([python, "-c", PROBE, REPO], elsewhere, env).stdout)
  installed = os.path.join(purelib, "ban_jax")
  assert probe == {"ban_jax": os.path.join(installed, "__init__.py"),
                   "config": os.path.join(installed, "configs", "wiki.py"),
                   "repo_on_path": False, "heldout": ""}
  heldout_dir = tmp_path / "heldout"
  heldout_dir.mkdir()
  (heldout_dir / "wikitext2_valid.txt").write_text("The held-out text.\n" * 50)
  probe = json.loads(_run([python, "-c", PROBE, REPO], elsewhere,
                          dict(env, BAN_JAX_HELDOUT_DIR=str(heldout_dir))).stdout)
  assert probe["heldout"] == str(heldout_dir / "wikitext2_valid.txt")

  # The README quickstart as typed, shrunk to 3 steps, its data built into this test's folders.
  small = {"train.steps": 3, "train.log_every": 1, "optimizer.warmup_steps": 1,
           "wells.warmup_steps": 1, "eval.every_steps": 3, "eval.max_batches": 1,
           "eval.sample_length": 8, "checkpoint.every_steps": 3,
           "data.tfds_data_dir": tmp_path / "tfds", "data.cache_dir": tmp_path / "cache"}
  out = _run([python, "-m", "ban_jax.main", "--config=configs/wiki.py:smoke"]
             + [f"--config.{k}={v}" for k, v in small.items()], elsewhere, env)
  workdir = elsewhere / "runs" / "smoke"
  assert f"workdir {workdir}: a new run" in out.stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]
  with open(workdir / "config.json", encoding="utf-8") as f:
    config = json.load(f)
  assert config["preset"] == "smoke" and config["eval"]["heldout_path"] == ""
  with open(workdir / "final_metrics.json", encoding="utf-8") as f:
    metrics = json.load(f)
  assert metrics["steps"] == 3 and metrics["eval/bits_per_byte"] > 0
