"""Prefill and incremental decoding against a bounded key/value cache, and teacher-forced scoring.

`Decoder(model, spec)` jits three functions once per model and cache spec:

- `prefill(params, tokens)`: a prompt [batch, P] from position 0 in one pass; returns its
  logits and the cache (every layer's slots, `ban_jax.ops.kv_cache`). A prompt longer than the
  budget is cut down by the policy at once.
- `step(params, cache, tokens, positions, surprisal)`: the next token(s); O(slots) per token.
- `score(params, tokens)`: feeds a stream one token at a time through the cache (a `lax.scan`)
  and returns every token's negative log-likelihood: bits/byte under a bounded cache.
- `predict(params, tokens)`: the same stream's teacher-forced argmax predictions: exact-match
  recall under a bounded cache (one compiled scan serves both).

Each token's surprisal under the model (−log P from the previous step's logits) is stored with
it in every layer's cache, for the "gravity" policy; a prompt's tokens get theirs from the
prefill logits once they are known (`kv_cache` decisions inside a prompt longer than the budget
are taken without it).
"""

import jax
import jax.numpy as jnp

from ban_jax.ops import kv_cache as kv_ops


def _is_slots(node) -> bool:
  return isinstance(node, dict) and "position" in node and "surprisal" in node


def set_prompt_surprisal(cache, surprisal):
  """Writes a prompt's surprisal [batch, P] into every cached slot holding a prompt position."""
  def fix(node):
    if not _is_slots(node):
      return {k: fix(v) for k, v in node.items()} if isinstance(node, dict) else node
    pos = node["position"]
    held = (pos >= 0) & (pos < surprisal.shape[1])
    values = jnp.take_along_axis(surprisal, jnp.clip(pos, 0, surprisal.shape[1] - 1), axis=1)
    return dict(node, surprisal=jnp.where(held, values, node["surprisal"]))
  return fix(cache)


def next_surprisal(logits, tokens):
  """−log softmax(logits)[tokens]: logits float [batch, vocab], tokens int [batch] -> [batch]."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_p, tokens[:, None].astype(jnp.int32), axis=-1)[:, 0]


def prompt_surprisal(logits, tokens):
  """Surprisal of every prompt token after the first (which has no prediction: 0)."""
  log_p = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  read = -jnp.take_along_axis(log_p, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.concatenate([jnp.zeros_like(read[:, :1]), read], axis=1)


class Decoder:
  """Jitted prefill / step / score for one model and one `KVSpec`."""

  def __init__(self, model, spec: kv_ops.KVSpec):
    self.model, self.spec = model, spec

    def apply(params, cache, tokens, positions, surprisal):
      variables = {"params": params} if cache is None else {"params": params, "cache": cache}
      logits, state = model.apply(variables, tokens, positions=positions, kv=spec,
                                  token_surprisal=surprisal, deterministic=True,
                                  mutable=["cache"])
      return logits, state["cache"]

    def prefill(params, tokens):
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
      logits, cache = apply(params, None, tokens, positions, None)
      return logits, set_prompt_surprisal(cache, prompt_surprisal(logits, tokens))

    def stream(params, tokens):
      logits, cache = prefill(params, tokens[:, :1])

      def body(carry, token_and_position):
        cache, last = carry
        token, position = token_and_position
        nll = next_surprisal(last, token)
        guess = jnp.argmax(last, axis=-1).astype(jnp.int32)
        out, cache = apply(params, cache, token[:, None], position[:, None], nll[:, None])
        return (cache, out[:, 0]), (nll, guess)

      b, n = tokens.shape
      positions = jnp.broadcast_to(jnp.arange(1, n, dtype=jnp.int32), (b, n - 1))
      _, (nll, guess) = jax.lax.scan(body, (cache, logits[:, 0]),
                                     (tokens[:, 1:].T, positions.T))
      return nll.T, guess.T

    # The traceable step, for callers that fuse it with more work under their own jit.
    self.apply = apply
    self._apply = jax.jit(apply, donate_argnums=(1,))
    self._prefill = jax.jit(prefill)
    self._stream = jax.jit(stream)

  @property
  def step_fn(self):
    """The jitted (params, cache, tokens, positions, surprisal) -> (logits, cache) of `step`,
    for lowering ahead of time (`ban_jax.training.aot`)."""
    return self._apply

  @property
  def prefill_fn(self):
    """The jitted (params, tokens) -> (logits, cache) of `prefill`."""
    return self._prefill

  def prefill(self, params, tokens):
    """tokens int [batch, P] (from position 0) -> (logits float32 [batch, P, vocab], cache)."""
    return self._prefill(params, jnp.asarray(tokens, jnp.int32))

  def step(self, params, cache, tokens, positions, surprisal=None):
    """The next tokens int [batch, L] at `positions` [batch, L] -> (logits, cache).

    `surprisal` [batch, L]: the tokens' −log P under the model (for the gravity policy).
    The cache passed in is donated (reused in place); use the one returned.
    """
    return self._apply(params, cache, jnp.asarray(tokens, jnp.int32),
                       jnp.asarray(positions, jnp.int32), surprisal)

  def score(self, params, tokens):
    """Teacher-forced NLL (nats) of tokens[:, 1:] given everything before, through the cache.

    Args:
      params: the model's parameters.
      tokens: int [batch, n], n >= 2; each row one stream from position 0.

    Returns:
      float32 [batch, n - 1].
    """
    return self._stream(params, jnp.asarray(tokens, jnp.int32))[0]

  def predict(self, params, tokens):
    """Teacher-forced argmax of tokens[:, 1:] given everything before, through the cache.

    Args:
      params: the model's parameters.
      tokens: int [batch, n], n >= 2; each row one stream from position 0.

    Returns:
      int32 [batch, n - 1]: the model's most likely token at each position, which a
      recall benchmark compares with tokens[:, 1:] where its queries are.
    """
    return self._stream(params, jnp.asarray(tokens, jnp.int32))[1]
