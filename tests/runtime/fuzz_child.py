"""The fuzz test's child: mutates a real `.banx` file many ways and serves each variant.

    python tests/runtime/fuzz_child.py BASE.banx SEED COUNT WORKDIR

Mutations: header fields (type-breaking and plausible values), header bytes, truncation, the
binary prefix, and rebuilds (model config fields edited, tensors regenerated at the shapes the
edited config implies, so that the arithmetic past the shape checks is reached). Runs each
variant through the runtime's command line (`ban_jax.runtime.__main__.run`: load,
tokenize, prefill, generate 2 tokens). Prints one JSON line per variant before trying it
({"start": i, "mutation": ...}) and one after ({"done": i, "outcome": "ok" | "refused",
"message": ...}); anything but a `BanxError` is printed as {"done": i, "outcome": "crash",
"traceback": ...}. A variant that kills the interpreter leaves its "start" line last. Memory is
capped (RLIMIT_AS) and each variant has 20 s.
"""

import io
import json
import os
import random
import resource
import signal
import struct
import sys
import traceback

MEMORY_LIMIT = 3 << 30
NASTY = [2 ** 62, 10 ** 30, -1, 0, 1, 7, 1e308, -1e308, 0.5, float("nan"), True, None, "",
         "float22", "object", "float64", "int64", "<f4", ">f4", "V8", "U8", "bool", "int8",
         "float16", "bytes", "ban", "transformer", "gravity", [], {}, [2 ** 40, 2 ** 40],
         [-3], [1] * 20, ["a"], {"shape": [1], "offset": 0}, "x" * 5000]


def _prefix(data):
  return struct.unpack("<4sIQ", data[:16])


def _leaves(node, path=()):
  if isinstance(node, dict):
    for k, v in node.items():
      yield from _leaves(v, path + (k,))
  elif isinstance(node, list):
    for i, v in enumerate(node):
      yield from _leaves(v, path + (i,))
  yield path


def _set(root, path, value, delete=False):
  node = root
  for key in path[:-1]:
    node = node[key]
  if delete and isinstance(node, dict):
    del node[path[-1]]
  else:
    node[path[-1]] = value


WORDS = ["dot", "gravity", "inverse_square", "rope", "power_law", "alibi", "none", "scale",
         "straight_through", "hidden", "surprisal", "float32", "float16", "int8"]


