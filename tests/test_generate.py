"""`python -m ban_jax.generate`: text from a trained run, and one `error:` line for bad input."""

import os
import subprocess
import sys

import pytest

from ban_jax.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _generate(*args, stdin=None):
  out = subprocess.run([sys.executable, "-m", "ban_jax.generate", *args], cwd=REPO,
                       capture_output=True, input=stdin,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  stderr = out.stderr.decode("utf-8", "replace")
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  return out.returncode, out.stdout, errors, stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tfds_dir, cache_dir):
  """A tiny trained run (the tiny preset's window is 64 tokens)."""
  from configs import wiki  # pylint: disable=g-import-not-at-top
  c = wiki.get_config("tiny")
  c.data.tfds_data_dir, c.data.cache_dir = tfds_dir, cache_dir
  c.train.steps, c.eval.every_steps, c.checkpoint.every_steps = 10, 10, 10
  workdir = str(tmp_path_factory.mktemp("gen") / "run")
  train.train_and_evaluate(c, workdir)
  return workdir


@pytest.mark.parametrize("policy", ["gravity", "sinks"])
def test_generates_past_the_training_window_with_a_bounded_cache(run_dir, policy):
  code, stdout, _, stderr = _generate(f"--workdir={run_dir}", "--prompt=The history of ",
                                      "--length=150", f"--kv_policy={policy}", "--kv_budget=16",
                                      "--seed=1")
  assert code == 0, stderr[-3000:]
  assert stdout.startswith(b"The history of ")
  # 150 byte tokens (special tokens print nothing) after the prompt, past the 64-token window.
  assert len(stdout) - len(b"The history of \n") >= 140


def test_the_prompt_from_stdin_and_from_a_file(run_dir, tmp_path):
  code, stdout, _, stderr = _generate(f"--workdir={run_dir}", "--prompt=-", "--length=5",
                                      stdin=b"Piped ")
  assert code == 0 and stdout.startswith(b"Piped "), stderr[-2000:]
  path = tmp_path / "prompt.txt"
  path.write_text("From a file ")
  code, stdout, _, stderr = _generate(f"--workdir={run_dir}", f"--prompt_file={path}",
                                      "--length=5")
  assert code == 0 and stdout.startswith(b"From a file "), stderr[-2000:]


@pytest.mark.parametrize("args,match", [
    (["--prompt="], "the prompt is empty"),
    (["--prompt=x", "--kv_policy=lru"], "--kv_policy=lru is unknown"),
    (["--prompt=x", "--kv_policy=sinks", "--kv_budget=3"], "no room after the 4 attention sinks"),
    (["--prompt=x", "--length=0"], "--length=0 must be at least 1"),
])
def test_bad_input_is_one_error_line(run_dir, args, match):
  code, _, errors, stderr = _generate(f"--workdir={run_dir}", *args, stdin=b"")
  assert code == 2, stderr[-2000:]
  assert len(errors) == 1 and match in errors[0], stderr[-2000:]
  assert "Traceback" not in stderr


def test_a_folder_without_a_run_is_one_error_line(tmp_path):
  code, _, errors, stderr = _generate(f"--workdir={tmp_path}", "--prompt=x")
  assert code == 2 and len(errors) == 1 and "not the workdir of a run" in errors[0], stderr
  (tmp_path / "config.json").write_text("{}")
  code, _, errors, stderr = _generate(f"--workdir={tmp_path}", "--prompt=x")
  assert code == 2 and len(errors) == 1, stderr[-2000:]
