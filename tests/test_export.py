"""`python -m ban_jax.export`: a run to one .banx file, and one `error:` line for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ban_jax.inference import banx_export as export
from ban_jax.inference import trained
from ban_jax.runtime import banx
from ban_jax.runtime import quantize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINED = os.path.join(REPO, "bench", "results", "kv_cache", "full")


def _export(*args):
  out = subprocess.run([sys.executable, "-m", "ban_jax.export", *args], cwd=REPO,
                       capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  return out.returncode, errors, out.stderr


def test_the_file_holds_the_run_whole(tmp_path):
  run = trained.load(TRAINED)
  path = str(tmp_path / "m.banx")
  size = export.export(run, path, "int8", group=32)
  head = banx.read_header(path)
  assert size == head["file_size"] == os.path.getsize(path)
  assert head["model"]["kind"] == "ban" and head["tokenizer"]["kind"] == "bytes"
  assert head["config"] == json.loads(json.dumps(run.config.to_dict(), default=str))
  weights = banx.Weights(path, head)
  flat = export.flatten(run.params)
  assert sorted(flat) == weights.names()
  for name, w in flat.items():
    stored, scale = weights.raw(name)
    assert head["tensors"][name]["offset"] % banx.ALIGN == 0
    if scale is None:
      np.testing.assert_array_equal(weights.get(name), w)      # vectors stay float32
    else:
      assert stored.dtype == np.int8 and w.size >= quantize.MIN_QUANTISED_SIZE
      step = quantize.expand(np.asarray(scale), w.shape)
      assert np.all(np.abs(weights.get(name) - w) <= step / 2 + 1e-6 * np.abs(w))


@pytest.mark.parametrize("args,match", [
    (["--out=x.banx"], "--workdir is required"),
    (["--workdir=.", "--out=x.banx", "--dtype=bf16"], "--dtype=bf16 is unknown"),
    (["--workdir=.", "--out=x.banx", "--group=8"], "only means something with --dtype=int8"),
    (["--workdir=.", "--out=/nonexistent/dir/x.banx"], "does not exist; create it first"),
    (["--workdir=/nonexistent/run", "--out=x.banx"], "is not a folder"),
])
def test_bad_flags_are_one_error_line(args, match):
  code, errors, stderr = _export(*args)
  assert code == 2 and len(errors) == 1 and match in errors[0], stderr[-2000:]


def test_a_workdir_without_a_checkpoint_is_one_error_line(tmp_path):
  with open(os.path.join(TRAINED, "config.json")) as f:
    (tmp_path / "config.json").write_text(f.read())
  code, errors, stderr = _export(f"--workdir={tmp_path}", f"--out={tmp_path / 'm.banx'}")
  assert code == 2 and len(errors) == 1 and "no checkpoints" in errors[0], stderr[-2000:]
  assert not (tmp_path / "m.banx").exists()
