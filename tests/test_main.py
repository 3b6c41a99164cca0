"""The command line: bad flags and configs give one `error:` line and exit status 2."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  out = subprocess.run([sys.executable, "-m", "ban_jax.main", *args], cwd=REPO,
                       capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  return out.returncode, errors, out.stderr


@pytest.mark.parametrize("args,match", [
    (["--config=configs/wiki.py:smoke", "--config.train.stepz=3"], "no field 'stepz'"),
    (["--config=configs/wiki.py:smok"], "unknown preset 'smok'"),
    (["--config=configs/missing.py"], "no such file"),
    (["--config=configs/wiki.py:smoke", "--config.train.steps=many"], "invalid literal"),
    (["--config=configs/wiki.py:smoke", "--config.model.attention=cosine"], "model.attention"),
    (["--config=configs/wiki.py:smoke", "--config.trian.steps=3"], "did you mean 'train'"),
    (["--config=configs/wiki.py:smoke", "--config.train.steps.x=3"], "no field 'x'"),
    (["--config=configs/wiki.py:smoke", "--config.train.z_loss=big"], "takes a number"),
])
def test_bad_flags_give_one_error_line(tmp_path, args, match):
  workdir = tmp_path / "run"
  code, errors, stderr = _run(*args, f"--workdir={workdir}")
  assert code == 2, stderr[-2000:]
  assert len(errors) == 1 and match in errors[0], stderr[-2000:]
  assert "Traceback" not in stderr
  assert not workdir.exists()
