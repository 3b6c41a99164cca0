"""What a `.banx` header must say before anything in the file is mapped or computed.

A `.banx` file is meant to be copied around and shared, so its header is untrusted input: a
mutated dtype string reached NumPy (a traceback, or with "object" a segmentation fault), a huge
shape or offset reached `np.memmap`. Every field the runtime reads is checked here against the
format (types, ranges, dtypes from an allow-list) and the file (every tensor inside it), and
every tensor the model config implies must be present with exactly the shape the config gives.
A file that passes reads only inside itself, and its arrays are bounded by its size; the
caches the runtime allocates are bounded by `MAX_SEQ_LEN` and the user's `--kv_budget`.
"""

from __future__ import annotations

import math

MAX_NDIM = 8
MAX_NAME = 512
MAX_SEQ_LEN = 1 << 20     # the default cache budget is the training length: bound its memory
MAX_DIM = 1 << 24         # widths, heads, vocabulary: far beyond any model a file can hold
MAX_STEPS = 10_000        # attractor iterations per token
FLOAT32_MAX = 3.4e38
ATTENTION_KINDS = ("dot", "gravity", "inverse_square")
POSITIONAL = ("rope", "power_law", "alibi", "none")
ROUTING = ("scale", "straight_through")
_ITEMSIZE = {"float32": 4, "float16": 2, "int8": 1}


ALIGN = 64  # banx.ALIGN: tensors start on these boundaries


MAX_SHOWN = 80            # characters of a file's value quoted in a message


class Bad(Exception):
  """A header field that fails its check; banx turns it into a BanxError."""


def show(value) -> str:
  """`value` as it may appear in a one-line message: repr (control characters escaped), cut
  to MAX_SHOWN characters. A file's strings and lists reach messages only through this."""
  try:
    text = repr(value) if not isinstance(value, (list, dict)) else _short_repr(value)
  except ValueError:                     # an int past Python's digit limit for str()
    text = f"<{type(value).__name__} too large to print>"
  return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN - 5]}...({len(text)} chars)"


def show_name(name: str) -> str:
  """A tensor name as is when it is printable and short, else `show(name)`."""
  return name if name.isprintable() and len(name) <= MAX_SHOWN else show(name)


def _short_repr(value) -> str:
  # A list of a million sizes must not be turned into a string whole first.
  items = value[:16] if isinstance(value, list) else list(value.items())[:16]
  text = repr(items)
  if len(value) > 16:
    text = f"{text[:-1]}, ... {len(value)} items{text[-1]}"
  return text


def _int(value, what, lo=1, hi=MAX_DIM) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
    raise Bad(f"{what}={show(value)} is not an integer in [{lo}, {hi}]")
  return value


def _float(value, what, positive=False) -> float:
  """A number the runtime uses as float32: finite there too."""
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not math.isfinite(value) or abs(value) > FLOAT32_MAX):
    raise Bad(f"{what}={show(value)} is not a finite float32 number")
  if positive and value <= 0:
    raise Bad(f"{what}={show(value)} is not positive")
  return float(value)


def _choice(value, what, choices):
  if not isinstance(value, str) or value not in choices:
    raise Bad(f"{what}={show(value)} is not one of {choices}")
  return value


def _dict(value, what) -> dict:
  if not isinstance(value, dict):
    raise Bad(f"{what} is not a JSON object")
  return value


def _fail(path, reason):
  """The one-line message for a damaged header (callers raise it as banx.BanxError)."""
  raise Bad(f"{path} has a damaged or foreign header ({reason}); copy the file again or "
            "export the run again with python -m ban_jax.export.") from None


