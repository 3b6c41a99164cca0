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
  """`data` with its header changed by `change(header)`: padded to keep the data in place, or,
  when the header grew, with the data moved down by a multiple of the alignment and every
  offset (and the file size) moved with it."""
  from tests.runtime import fuzz_child  # pylint: disable=g-import-not-at-top
  magic, version, length = fuzz_child._prefix(data)
  head = json.loads(data[16:16 + length])
  change(head)
  text = json.dumps(head).encode()
  shift = 0
  if len(text) > length:
    shift = -(-(len(text) - length + 4096) // 64) * 64
    for e in head["tensors"].values():
      if isinstance(e, dict) and isinstance(e.get("offset"), int):
        e["offset"] += shift
      if isinstance(e, dict) and isinstance(e.get("scale"), dict):
        e["scale"]["offset"] += shift
    head["file_size"] += shift
    text = json.dumps(head).encode()
    assert len(text) <= length + shift
  return (struct.pack("<4sIQ", magic, version, length + shift) + text.ljust(length + shift)
          + data[16 + length:])


def _tensor(name, **fields):
  return lambda h: h["tensors"][name].update(fields)


def _version(v):
  return lambda data: data[:4] + struct.pack("<I", v) + data[8:]


def _alias_all(head):
  """Every tensor on the embedding's block (big enough for any of them)."""
  at = head["tensors"]["embed/embedding"]["offset"]
  for e in head["tensors"].values():
    e["offset"] = at


def _rope_odd(head):
  head["model"]["attention"].update(positional="rope", rope_max_wavelength=1e4, head_dim=7)


def _nan_weight(data: bytes) -> bytes:
  """`final_norm/scale` set to NaN in the data (the header untouched)."""
  from tests.runtime import fuzz_child  # pylint: disable=g-import-not-at-top
  _, _, length = fuzz_child._prefix(data)
  e = json.loads(data[16:16 + length])["tensors"]["final_norm/scale"]
  n = e["shape"][0] * 4
  return data[:e["offset"]] + struct.pack(f"<{n // 4}f", *[float("nan")] * (n // 4)) + data[
      e["offset"] + n:]


# The failures the issue measured, and the version rule, through the command line.
NAMED = [
    ("aliased_blocks", lambda d: _edit(d, _alias_all),
     "overlaps tensor"),
    ("rope_odd_head_dim", lambda d: _edit(d, _rope_odd),
     "head_dim=7 is odd: rope rotates pairs of features"),
    ("control_characters", lambda d: _edit(d, _tensor("final_norm/scale",
                                                      dtype="\x1b[2J\nboom")),
     r"dtype='\x1b[2J\nboom' is not one of"),
    ("huge_value", lambda d: _edit(d, _tensor("final_norm/scale", dtype="x" * 3000)),
     "...(3002 chars) is not one of"),
    ("long_list_value", lambda d: _edit(d, _tensor("final_norm/scale", shape=[1] * 1000)),
     "... 1000 items] is not a list of at most 8 sizes"),
    ("nan_weights", _nan_weight,
     "logits for token 4 are not finite (NaN or inf)"),
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
  assert len(out.stderr) < 600, out.stderr[:2000]          # values quoted cut, not whole


def _run_cli(path, limit=None):
  """The runtime's command line on `path`, under `limit` = (resource name, value) if given
  (set in the child itself: a preexec_fn would fork this multithreaded process)."""
  code = ("import resource, runpy, sys\n"
          "if sys.argv[1] != '-':\n"
          "  n = getattr(resource, sys.argv[1]); v = int(sys.argv[2])\n"
          "  resource.setrlimit(n, (v, v))\n"
          "sys.argv = ['ban_jax.runtime'] + sys.argv[3:]\n"
          "runpy.run_module('ban_jax.runtime', run_name='__main__')\n")
  name, value = limit or ("-", 0)
  return subprocess.run([sys.executable, "-c", code, name, str(value), f"--model={path}",
                         "--prompt=The", "--length=2"], cwd=REPO, capture_output=True,
                        text=True, errors="replace", timeout=120,
                        env=dict(os.environ, PYTHONPATH=REPO))


def test_thousands_of_tensors_need_one_file_descriptor(tmp_path):
  """The weights are views of one map of the file: 3,000 tensors serve under a limit of 64
  open files (a map per tensor held a descriptor each)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ban_jax.runtime import banx  # pylint: disable=g-import-not-at-top
  base = _export(tmp_path, "default", "float32")
  header = banx.read_header(base)
  weights = banx.Weights(base, header)
  tensors = {name: (np.asarray(weights.raw(name)[0]), None) for name in weights.names()}
  tensors.update({f"extra/{i}": (np.full([4], i, np.float32), None) for i in range(3000)})
  body = {k: v for k, v in header.items() if k not in ("tensors", "format", "version",
                                                        "file_size")}
  path = tmp_path / "many.banx"
  banx.write(str(path), body, tensors)
  out = _run_cli(path, ("RLIMIT_NOFILE", 64))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith("The") and out.stderr == ""


def test_a_header_too_large_to_parse_is_one_error_line(tmp_path):
  """16 MiB of `{}`s parse into ~20x their bytes of Python objects: under a memory cap that is
  a MemoryError, refused in one line rather than a traceback."""
  text = b"[" + b"{}," * ((16 << 20) // 3) + b"{}]"
  path = tmp_path / "nested.banx"
  path.write_bytes(struct.pack("<4sIQ", b"BANX", 1, len(text)) + text)
  out = _run_cli(path, ("RLIMIT_AS", 400 << 20))
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.count("\n") == 1, out.stderr[-2000:]
  assert "has a header too large to parse in the memory available" in out.stderr, out.stderr
