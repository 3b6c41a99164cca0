"""What the checks read off a language model: logits, attention, generations, curvature.

The model is any of the package's LMs (`model.apply({"params": p}, tokens)` -> logits); the
attention weights come from `SelfAttention`'s opt-in "attention_weights" collection. Queries
are equal-length rows of token ids, read as a window that starts inside a document (positions
0, 1, ..., as training windows do), so they batch.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ban_jax.diagnostics import curvature
from ban_jax.diagnostics import mass
from ban_jax.inference import decode
from ban_jax.layers.attention import WEIGHTS_COLLECTION
from ban_jax.ops import kv_cache as kv_ops


def layer_order(path):
  """Sort key of a flattened variable path: numbers inside names compare as numbers."""
  return tuple(int(p.rsplit("_", 1)[1]) if p.rsplit("_", 1)[-1].isdigit() else p for p in path)


@functools.lru_cache(maxsize=8)
def make_forward(model):
  """jit((params, tokens [b, L]) -> (logits float32 [b, L, vocab], weights [layers, b, heads,
  L, L])): the logits and every attention layer's weights, in layer order."""
  def forward(params, tokens):
    logits, state = model.apply({"params": params}, tokens, mutable=[WEIGHTS_COLLECTION])
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(state[WEIGHTS_COLLECTION]))
    if not flat:
      raise ValueError("the model sowed no attention weights: its attention layers are not "
                       "ban_jax.layers.attention.SelfAttention.")
    weights = [flat[k][0] for k in sorted(flat, key=layer_order)]
    return logits, jnp.stack(weights)
  return jax.jit(forward)


def query_measures(model, params, queries, train_distribution, batch: int = 32) -> dict:
  """The information-mass components and the next-token logits of each query.

  Args:
    model, params: the LM.
    queries: int [n, L].
    train_distribution: float [vocab], the training split's unigram distribution.
    batch: queries per forward pass.

  Returns:
    {"entropy", "mean_entropy", "depth", "unigram_novelty", "surprisal_novelty": float64
    [n]; "logits": float32 [n, vocab] after each query; "spans": int [n, layers, heads]}.
  """
  forward = make_forward(model)
  out = {k: [] for k in ("entropy", "mean_entropy", "depth", "surprisal_novelty", "logits",
                         "spans")}
  queries = np.asarray(queries, np.int32)
  for start in range(0, len(queries), batch):
    rows = queries[start:start + batch]
    logits, weights = forward(params, jnp.asarray(rows))
    last = jnp.moveaxis(weights[:, :, :, -1, :], 1, 0)   # [b, layers, heads, L]
    for i in range(len(rows)):
      h, mean_h = mass.mean_entropy(logits[i])
      depth, spans = mass.context_depth(last[i])
      out["entropy"].append(float(h))
      out["mean_entropy"].append(float(mean_h))
      out["depth"].append(float(depth))
      out["spans"].append(np.asarray(spans))
      out["surprisal_novelty"].append(float(mass.surprisal_novelty(logits[i], rows[i])))
      out["logits"].append(np.asarray(logits[i, -1]))
  result = {k: np.asarray(v) for k, v in out.items()}
  result["unigram_novelty"] = np.asarray(
      [mass.unigram_novelty(q, train_distribution) for q in queries])
  return result


def last_logits(model, params, tokens):
  """The logits after each row of `tokens` int [n, L]: float32 [n, vocab]."""
  return np.asarray(make_forward(model)(params, jnp.asarray(tokens, jnp.int32))[0][:, -1])


def attention_weights(model, params, windows, batch: int = 8):
  """Every layer's attention on `windows` int [n, L]: float32 [layers, n, heads, L, L]."""
  forward = make_forward(model)
  parts = [np.asarray(forward(params, jnp.asarray(windows[i:i + batch]))[1])
           for i in range(0, len(windows), batch)]
  return np.concatenate(parts, axis=1)


