"""Sampling text from a trained model through the KV cache, token by token, as it is produced."""

from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ban_jax.inference import decode
from ban_jax.ops import kv_cache as kv_ops


def filter_logits(logits, *, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """Logits [batch, vocab] rescaled by 1/temperature, outside the top-k / nucleus set at -inf.

  Args:
    logits: float [batch, vocab].
    temperature: > 0 (0 is handled by the caller as greedy).
    top_k: keep the k most likely tokens; 0 keeps all.
    top_p: keep the smallest set of tokens whose probability reaches top_p (nucleus); 1 all.
  """
  z = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(z, top_k)[0][:, -1:]
    z = jnp.where(z < kth, -jnp.inf, z)
  if top_p < 1.0:
    order = jnp.argsort(-z, axis=-1)
    sorted_z = jnp.take_along_axis(z, order, axis=-1)
    probs = jax.nn.softmax(sorted_z, axis=-1)
    # Keep a token if the mass strictly before it is below top_p (the first always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = before < top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(z.shape[0])[:, None], order].set(
        keep_sorted)
    z = jnp.where(keep, z, -jnp.inf)
  return z


def make_sampler(decoder: decode.Decoder, *, temperature: float, top_k: int, top_p: float):
  """jit((params, cache, last_logits, rng, position) -> (token [b], logits [b, vocab], cache)).

  Draws the next token from the last logits, stores it with its surprisal under the model, and
  returns the logits that follow it: one compiled function per generation.
  """
  def sample(params, cache, last, rng, position):
    if temperature <= 0:
      token = jnp.argmax(last, axis=-1)
    else:
      z = filter_logits(last, temperature=temperature, top_k=top_k, top_p=top_p)
      token = jax.random.categorical(rng, z, axis=-1)
    token = token.astype(jnp.int32)
    surprisal = decode.next_surprisal(last, token)
    positions = jnp.full((token.shape[0], 1), position, jnp.int32)
    logits, cache = decoder.apply(params, cache, token[:, None], positions, surprisal[:, None])
    return token, logits[:, -1], cache
  return jax.jit(sample, donate_argnums=(1,))


def generate(model, params, prompt_ids, *, length: int, spec: kv_ops.KVSpec,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             rng: jax.Array | None = None, train_len: int | None = None,
             eos_id: int | None = None,
             on_token: Callable[[int], None] | None = None) -> np.ndarray:
  """Samples up to `length` tokens after `prompt_ids` through a cache of `spec`.

  Args:
    model, params: the language model and its parameters.
    prompt_ids: int [P], P >= 1 (a BOS token counts).
    length: tokens to generate.
    spec: the cache; "full" must have slots >= P + length.
    temperature, top_k, top_p: sampling (temperature 0: greedy).
    rng: PRNG key; None: key 0.
    train_len: the training window; with "full", going past it logs one warning.
    eos_id: stop after this token (it is returned); None never stops early.
    on_token: called with each new token id as soon as it exists (streaming).

  Returns:
    int32 [n] of the generated ids, n <= length.
  """
  prompt = np.asarray(prompt_ids, np.int32)[None]
  if spec.policy == "full" and spec.slots < prompt.shape[1] + length:
    raise ValueError(f"a full cache of {spec.slots} slots cannot hold the {prompt.shape[1]} "
                     f"prompt tokens and {length} new ones; give it at least "
                     f"{prompt.shape[1] + length} slots or choose a bounded policy.")
  if spec.policy == "full" and train_len and prompt.shape[1] + length > train_len:
    logging.warning("generating %d positions with a full cache, past the training window of %d: "
                    "positions there extrapolate as the model's positional kind allows.",
                    prompt.shape[1] + length, train_len)
  decoder = decode.Decoder(model, spec)
  sampler = make_sampler(decoder, temperature=temperature, top_k=top_k, top_p=top_p)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  logits, cache = decoder.prefill(params, prompt)
  last = logits[:, -1]
  out = []
  for i in range(length):
    token, last, cache = sampler(params, cache, last, jax.random.fold_in(rng, i),
                                 prompt.shape[1] + i)
    token = int(token[0])
    out.append(token)
    if on_token is not None:
      on_token(token)
    if eos_id is not None and token == eos_id:
      break
  return np.asarray(out, np.int32)


def sample_text(model, params, tokenizer, prompt: str, *, length: int, temperature: float,
                rng: jax.Array, spec: kv_ops.KVSpec | None = None,
                train_len: int | None = None) -> str:
  """prompt + the generated continuation (stopping at the end-of-document token), as text.

  `spec` None: a full cache holding the whole text (exact; past `train_len` the positions
  extrapolate, with one warning).
  """
  ids = np.concatenate([[tokenizer.bos_id], tokenizer.encode(prompt)]).astype(np.int32)
  spec = spec or kv_ops.KVSpec("full", slots=len(ids) + length)
  out = generate(model, params, ids, length=length, spec=spec, temperature=temperature, rng=rng,
                 train_len=train_len, eos_id=tokenizer.eos_id)
  if len(out) and out[-1] == tokenizer.eos_id:
    out = out[:-1]
  return prompt + tokenizer.decode(out)