def _block(e, what, data_start, size, dtype=None) -> tuple[str, tuple, int, int]:
  """(dtype, shape, bytes, offset) of one stored array, checked to lie inside the data
  section."""
  e = _dict(e, what)
  dtype = _choice(e.get("dtype", dtype), f"{what} dtype", tuple(_ITEMSIZE))
  shape = e.get("shape")
  if not isinstance(shape, list) or len(shape) > MAX_NDIM:
    raise Bad(f"{what} shape {show(shape)} is not a list of at most {MAX_NDIM} sizes")
  shape = tuple(_int(n, f"{what} shape", lo=0, hi=size) for n in shape)
  nbytes = math.prod(shape) * _ITEMSIZE[dtype]
  offset = _int(e.get("offset"), f"{what} offset", lo=data_start, hi=size)
  if offset % ALIGN:
    raise Bad(f"{what} offset {offset} is not {ALIGN}-byte aligned")
  if offset + nbytes > size:
    raise Bad(f"{what} ({nbytes} bytes at {offset}) runs past the end of the "
               f"{size}-byte file")
  return dtype, shape, nbytes, offset


def _disjoint(blocks: list[tuple[int, int, str]]):
  """Refuses blocks that share bytes: tensors aliasing one block would let a small file claim
  gigabytes of weights (and the runtime allocate them), past the bound of the file's size."""
  blocks = sorted(b for b in blocks if b[1] > 0)
  for (start, n, what), (next_start, _, other) in zip(blocks, blocks[1:]):
    if next_start < start + n:
      raise Bad(f"{other} overlaps {what} (bytes {next_start} and {start}..{start + n}): "
                "every tensor must have its own bytes")


def header(head, *, size: int, data_start: int, path: str) -> dict:
  """Checks the fields of a parsed header against the format and the file; returns it."""
  try:
    head = _dict(head, "the header")
    _int(head.get("file_size"), "file_size", lo=0, hi=1 << 62)
    tensors = _dict(head.get("tensors"), "tensors")
    blocks = []
    for name, e in tensors.items():
      if len(name) > MAX_NAME:
        raise Bad(f"a tensor name is {len(name)} characters long")
      shown = show_name(name)
      dtype, shape, nbytes, offset = _block(e, f"tensor {shown}", data_start, size)
      blocks.append((offset, nbytes, f"tensor {shown}"))
      scale = e.get("scale")
      if (scale is None) != (dtype != "int8"):
        raise Bad(f"tensor {shown} is {dtype} {'without' if scale is None else 'with'} scales")
      if scale is not None:
        _, scale_shape, nbytes, offset = _block(scale, f"scales of {shown}", data_start, size,
                                                "float32")
        blocks.append((offset, nbytes, f"the scales of {shown}"))
        if _dict(scale, "").get("dtype", "float32") != "float32":
          raise Bad(f"the scales of {shown} are not float32")
        if len(scale_shape) != len(shape) or any(
            s < 1 or (s != 1 and n % s) for n, s in zip(shape, scale_shape)):
          raise Bad(f"the scales of {shown} {list(scale_shape)} do not fit its shape "
                     f"{list(shape)}")
    _disjoint(blocks)
  except Bad as e:
    _fail(path, e)
  return head


