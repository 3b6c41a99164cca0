"""A workdir's config.json, damaged 1,000 ways: every reader answers with one UserError line.

`trained.load` (generation, evaluation, export) and `workdir.check_resumable` (a resumed
training run) read it. The first test's workdir has no checkpoints, so a config that survives
the damage ends in the "no checkpoints" error: any exception other than a UserError is a
failure. The later ones put parameters beside it (an exported run), so that a config that passes
validation goes on to the model's shapes, in a child process (`config_fuzz_child.py`).
"""

import collections
import copy
import json
import os
import random
import subprocess
import sys
import time

import pytest

from ban_jax import formats
from ban_jax.errors import UserError
from ban_jax.inference import trained
from ban_jax.training import workdir as workdir_lib
from tests.inference import config_fuzz_child
from configs import wiki

COUNT = 1000
NASTY = [None, True, 0, -1, 2 ** 63, 1e308, float("nan"), "", "x", "spm", "bytes", "ban", [],
         {}, [1, 2], {"a": 1}, "float99"]


def _leaves(node, path=()):
  if isinstance(node, dict):
    for k, v in node.items():
      yield from _leaves(v, path + (k,))
  yield path


def _variant(saved: dict, text: str, rng: random.Random) -> str:
  kind = rng.choice(["field"] * 7 + ["bytes", "truncate", "top"])
  if kind == "truncate":
    return text[:rng.randrange(len(text))]
  if kind == "bytes":
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
      chars[rng.randrange(len(chars))] = chr(rng.randrange(32, 127))
    return "".join(chars)
  if kind == "top":
    return json.dumps(rng.choice([[], 3, "config", None, {"format_version": 99}]))
  head = copy.deepcopy(saved)
  path = rng.choice([p for p in _leaves(head) if p])
  node = head
  for key in path[:-1]:
    node = node[key]
  if rng.random() < 0.15:
    del node[path[-1]]
  else:
    node[path[-1]] = rng.choice(NASTY)
  return json.dumps(head)


def test_damaged_config_json_is_one_error_line(tmp_path, tiny_config):
  config = tiny_config()
  saved = formats.stamp("workdir", config.to_dict())
  text = json.dumps(saved)
  rng = random.Random(0)
  path = tmp_path / "config.json"
  outcomes = {"refused": 0, "resumable": 0}
  start = time.perf_counter()
  for i in range(COUNT):
    path.write_text(_variant(saved, text, rng))
    for read in (lambda: trained.load(str(tmp_path)),
                 lambda: workdir_lib.check_resumable(str(tmp_path), config)):
      try:
        read()
        outcomes["resumable"] += 1   # only check_resumable can pass: load needs checkpoints
      except UserError as e:
        assert str(e) and "\n" not in str(e), (i, str(e))
        outcomes["refused"] += 1
      except Exception as e:  # pylint: disable=broad-except
        pytest.fail(f"variant {i} ({path.read_text()[:300]}) raised "
                    f"{type(e).__name__}: {e}")
  assert time.perf_counter() - start < 300
  assert outcomes["refused"] > COUNT and outcomes["resumable"] > COUNT // 10, outcomes


CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config_fuzz_child.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _child(tmp_path, preset, seed, count):
  """Runs config_fuzz_child.py: a crash of the interpreter (XLA aborted on one variant) fails
  the test instead of killing pytest."""
  out = subprocess.run([sys.executable, CHILD, preset, str(tmp_path / "run"), str(seed),
                        str(count)], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=REPO))
  lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  starts = {r["start"]: r["mutation"] for r in lines if "start" in r}
  done = {r["done"]: r for r in lines if "done" in r}
  if out.returncode != 0:
    last = starts[max(starts)] if starts else "the export"
    pytest.fail(f"the child died (exit {out.returncode}) on {last}\n{out.stderr[-2000:]}")
  assert sorted(done) == list(range(count))
  crashes = [(starts[i], r["traceback"]) for i, r in done.items() if r["outcome"] == "crash"]
  assert not crashes, f"{len(crashes)} variants crashed; the first: {crashes[0]}"
  for r in done.values():
    if r["outcome"] == "refused":
      assert r["message"] and "\n" not in r["message"], r
  return starts, done


def test_damaged_config_json_beside_parameters_is_one_error_line(tmp_path):
  """300 damaged config.json beside real parameters (an exported run): validation passes many,
  and these reach the model's shapes too."""
  _, done = _child(tmp_path, "tiny", seed=0, count=300)
  outcomes = collections.Counter(r["outcome"] for r in done.values())
  assert outcomes["refused"] > 30 and outcomes["ok"] > 30, outcomes
  assert max(r["seconds"] for r in done.values()) < 30


def test_the_configs_that_aborted_or_hung_are_one_error_line(tmp_path):
  starts, done = _child(tmp_path, "default", seed=-1, count=len(config_fuzz_child.NAMED))
  for i, r in done.items():
    assert r["outcome"] == "refused", (starts[i], r)
    assert r["seconds"] < 30, (starts[i], r)