def sample(model, params, prompts, *, length: int, temperature: float, seed: int = 0):
  """Continues every prompt by `length` tokens sampled at `temperature` > 0, batched.

  The sampling semantics of `ban_jax.inference.generate` (each token stored with its
  surprisal for the cache), with the temperature an argument of one compiled step, so a sweep
  compiles once.

  Args:
    prompts: int [n, P], equal lengths.

  Returns:
    int32 [n, length].
  """
  if temperature <= 0:
    raise ValueError(f"temperature={temperature} must be > 0.")
  prompts = jnp.asarray(prompts, jnp.int32)
  # Slots rounded up, so a cloze and a sweep of similar lengths share one compiled step.
  decoder, step = _sampler(model, -(-(prompts.shape[1] + length) // 64) * 64)
  logits, cache = decoder.prefill(params, prompts)
  last = logits[:, -1]
  key = jax.random.key(seed)
  out = []
  for i in range(length):
    token, last, cache = step(params, cache, last, jax.random.fold_in(key, i),
                              jnp.int32(prompts.shape[1] + i), jnp.float32(temperature))
    out.append(np.asarray(token))
  return np.stack(out, axis=1)


@functools.lru_cache(maxsize=8)
def _sampler(model, slots: int):
  decoder = decode.Decoder(model, kv_ops.KVSpec(policy="full", slots=slots))

  def step(params, cache, last, rng, position, temperature):
    token = jax.random.categorical(rng, last / temperature, axis=-1).astype(jnp.int32)
    surprisal = decode.next_surprisal(last, token)
    positions = jnp.full((token.shape[0], 1), position, jnp.int32)
    logits, cache = decoder.apply(params, cache, token[:, None], positions, surprisal[:, None])
    return token, logits[:, -1], cache

  return decoder, jax.jit(step, donate_argnums=(1,))


def continuation_surprisal(model, params, prefixes, continuations):
  """Teacher-forced: each continuation's total surprisal (nats) after its prefix, and the rank
  (0 = the model's top choice) of its first token.

  Args:
    prefixes: int [n, L].
    continuations: list of n int arrays (lengths may differ).

  Returns:
    (float64 [n], int [n]).
  """
  n, length = np.shape(prefixes)
  width = max(len(c) for c in continuations)
  tokens = np.zeros((n, length + width), np.int32)
  tokens[:, :length] = prefixes
  for i, c in enumerate(continuations):
    tokens[i, length:length + len(c)] = c
  logits = make_forward(model)(params, jnp.asarray(tokens))[0]
  log_p = np.asarray(jax.nn.log_softmax(logits[:, length - 1:-1]), np.float64)
  total = np.asarray([-log_p[i, np.arange(len(c)), c].sum() for i, c in
                      enumerate(continuations)])
  first = np.asarray([c[0] for c in continuations])
  rank = (log_p[:, 0] > log_p[np.arange(n), 0, first][:, None]).sum(1)
  return total, rank


def top_curvature(model, params, queries, targets, *, iterations: int = 20, seed: int = 0,
                  batch: int = 8):
  """The largest-magnitude eigenvalue of ∇²_δ Φ(target|query), δ the input-embedding shift.

  Args:
    queries: int [n, L].
    targets: int [n], the token t of each query.
    iterations: power iterations (one Hessian-vector product each).

  Returns:
    float64 [n], signed.
  """
  many = _curvature_fn(model, iterations, _embedding_width(params))
  key = jax.random.key(seed)
  out = []
  for start in range(0, len(queries), batch):
    q = jnp.asarray(queries[start:start + batch], jnp.int32)
    t = jnp.asarray(targets[start:start + batch], jnp.int32)
    keys = jax.random.split(jax.random.fold_in(key, start), len(q))
    out.append(np.asarray(many(params, q, t, keys), np.float64))
  return np.concatenate(out)


@functools.lru_cache(maxsize=8)
def _curvature_fn(model, iterations, width):
  """One compiled (params, queries [b, L], targets [b], keys [b]) -> eigenvalues [b] per model
  (compiling the nested derivatives takes far longer than running them)."""
  def one(params, query, target, key):
    phi = curvature.embedding_potential(model, params, query)
    zero = jnp.zeros((query.shape[0], width), jnp.float32)
    values, _ = curvature.top_eigenvalues(lambda d: phi(d)[target], zero, key,
                                          iterations=iterations)
    return values[0]
  return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)))


def _embedding_width(params) -> int:
  """The width of the model's token embedding table (params["embed"]["embedding"])."""
  try:
    return int(params["embed"]["embedding"].shape[1])
  except (KeyError, TypeError):
    raise ValueError("the parameters have no embed/embedding table; top_curvature needs the "
                     "package's LMs (or a model whose token embedding is named 'embed').")
