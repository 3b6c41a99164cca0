"""The information mass M(Q) = α·H(Q) + β·D(Q) + γ·N(Q) of a query Q (seed 001).

The paper names the three components and leaves their measurement open; the definitions here:

- H(Q), entropy: of the next-token distribution after Q (nats); `mean_entropy` also gives its
  mean over Q's positions (how uncertain the model was while reading Q).
- D(Q), context depth: how far back the last position of Q reaches, read off its attention.
  For each layer and head, the smallest distance d such that the keys within d of the query
  (itself at d = 0) hold `fraction` (0.9) of its attention weight; D is the mean over layers
  and heads. It is the effective span of the attention field: a query the model answers from
  the last few tokens has a small D, one that draws on the whole window a large one.
- N(Q), novelty: the paper's KL(P_Q ‖ P_train) between the query's token distribution and the
  training distribution, with P_Q the empirical distribution of Q's tokens and P_train the
  training split's unigram (byte) distribution, add-one smoothed (`unigram_novelty`). A short
  query's empirical distribution is spiky, so this KL grows as Q shortens whatever its content;
  at equal lengths it ranks queries by how unusual their characters are. `surprisal_novelty`,
  the model's mean surprisal of Q's own tokens, is a better estimator of "how far Q is from
  what was learnt" (it sees order and context, and what the model made of the training data,
  not only byte counts), so both are kept.

M is a weighted sum of components in different units, so `information_mass` standardises each
over the set of queries before weighting (α = β = γ = 1 unless given, or fitted: `stats`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from ban_jax.diagnostics import potential as potential_lib

DEPTH_FRACTION = 0.9


def mean_entropy(logits):
  """(H after Q, mean H over Q's positions) from the logits along Q.

  Args:
    logits: float [L, vocab], position i predicting token i + 1.

  Returns:
    (float scalar, float scalar), nats.
  """
  h = potential_lib.entropy(logits)
  return h[-1], jnp.mean(h)


def context_depth(weights, fraction: float = DEPTH_FRACTION):
  """D(Q): the attention span of Q's last position, averaged over layers and heads.

  Args:
    weights: float [layers, heads, L], the last query position's attention over keys 0..L−1
      (the query is key L − 1, at distance 0); each row sums to 1.
    fraction: the share of the attention that the span must hold, in (0, 1].

  Returns:
    (D float scalar, per-layer-and-head spans float [layers, heads]); a row whose weights
    never reach `fraction` (padding, non-finite) has span nan and is left out of D.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction={fraction} must be in (0, 1].")
  by_distance = jnp.flip(jnp.asarray(weights), axis=-1)   # index = distance
  reached = jnp.cumsum(by_distance, axis=-1) >= fraction - 1e-6
  spans = jnp.where(reached.any(-1), jnp.argmax(reached, axis=-1).astype(jnp.float32),
                    jnp.nan)
  return jnp.nanmean(spans), spans


def unigram_distribution(counts):
  """P_train from token counts of the training split, add-one smoothed (no zero entries).

  Args:
    counts: int or float [vocab].

  Returns:
    float64 numpy [vocab], sums to 1.
  """
  counts = np.asarray(counts, np.float64)
  if counts.ndim != 1 or (counts < 0).any():
    raise ValueError("counts must be a non-negative vector over the vocabulary.")
  return (counts + 1.0) / (counts.sum() + counts.size)


def unigram_novelty(tokens, train_distribution):
  """N(Q) = KL(P_Q ‖ P_train), P_Q the empirical distribution of Q's tokens.

  Args:
    tokens: int [L], the query.
    train_distribution: float [vocab], from `unigram_distribution`.

  Returns:
    float, nats.
  """
  train_distribution = np.asarray(train_distribution, np.float64)
  empirical = np.bincount(np.asarray(tokens), minlength=train_distribution.size)
  empirical = empirical / empirical.sum()
  seen = empirical > 0   # NumPy float64: a query's KL is a small difference of logs
  return float((empirical[seen] * np.log(empirical[seen] / train_distribution[seen])).sum())


def surprisal_novelty(logits, tokens):
  """N(Q) as the model's mean surprisal of Q's tokens after the first (nats per token).

  Args:
    logits: float [L, vocab], position i predicting token i + 1.
    tokens: int [L].

  Returns:
    float scalar.
  """
  log_p = jax.nn.log_softmax(jnp.asarray(logits)[:-1], axis=-1)
  picked = jnp.take_along_axis(log_p, jnp.asarray(tokens)[1:, None], axis=-1)
  return -jnp.mean(picked)


def standardize(x):
  """(x − mean) / std over queries (std 0 → zeros): component values on one scale."""
  x = np.asarray(x, np.float64)
  sd = x.std()
  return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def information_mass(entropy, depth, novelty, alpha: float = 1.0, beta: float = 1.0,
                     gamma: float = 1.0, standardized: bool = True):
  """M(Q) = α·H + β·D + γ·N over a set of queries.

  Args:
    entropy, depth, novelty: float [queries], the components.
    alpha, beta, gamma: the weights (of the standardised components when `standardized`).
    standardized: z-score each component over the queries first (their units differ).

  Returns:
    float64 numpy [queries].
  """
  f = standardize if standardized else (lambda x: np.asarray(x, np.float64))
  return alpha * f(entropy) + beta * f(depth) + gamma * f(novelty)
