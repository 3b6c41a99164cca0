"""Mutated and truncated copies of real `.banx` files: each serves, or is refused in one line.

The variants run in a child process (`fuzz_child.py`) with capped memory and a time limit per
variant, so a crash of the interpreter fails this test instead of killing pytest.
"""

import collections
import json
import os
import struct
import subprocess
import sys

import pytest

from ban_jax import models
from tests.runtime.exports import random_params, small_config, write_banx

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD = os.path.join(REPO, "tests", "runtime", "fuzz_child.py")
COUNT = 500   # variants per exported file; three files: 1,500 in all


def _export(tmp_path, preset, dtype, **model):
  config = small_config(preset, **model)
  net = models.get_model(config.model, 259)
  return write_banx(tmp_path / f"{preset}_{dtype}.banx", config, net, random_params(net),
                    dtype=dtype)


def _fuzz(base, seed, count, workdir):
  out = subprocess.run([sys.executable, CHILD, base, str(seed), str(count), str(workdir)],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                       text=True, timeout=600)
  lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  starts = {r["start"]: r["mutation"] for r in lines if "start" in r}
  done = {r["done"]: r for r in lines if "done" in r}
  if out.returncode != 0:
    last = max(starts)
    pytest.fail(f"the child died (exit {out.returncode}) on variant {last}: {starts[last]}\n"
                f"{out.stderr[-2000:]}")
  assert out.stderr.strip() == "", out.stderr[-2000:]   # nothing printed beside the outcomes
  assert sorted(done) == list(range(count))
  return starts, done


@pytest.mark.parametrize("preset,dtype,model,seed", [
    ("default", "float32", {}, 0),                    # inverse_square, tagging, power law
    ("ban", "int8", {"tie_embeddings": False, "attention": "gravity"}, 1),  # scales, logits
    ("transformer", "float16", {}, 2),
], ids=["default_f32", "ban_int8", "transformer_f16"])
def test_every_variant_serves_or_is_refused_in_one_line(tmp_path, preset, dtype, model, seed):
  base = _export(tmp_path, preset, dtype, **model)
  starts, done = _fuzz(base, seed=seed, count=COUNT, workdir=tmp_path)
  crashes = [(starts[i], r["traceback"]) for i, r in done.items() if r["outcome"] == "crash"]
  assert not crashes, f"{len(crashes)} variants crashed; the first: {crashes[0]}"
  outcomes = collections.Counter(r["outcome"] for r in done.values())
  for r in done.values():
    if r["outcome"] == "refused":
      assert r["message"] and "\n" not in r["message"], r
  # Both kinds occur: the mutations reach the checks and also leave servable files.
  assert outcomes["refused"] > COUNT // 4 and outcomes["ok"] > COUNT // 20, outcomes


def _edit(data: bytes, change) -> bytes:
  """`data` with its header changed by `change(header)`, padded to keep the data in place."""
  from tests.runtime import fuzz_child  # pylint: disable=g-import-not-at-top
  magic, version, length = fuzz_child._prefix(data)
  head = json.loads(data[16:16 + length])
  change(head)
  text = json.dumps(head).encode()
  if len(text) > length:   # room for longer numbers: the run's config is only a record
    text = json.dumps(dict(head, config={})).encode()
  return struct.pack("<4sIQ", magic, version, length) + text.ljust(length) + data[16 + length:]


def _tensor(name, **fields):
  return lambda h: h["tensors"][name].update(fields)


def _version(v):
  return lambda data: data[:4] + struct.pack("<I", v) + data[8:]


# The failures the issue measured, and the version rule, through the command line.
NAMED = [
    ("dtype_object", lambda d: _edit(d, _tensor("final_norm/scale", dtype="object")),
     "tensor final_norm/scale dtype='object' is not one of"),
    ("dtype_float22", lambda d: _edit(d, _tensor("embed/embedding", dtype="float22")),
     "dtype='float22' is not one of"),
    ("huge_shape", lambda d: _edit(d, _tensor("embed/embedding", shape=[2 ** 40, 2 ** 40])),
     "is not an integer in"),
    ("huge_offset", lambda d: _edit(d, _tensor("embed/embedding", offset=2 ** 62)),
     "embed/embedding offset"),
    ("past_the_end", lambda d: _edit(d, _tensor("embed/embedding", shape=[259 * 4, 32])),
     "runs past the end"),
    ("shape_not_the_config", lambda d: _edit(d, _tensor("final_norm/scale", shape=[16])),
     "the model config gives [32]"),
    ("width_absurd", lambda d: _edit(d, lambda h: h["model"].update(width=10 ** 9)),
     "model width=1000000000 is not an integer"),
    ("newer_version", _version(2),
     "is .banx version 2, newer than this ban_jax reads (version 1): upgrade ban_jax"),
    ("older_version", _version(0),
     "is .banx version 0, older than this ban_jax reads (version 1): export the run again"),
]


@pytest.mark.parametrize("name,damage,message", NAMED, ids=[n for n, _, _ in NAMED])
def test_named_damage_is_one_error_line(tmp_path, name, damage, message):
  base = _export(tmp_path, "default", "float32")
  with open(base, "rb") as f:
    data = f.read()
  path = tmp_path / f"{name}.banx"
  path.write_bytes(damage(data))
  out = subprocess.run([sys.executable, "-m", "ban_jax.runtime", f"--model={path}",
                        "--prompt=The", "--length=2"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr[-2000:]
  assert message in out.stderr, out.stderr
