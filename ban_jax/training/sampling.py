"""Text generation from a trained language model."""

from absl import logging
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np


def generate(model: nn.Module, params, tokenizer, prompt: str, *, length: int, seq_len: int,
             temperature: float, rng: jax.Array) -> str:
  """Samples `length` tokens after `prompt` (truncated to fit `seq_len`); returns prompt + text.

  Each new token re-runs the model on the whole window: simple and exact for any model behind the
  factory, at O(seq_len) forward passes.
  """
  prompt_ids = np.concatenate([[tokenizer.bos_id], tokenizer.encode(prompt)]).astype(np.int32)
  prompt_ids = prompt_ids[-(seq_len - 1):]
  start = len(prompt_ids)
  steps = min(length, seq_len - start)
  buf = jnp.zeros([1, seq_len], jnp.int32).at[0, :start].set(prompt_ids)
  segment_ids = jnp.ones([1, seq_len], jnp.int32)
  positions = jnp.arange(seq_len, dtype=jnp.int32)[None]

  if steps < length:
    logging.info("sample: %d of the %d tokens asked for fit in seq_len=%d after the prompt.",
                 steps, length, seq_len)

  # params go in as an argument: closing over arrays split across hosts is not allowed.
  @jax.jit
  def run(params, buf, rng):
    def body(i, carry):
      buf, rng = carry
      logits, _ = model.apply({"params": params}, buf, segment_ids=segment_ids,
                              positions=positions, deterministic=True,
                              mutable=["diagnostics", "losses", "intermediates"])
      rng, key = jax.random.split(rng)
      nxt = jax.random.categorical(key, logits[0, i - 1] / max(temperature, 1e-6))
      return buf.at[0, i].set(nxt.astype(jnp.int32)), rng
    buf, _ = jax.lax.fori_loop(start, start + steps, body, (buf, rng))
    return buf

  out = np.asarray(multihost_utils.process_allgather(run(params, buf, rng), tiled=True))
  out = out[0, start:start + steps]
  eos = np.nonzero(out == tokenizer.eos_id)[0]
  if len(eos):
    out = out[:eos[0]]
  return prompt + tokenizer.decode(out)