def _expected(cfg: dict, vocab: int) -> dict[str, tuple]:
  """{tensor name: shape} of every weight the runtime reads for this model config."""
  kind = _choice(cfg.get("kind"), "model kind", ("ban", "transformer"))
  width = _int(cfg.get("width"), "model width")
  depth = _int(cfg.get("depth"), "model depth", hi=4096)
  att = _dict(cfg.get("attention"), "model attention")
  heads = _int(att.get("num_heads"), "num_heads")
  kv = _int(att.get("num_kv_heads") or heads, "num_kv_heads")
  if heads % kv:
    raise Bad(f"num_heads={heads} is not a multiple of num_kv_heads={kv}")
  head_dim = _int(att.get("head_dim") or width // heads, "head_dim")
  score = _choice(att.get("kind"), "attention kind", ATTENTION_KINDS)
  positional = _choice(att.get("positional"), "positional", POSITIONAL)
  if not isinstance(att.get("tagging"), bool):
    raise Bad(f"tagging={show(att.get('tagging'))} is not true or false")
  _float(att.get("eps"), "eps", positive=True)
  if positional == "rope":
    _float(att.get("rope_max_wavelength"), "rope_max_wavelength", positive=True)
    if head_dim % 2:
      raise Bad(f"head_dim={head_dim} is odd: rope rotates pairs of features and needs an even "
                "head_dim")
  ban = kind == "ban"
  prefix, name = ("layer_{}/attention", "layer_{}/attention_norm") if ban else (
      "block_{}/attn", "block_{}/attn_norm")
  per_layer = {
      f"{prefix}/query/kernel": (width, heads, head_dim),
      f"{prefix}/key/kernel": (width, kv, head_dim),
      f"{prefix}/value/kernel": (width, kv, head_dim),
      f"{prefix}/out/kernel": (heads, head_dim, width),
      f"{name}/scale": (width,),
  }
  if att["tagging"]:
    per_layer[f"{prefix}/tagging/mass/kernel"] = (width, 1)
    per_layer[f"{prefix}/tagging/mass/bias"] = (1,)
  if score == "gravity":
    per_layer[f"{prefix}/gravity_mass_log"] = (heads,)
  if positional == "power_law":
    per_layer[f"{prefix}/power_law/power"] = (heads,)
    per_layer[f"{prefix}/power_law/scale"] = (heads,)
  if ban:
    a = _dict(cfg.get("attractor"), "model attractor")
    branches = _int(a.get("num_branches"), "num_branches", hi=4096)
    d = _int(a.get("branch_width") or width, "branch_width")
    _int(a.get("steps"), "attractor steps", lo=0, hi=MAX_STEPS)
    for field in ("alpha", "gamma", "threshold", "cap"):
      _float(a.get(field), f"attractor {field}")
    _choice(a.get("routing"), "routing", ROUTING)
    at = "layer_{}/attractor"
    per_layer.update({
        f"{at}/branches/kernel": (branches, width, d), f"{at}/branches/bias": (branches, d),
        f"{at}/salience/vector": (d,), f"{at}/salience/bias": (branches,),
        f"{at}/attractor/w": (d, d), f"{at}/out/kernel": (d, width),
        "layer_{}/attractor_norm/scale": (width,)})
    if branches > 1:
      per_layer[f"{at}/gate/proj/kernel"] = (d, d)
  else:
    mlp = _int(cfg.get("mlp_dim"), "mlp_dim")
    per_layer.update({"block_{}/mlp/up/kernel": (width, mlp),
                      "block_{}/mlp/down/kernel": (mlp, width),
                      "block_{}/mlp_norm/scale": (width,)})
  out = {"embed/embedding": (vocab, width), "final_norm/scale": (width,)}
  if ban and not cfg.get("tie_embeddings", True):
    out["logits/kernel"] = (width, vocab)
  for i in range(depth):
    out.update({k.format(i): v for k, v in per_layer.items()})
  return out


def model(head: dict, path: str):
  """Checks the model config, the vocabulary, the tokenizer and every tensor's shape."""
  try:
    cfg = _dict(head.get("model"), "model")
    vocab = _int(head.get("vocab_size"), "vocab_size")
    _int(head.get("seq_len"), "seq_len", hi=MAX_SEQ_LEN)
    tok = _dict(head.get("tokenizer"), "tokenizer")
    if tok.get("kind") == "bytes":
      specials = _int(tok.get("specials"), "tokenizer specials", lo=0)
      if specials + 256 > vocab:
        raise Bad(f"byte tokens need {specials + 256} ids, the vocabulary has {vocab}")
      for field in ("bos_id", "eos_id"):
        _int(tok.get(field), f"tokenizer {field}", lo=0, hi=vocab - 1)
      if tok.get("vocab_size") != vocab:
        raise Bad(f"the tokenizer's vocab_size {show(tok.get('vocab_size'))} is not {vocab}")
    tensors = head["tensors"]
    for name, shape in _expected(cfg, vocab).items():
      if name not in tensors:
        raise Bad(f"tensor {name} is missing")
      if tuple(tensors[name]["shape"]) != shape:
        raise Bad(f"tensor {name} is {show(tensors[name]['shape'])}, the model config gives "
                   f"{list(shape)}")
  except Bad as e:
    _fail(path, e)
