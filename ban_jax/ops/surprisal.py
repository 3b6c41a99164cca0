"""Each token's surprisal −log P(x_j | x_<j): the potential Φ of the information-mass theory."""

import math

import jax
import jax.numpy as jnp


def token_surprisal(logits, tokens, segment_ids=None, *, first: float | None = None,
                    previous=None):
  """The surprisal of every input token under next-token logits of the same window.

  Token j's surprisal is read off the prediction at j − 1: s_j = −log softmax(logits[:, j−1])
  [tokens[:, j]]. It depends on tokens[:, ≤j] only, so a key's mass built from it stays causal
  for every query i ≥ j. Position 0 and the first token of each packed document have no
  prediction in the window; they get `first`.

  Args:
    logits: float [batch, length, vocab].
    tokens: int [batch, length], the inputs the logits were computed from.
    segment_ids: optional int [batch, length]; a change of id starts a new document.
    first: the surprisal of a token without context; None: log(vocab), a uniform guess.
    previous: for a window that continues a text (decoding): (logits [batch, vocab] at the
      token before the window, continues bool [batch] or None for all rows); the first token
      of a continuing row is read off them instead of getting `first`.

  Returns:
    float32 [batch, length], >= 0.
  """
  vocab = logits.shape[-1]
  first = math.log(vocab) if first is None else first
  log_p = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  read = -jnp.take_along_axis(log_p, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
  if segment_ids is not None:
    continues = segment_ids[:, 1:] == segment_ids[:, :-1]
    read = jnp.where(continues, read, first)
  start = jnp.full(tokens.shape[:1] + (1,), first, jnp.float32)
  if previous is not None:
    prev_logits, continues = previous
    prev = -jnp.take_along_axis(jax.nn.log_softmax(prev_logits.astype(jnp.float32), axis=-1),
                                tokens[:, :1].astype(jnp.int32), axis=-1)
    start = prev if continues is None else jnp.where(continues[:, None], prev, start)
  return jnp.concatenate([start, read], axis=1)
