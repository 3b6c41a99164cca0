"""A trained run as a `.banx` file for the NumPy runtime: which weights are quantised, and how.

`export(run, path, dtype)` writes a `ban_jax.inference.trained.TrainedRun`; `encode` and
`header` are its parts, for callers holding a model and parameters without a run folder
(tests, benchmarks). The CLI is `python -m ban_jax.export`.
"""

import dataclasses
import os

import numpy as np

from ban_jax.runtime import banx
from ban_jax.runtime import quantize


def contracted_axes(name: str, shape) -> tuple[int, ...]:
  """The axes a weight's matmul sums over (its int8 scales are shared along them).

  Flax kernels are [inputs..., outputs...] with one input axis, except the attention output
  projection ([heads, head_dim, width]: two), the BAN's branch kernels ([N, width, d]: the
  middle one) and the embedding, whose rows are both looked up and (tied) output channels.
  """
  if name.endswith("embed/embedding"):
    return (len(shape) - 1,)
  if name.endswith("branches/kernel"):
    return (1,)
  if name.endswith("/out/kernel") and len(shape) == 3:
    return (0, 1)
  return (0,)


def flatten(params, prefix: str = "") -> dict[str, np.ndarray]:
  """{"layer_0/attention/query/kernel": float32 array, ...} from a nested parameter dict."""
  out = {}
  for key, value in params.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) or hasattr(value, "items"):
      out.update(flatten(value, name + "/"))
    else:
      out[name] = np.asarray(value, np.float32)
  return out


def encode(params, dtype: str, group: int = 0) -> dict:
  """{name: (stored array, scale or None)} for `banx.write`: matrices in `dtype`, the rest
  float32."""
  if dtype not in quantize.DTYPES:
    raise ValueError(f"dtype={dtype!r} is not one of {quantize.DTYPES}.")
  out = {}
  for name, w in flatten(params).items():
    small = w.ndim < 2 or w.size < quantize.MIN_QUANTISED_SIZE
    if dtype == "float32" or small:
      out[name] = (w, None)
    elif dtype == "float16":
      out[name] = (w.astype(np.float16), None)
    else:
      out[name] = quantize.quantize_int8(w, contracted_axes(name, w.shape), group)
  return out


def header(config, model_config, tokenizer, *, step: int, dtype: str, group: int = 0) -> dict:
  """The `.banx` header of a run: model, vocab_size, seq_len, tokenizer, config, dtype."""
  kind = "ban" if hasattr(model_config, "attractor") else "transformer"
  if getattr(tokenizer, "name", "") == "bytes":
    description = {"kind": "bytes", "specials": int(tokenizer.num_specials),
                   "bos_id": int(tokenizer.bos_id), "eos_id": int(tokenizer.eos_id),
                   "vocab_size": int(tokenizer.vocab_size)}
  else:
    description = {"kind": "sentencepiece", "vocab_size": int(tokenizer.vocab_size)}
  return {"model": dict(dataclasses.asdict(model_config), kind=kind),
          "vocab_size": int(tokenizer.vocab_size), "seq_len": int(config.data.seq_len),
          "tokenizer": description, "config": config.to_dict(), "dtype": dtype,
          "group": int(group), "step": int(step)}


def export(run, out: str, dtype: str = "float32", group: int = 0) -> int:
  """Writes a `TrainedRun` (ban_jax.inference.trained) to `out`; returns the file's size."""
  tensors = encode(run.params, dtype, group)
  banx.write(out, header(run.config, run.model.config, run.tokenizer, step=run.step,
                         dtype=dtype, group=group), tensors)
  return os.path.getsize(out)
