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
    (["--config=configs/wiki.py:smoke", "--config.foo.bar=3"], "config has no field 'foo'"),
])
def test_bad_flags_give_one_error_line(tmp_path, args, match):
  workdir = tmp_path / "run"
  code, errors, stderr = _run(*args, f"--workdir={workdir}")
  assert code == 2, stderr[-2000:]
  assert len(errors) == 1 and match in errors[0], stderr[-2000:]
  assert "Traceback" not in stderr
  assert not workdir.exists()


def test_the_config_path_resolves_in_the_package_from_any_folder(tmp_path):
  out = subprocess.run([sys.executable, "-m", "ban_jax.main", "--config=configs/wiki.py:smok"],
                       cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 2, out.stderr[-2000:]
  packaged = os.path.join(REPO, "ban_jax", "configs", "wiki.py")
  # The packaged file was found and run: its own check rejected the preset.
  assert f"error: --config={packaged}:smok: " in out.stderr
  assert "unknown preset 'smok'" in out.stderr


def test_the_command_as_typed_runs_without_a_workdir(tmp_path, tfds_dir, cache_dir):
  """`python -m ban_jax.main --config=configs/wiki.py` (the full system), shrunk to 3 steps.

  Typed in a folder outside the repository: the relative path resolves to the packaged config.
  """
  small = {"train.steps": 3, "train.batch_size": 4, "train.log_every": 1,
           "optimizer.warmup_steps": 1, "eval.every_steps": 3, "eval.batch_size": 4,
           "eval.max_batches": 1, "eval.heldout_path": "", "eval.sample_length": 4,
           "checkpoint.every_steps": 3, "data.seq_len": 32, "data.tfds_data_dir": tfds_dir,
           "data.cache_dir": cache_dir, "model.d_model": 16, "model.num_layers": 1,
           "model.num_heads": 2, "model.num_kv_heads": 1, "model.head_dim": 8,
           "model.num_branches": 2, "model.attractor_steps": 2, "model.dtype": "float32",
           "wells.warmup_steps": 1}
  args = ["--config=configs/wiki.py"]
  args += [f"--config.{k}={v}" for k, v in small.items()]
  out = subprocess.run([sys.executable, "-m", "ban_jax.main", *args], cwd=tmp_path,
                       capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  workdir = tmp_path / "runs" / "default"
  assert f"workdir {workdir}: a new run" in out.stderr
  assert (workdir / "final_metrics.json").exists()
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]
