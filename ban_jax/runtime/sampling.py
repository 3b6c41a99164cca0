"""Sampling as `ban_jax.inference.generate` does it (temperature, top-k, nucleus), in NumPy.

Greedy decoding (temperature 0) gives the JAX path's tokens; sampled text follows the same
distribution but NumPy's generator, not JAX's, draws from it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import cache as cache_lib


def filter_logits(logits, *, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """`inference.generate.filter_logits` for one row: float [vocab] -> float32 [vocab].

  Rescaled by 1/temperature; outside the top-k and the nucleus (the smallest set whose
  probability reaches top_p; a token stays if the mass strictly before it is below top_p) -inf.
  """
  z = np.asarray(logits, np.float32) / np.float32(temperature)
  if top_k:
    kth = np.sort(z)[-top_k]
    z = np.where(z < kth, -np.inf, z)
  if top_p < 1.0:
    order = np.argsort(-z, kind="stable")
    sorted_z = z[order]
    probs = np.exp(sorted_z - sorted_z[0])
    probs = probs / probs.sum()
    before = np.cumsum(probs) - probs
    keep = np.zeros(z.shape, bool)
    keep[order] = before < top_p
    z = np.where(keep, z, -np.inf)
  return z.astype(np.float32)


def choose(logits, rng: np.random.Generator, *, temperature: float, top_k: int = 0,
           top_p: float = 1.0) -> int:
  """The next token from logits [vocab]: argmax at temperature 0, else a draw."""
  if temperature <= 0:
    return int(np.argmax(logits))
  z = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
  # float64: Generator.choice checks that p sums to 1 more tightly than float32 rounds.
  p = np.exp(z.astype(np.float64) - np.max(z))
  return int(rng.choice(z.shape[0], p=p / p.sum()))


def generate(model, prompt_ids, *, length: int, spec: cache_lib.Spec, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_id: int | None = None,
             on_token: Callable[[int], None] | None = None) -> np.ndarray:
  """Up to `length` tokens after `prompt_ids` (int [P], P >= 1) through a cache of `spec`.

  As `ban_jax.inference.generate.generate`: stops after `eos_id`, calls `on_token` with each
  new id as soon as it exists. Returns int32 [n], n <= length.
  """
  prompt = np.asarray(prompt_ids, np.int64)
  if spec.policy == "full" and spec.slots < prompt.shape[0] + length:
    raise ValueError(f"a full cache of {spec.slots} slots cannot hold the {prompt.shape[0]} "
                     f"prompt tokens and {length} new ones; give it at least "
                     f"{prompt.shape[0] + length} slots or choose a bounded policy.")
  # Overflow inside the model is reported once, as non-finite logits (below), not as NumPy's
  # warnings on stderr at every step.
  with np.errstate(all="ignore"):
    return _generate(model, prompt, length=length, spec=spec, temperature=temperature,
                     top_k=top_k, top_p=top_p, seed=seed, eos_id=eos_id, on_token=on_token)


def _generate(model, prompt, *, length, spec, temperature, top_k, top_p, seed, eos_id,
              on_token):
  rng = np.random.default_rng(seed)
  session = model.session(spec)
  last = session.prefill(prompt)[-1]
  out = []
  for i in range(length):
    if not np.all(np.isfinite(last)):
      # Checked here, not at load: reading every weight up front would undo the lazy map.
      raise ValueError(f"the model's logits for token {prompt.shape[0] + i} are not finite "
                       "(NaN or inf): its weights are damaged or overflow float32; export the "
                       "run again, or check that its training did not diverge.")
    token = choose(last, rng, temperature=temperature, top_k=top_k, top_p=top_p)
    out.append(token)
    if on_token is not None:
      on_token(token)
    if eos_id is not None and token == eos_id:
      break
    last = session.step(token)
  return np.asarray(out, np.int32)