def _plausible(head, path, rng):
  """A value near the old one, of its type: edits that a check must judge, not just type."""
  node = head
  for key in path:
    node = node[key]
  if isinstance(node, bool):
    return not node
  if isinstance(node, int):
    return rng.choice([node + 1, node - 1, node * 2, node // 2, node + 64])
  if isinstance(node, float):
    return node * rng.choice([0.5, 2.0, -1.0, 1e6])
  if isinstance(node, str):
    return rng.choice(WORDS)
  return rng.choice(NASTY)


# Model fields a rebuild edits, with values a check must judge (most of them valid).
REBUILD = {
    ("kind",): ["ban", "transformer"],
    ("width",): [8, 16, 24, 32, 48],
    ("depth",): [1, 2, 3],
    ("mlp_dim",): [1, 16, 64],
    ("tie_embeddings",): [True, False],
    ("attention", "num_heads"): [1, 2, 3, 4, 8],
    ("attention", "num_kv_heads"): [1, 2, 4, None],
    ("attention", "head_dim"): [1, 3, 4, 7, 8, 16, None],
    ("attention", "kind"): ["dot", "gravity", "inverse_square"],
    ("attention", "positional"): ["rope", "power_law", "alibi", "none"],
    ("attention", "tagging"): [True, False],
    ("attention", "eps"): [1e-30, 1e-6, 0.1, 1e30],
    ("attention", "rope_max_wavelength"): [1.0, 1e4, 1e30],
    ("attractor", "num_branches"): [1, 2, 3, 5],
    ("attractor", "branch_width"): [1, 8, 32, None],
    ("attractor", "steps"): [0, 1, 3, 50],
    ("attractor", "alpha"): [0.0, 0.5, 1.0, 2.0, -1.0],
    ("attractor", "gamma"): [0.0, 1.0, 1e30],
    ("attractor", "threshold"): [-1.0, 0.0, 0.5, 1e30],
    ("attractor", "cap"): [0.0, 0.15, 1.0, 2.0],
    ("attractor", "routing"): ["scale", "straight_through"],
}
# Weight scales of a rebuilt file: ordinary, large, and past what float32 arithmetic survives.
SCALES = [0.02, 0.3, 1.0, 30.0, 1e20, 1e38]


def rebuild(data: bytes, rng: random.Random) -> tuple[bytes, str]:
  """A new file whose model config has 1-3 fields edited and whose tensors are regenerated at
  the shapes the edited config implies: it passes the shape checks, so it reaches the model's
  arithmetic (odd head sizes, extreme constants and weights), which edits of a header alone
  rarely do. A config the checks refuse keeps the old tensors (and is refused)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ban_jax.runtime import banx, checks  # pylint: disable=g-import-not-at-top
  _, _, length = _prefix(data)
  head = json.loads(data[16:16 + length])
  cfg = head["model"]
  edits = []
  for key in rng.sample(sorted(REBUILD), rng.randint(1, 3)):
    value = rng.choice(REBUILD[key])
    node = cfg
    for k in key[:-1]:
      node = node.setdefault(k, {})
    node[key[-1]] = value
    edits.append(f"{'/'.join(key)}={value}")
  scale = rng.choice(SCALES)
  try:
    shapes = checks._expected(cfg, head["vocab_size"])  # pylint: disable=protected-access
  except checks.Bad:
    shapes = None
  body = {k: v for k, v in head.items() if k not in ("tensors", "format", "version",
                                                      "file_size")}
  np_rng = np.random.default_rng(rng.randrange(2 ** 32))
  if shapes is None:
    tensors = {}
  else:
    with np.errstate(over="ignore"):          # weights x1e38 overflow to inf on purpose
      tensors = {name: ((scale * np_rng.standard_normal(shape)).astype(np.float32), None)
                 for name, shape in shapes.items()}
  tmp = f"/tmp/fuzz_rebuild_{os.getpid()}.banx"
  banx.write(tmp, body, tensors)
  with open(tmp, "rb") as f:
    out = f.read()
  os.remove(tmp)
  return out, f"rebuild {', '.join(edits)}, weights x{scale:g}"


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
  """A variant of the file and a description of what changed."""
  magic, version, length = _prefix(data)
  head_end = 16 + length
  kind = rng.choice(["field"] * 6 + ["bytes", "bytes", "truncate", "prefix", "rebuild",
                                     "rebuild"])
  if kind == "rebuild":
    return rebuild(data, rng)
  if kind == "truncate":
    cut = rng.randrange(0, len(data))
    return data[:cut], f"truncated to {cut} bytes"
  if kind == "prefix":
    field = rng.choice(["magic", "version", "length"])
    value = {"magic": lambda: (b"BANY", version, length),
             "version": lambda: (magic, rng.choice([0, 2, 2 ** 32 - 1]), length),
             "length": lambda: (magic, version, rng.choice([0, 1, length - 1, length + 1,
                                                            2 ** 63, len(data)]))}[field]()
    return struct.pack("<4sIQ", *value) + data[16:], f"prefix {field} -> {value}"
  if kind == "bytes":
    out = bytearray(data)
    spots = [rng.randrange(0, head_end) for _ in range(rng.randint(1, 4))]
    for at in spots:
      out[at] = rng.randrange(256)
    return bytes(out), f"header bytes at {spots}"
  head = json.loads(data[16:head_end])
  paths = [p for p in _leaves(head) if p and p[0] != "config"]
  # Half the edits outside the tensor table, which otherwise holds most leaves.
  if rng.random() < 0.5:
    paths = [p for p in paths if p[0] != "tensors"]
  path = rng.choice(paths)
  delete = rng.random() < 0.15
  value = rng.choice(NASTY) if rng.random() < 0.7 else _plausible(head, path, rng)
  _set(head, path, value, delete=delete)
  text = json.dumps(head).encode()
  if len(text) <= length:   # keep the data where it was: pad the header to its old length
    text = text + b" " * (length - len(text))
  body = struct.pack("<4sIQ", magic, version, len(text)) + text
  # A longer header runs into the data section: its offsets then point inside the header.
  out = body + data[len(body):] if len(body) <= head_end else body + data[head_end:]
  what = "deleted" if delete else f"-> {value!r}"[:80]
  return out, f"header {'/'.join(map(str, path))} {what}"


def _timeout(*_):
  raise TimeoutError("variant took more than 20 s")


def main():
  base, seed, count, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
  resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
  signal.signal(signal.SIGALRM, _timeout)
  from ban_jax.runtime import __main__ as cli  # pylint: disable=g-import-not-at-top
  from ban_jax.runtime import banx  # pylint: disable=g-import-not-at-top
  with open(base, "rb") as f:
    data = f.read()
  rng = random.Random(seed)
  path = os.path.join(workdir, "variant.banx")
  real_stdout = sys.stdout
  for i in range(count):
    variant, what = mutate(data, rng)
    with open(path, "wb") as f:
      f.write(variant)
    print(json.dumps({"start": i, "mutation": what}), file=real_stdout, flush=True)
    sys.stdout = io.TextIOWrapper(io.BytesIO())
    signal.alarm(20)
    try:
      cli.run(["--model", path, "--prompt", "The history", "--length", "2", "--kv_policy",
               rng.choice(["recent", "gravity", "sinks", "full"])])
      result = {"outcome": "ok"}
    except banx.BanxError as e:
      result = {"outcome": "refused", "message": str(e)}
    except BaseException:  # pylint: disable=broad-except
      result = {"outcome": "crash", "traceback": traceback.format_exc()[-2000:]}
    finally:
      signal.alarm(0)
      sys.stdout = real_stdout
    print(json.dumps({"done": i, **result}), flush=True)


if __name__ == "__main__":
  main()
