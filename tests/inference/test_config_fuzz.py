"""A workdir's config.json, damaged 1,000 ways: every reader answers with one UserError line.

`trained.load` (generation, evaluation, export) and `workdir.check_resumable` (a resumed
training run) read it. The workdir has no checkpoints, so a config that survives the damage ends
in the "no checkpoints" error: any exception other than a UserError is a failure.
"""

import copy
import json
import random
import time

import pytest

from ban_jax import formats
from ban_jax.errors import UserError
from ban_jax.inference import trained
from ban_jax.training import workdir as workdir_lib
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
