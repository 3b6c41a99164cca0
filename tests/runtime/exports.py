"""What the runtime's tests share: models exported from JAX, and the JAX decoding to match."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from ban_jax.inference import banx_export as export
from ban_jax.data import tokenizer as tokenizer_lib
from ban_jax.inference import decode
from ban_jax.runtime import banx

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Trained exports in the repository (the KV-cache study's full system and transformer).
TRAINED = {"ban": os.path.join(REPO, "bench", "results", "kv_cache", "full"),
           "transformer": os.path.join(REPO, "bench", "results", "kv_cache", "transformer")}


def small_config(preset: str, **model):
  """configs/wiki.py's `preset` with a small model (fields of config.model overridden)."""
  from configs import wiki  # pylint: disable=g-import-not-at-top
  c = wiki.get_config(preset)
  c.data.seq_len = 32
  c.model.update(dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                      dtype="float32"), **model)
  if c.model.name == "ban":
    c.model.update(num_branches=3, attractor_steps=3)
  else:
    c.model.mlp_dim = 64
  return c


def random_params(model, seed: int = 0):
  """Random parameters in the model's tree (shapes from `jax.eval_shape`: compiling the BAN's
  init costs seconds). Matrices ~ N(0, 1/fan_in), norm scales near 1, other vectors ~ N(0, 0.3²),
  so that tagging masses, gates and positional fields all vary."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 8), jnp.int32))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if leaf.ndim >= 2:
      std = 1.0 if name.endswith("embedding") else leaf.shape[0] ** -0.5
      return (std * rng.standard_normal(leaf.shape)).astype(np.float32)
    if "norm" in name:
      return (1 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    return (0.3 * rng.standard_normal(leaf.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def write_banx(path, config, model, params, dtype="float32", group=0):
  """Exports (config, model, params) with byte tokens to `path` as `ban_jax.export` does."""
  head = export.header(config, model.config, tokenizer_lib.ByteTokenizer(), step=0, dtype=dtype,
                       group=group)
  banx.write(str(path), head, export.encode(params, dtype, group))
  return str(path)


def jax_positions(cache) -> list[np.ndarray]:
  """Each layer's slot positions [S] from a JAX decoding cache, layers in order."""
  out = []
  for layer in sorted(cache, key=lambda name: int(name.rsplit("_", 1)[1])):
    (attention,) = cache[layer].values()
    out.append(np.asarray(attention["slots"]["position"][0]))
  return out


def decode_both(model, params, session, spec, prompt, steps: int):
  """Greedy decoding through the JAX Decoder and a runtime session side by side.

  Returns:
    (largest |logit difference| over the prompt and every step, JAX tokens, runtime tokens,
    the slot positions per layer of both after the last step).
  """
  decoder = decode.Decoder(model, spec)
  logits, cache = decoder.prefill(params, np.asarray(prompt, np.int32)[None])
  ours = session.prefill(prompt)
  worst = float(np.max(np.abs(np.asarray(logits[0]) - ours)))
  last, position = np.asarray(logits[0, -1]), len(prompt)
  theirs_tokens, our_tokens = [], []
  for _ in range(steps):
    token = int(np.argmax(last))
    theirs_tokens.append(token)
    our_tokens.append(int(np.argmax(session.last)))
    surprisal = decode.next_surprisal(jnp.asarray(last)[None], jnp.asarray([token]))
    out, cache = decoder.step(params, cache, [[token]], [[position]], surprisal[:, None])
    mine = session.step(token)
    last, position = np.asarray(out[0, -1]), position + 1
    worst = max(worst, float(np.max(np.abs(last - mine))))
  ours_positions = [c["position"] for c in session.caches]
  return worst, theirs_tokens, our_tokens, jax_positions(cache), ours_positions


def prompt_ids(text: str = "The history of the ") -> np.ndarray:
  """BOS and the text's byte tokens: int [1 + bytes]."""
  return np.concatenate([[1], tokenizer_lib.ByteTokenizer().encode(text)])
