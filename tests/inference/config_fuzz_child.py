"""The config fuzz's child: damaged config.json beside real parameters, through `trained.load`.

    python tests/inference/config_fuzz_child.py PRESET FOLDER SEED COUNT

Exports a run of configs/wiki.py's PRESET ("tiny": the transformer; anything else: that preset
shrunk as the runtime's tests do) to FOLDER (config.json + params.msgpack, as
`trained.export` writes), then loads it with COUNT damaged config.json files: SEED >= 0 draws
them at random, SEED -1 runs the NAMED ones. With parameters beside it, a config that passes
validation reaches the model's shapes: this is where a length aborted XLA and a depth traced
for hours. Output as fuzz_child.py's in tests/runtime ({"start"}, then {"done", "outcome"}).
"""

import copy
import json
import os
import random
import signal
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

NASTY = [None, True, 0, -1, 2 ** 62, 2 ** 40, 10 ** 6, 1e308, float("nan"), "", "x", "spm",
         "bytes", "ban", [], {}, [1, 2], "float99", 0.5]
# What the first fuzz of this path met: an abort, an out-of-memory, hours of tracing, and
# exceptions from inside JAX's tracing.
NAMED = [("data.seq_len", 2 ** 62), ("data.seq_len", 2 ** 40), ("model.num_layers", 2 ** 40),
         ("model.num_layers", 10 ** 6), ("model.head_dim", 2 ** 62), ("model.num_heads", 2 ** 62),
         ("model.num_branches", 2 ** 62), ("model.attractor_steps", 10 ** 6),
         ("model.cap", float("nan")), ("model.unroll", ""), ("model.init_scale", [])]


def _export(preset, folder):
  from ban_jax import config_validation, models  # pylint: disable=g-import-not-at-top
  from ban_jax.data import sources  # pylint: disable=g-import-not-at-top
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  from configs import wiki  # pylint: disable=g-import-not-at-top
  from tests.runtime.exports import small_config  # pylint: disable=g-import-not-at-top
  config = wiki.get_config("tiny") if preset == "tiny" else small_config(preset)
  tokenizer = sources.make_tokenizer(config.data)
  model = models.get_model(config_validation.validate(config), tokenizer.vocab_size)
  tokens = jnp.zeros([1, 8], jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.PRNGKey(0)}, tokens, segment_ids=jnp.ones_like(tokens),
      positions=jnp.zeros_like(tokens), deterministic=True))["params"]
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  trained.export(trained.TrainedRun(config=config, model=model, params=params,
                                    tokenizer=tokenizer, step=1, workdir=folder), folder)
  with open(os.path.join(folder, "config.json")) as f:
    return json.load(f)


def _leaves(node, path=()):
  if isinstance(node, dict):
    for k, v in node.items():
      yield from _leaves(v, path + (k,))
  yield path


def _damaged(saved, rng):
  """(a config with one field changed, what changed)."""
  head = copy.deepcopy(saved)
  path = rng.choice([p for p in _leaves(head) if p and p[0] in ("model", "data", "train")])
  node = head
  for key in path[:-1]:
    node = node[key]
  old = node[path[-1]]
  if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
    value = rng.choice([old * 2, old + 1, old - 1, old // 2, old * 1000, 2 ** 20 + 1])
  else:
    value = rng.choice(NASTY)
  node[path[-1]] = value
  return head, f"{'.'.join(path)} -> {value!r}"[:120]


def _named(saved, i):
  head = copy.deepcopy(saved)
  dotted, value = NAMED[i]
  block, field = dotted.split(".")
  head[block][field] = value
  return head, f"{dotted} -> {value!r}"


def _timeout(*_):
  raise TimeoutError("variant took more than 60 s")


def main():
  preset, folder, seed, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
  from ban_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  saved = _export(preset, folder)
  rng = random.Random(seed)
  signal.signal(signal.SIGALRM, _timeout)
  for i in range(count):
    head, what = _named(saved, i) if seed < 0 else _damaged(saved, rng)
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump(head, f)
    print(json.dumps({"start": i, "mutation": what}), flush=True)
    start = time.perf_counter()
    signal.alarm(60)
    try:
      trained.load(folder)
      result = {"outcome": "ok"}
    except UserError as e:
      result = {"outcome": "refused", "message": str(e)}
    except BaseException:  # pylint: disable=broad-except
      result = {"outcome": "crash", "traceback": traceback.format_exc()[-2000:]}
    finally:
      signal.alarm(0)
    result["seconds"] = round(time.perf_counter() - start, 3)
    print(json.dumps({"done": i, **result}), flush=True)


if __name__ == "__main__":
  main()
