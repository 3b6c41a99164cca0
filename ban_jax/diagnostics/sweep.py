"""Diversity of generated text against temperature: "gravitational capture" vs "thermal motion".

Measured on text the model generates itself (the context evolves from its own samples), so a
low temperature can lock into a loop. The entropy of softmax(z / T) at one fixed context rises
with T by construction; these measures do not.
"""

import numpy as np


def empirical_entropy(samples) -> float:
  """Entropy (nats) of the pooled empirical distribution of the generated tokens.

  Args:
    samples: int [n_samples, length] (or any iterable of token sequences).

  Returns:
    float; at most log(min(tokens generated, vocab)).
  """
  tokens = np.concatenate([np.asarray(s).reshape(-1) for s in samples])
  counts = np.unique(tokens, return_counts=True)[1].astype(np.float64)
  p = counts / counts.sum()
  return float(-(p * np.log(p)).sum())


def _ngrams(sequence, n):
  s = list(np.asarray(sequence).tolist())
  return [tuple(s[i:i + n]) for i in range(len(s) - n + 1)]


def distinct_n(samples, n: int) -> float:
  """Mean over samples of (distinct n-grams / n-grams)."""
  values = []
  for s in samples:
    grams = _ngrams(s, n)
    if grams:
      values.append(len(set(grams)) / len(grams))
  return float(np.mean(values)) if values else float("nan")


def repetition_rate(samples, n: int = 8) -> float:
  """Mean over samples of the share of n-grams that already occurred earlier in the sample.

  With bytes, n = 8 is about a word and a half: text that loops scores near 1, fresh text near 0.
  """
  values = []
  for s in samples:
    grams = _ngrams(s, n)
    seen, repeats = set(), 0
    for g in grams:
      repeats += g in seen
      seen.add(g)
    if grams:
      values.append(repeats / len(grams))
  return float(np.mean(values)) if values else float("nan")


def line_lengths(samples, newline: int) -> dict:
  """Tokens until the first `newline` token per sample (the whole sample if none).

  Returns:
    {"mean", "std", "cv" (std / mean), "censored" (share of samples with no newline)}.
  """
  lengths, censored = [], 0
  for s in samples:
    s = np.asarray(s)
    hits = np.flatnonzero(s == newline)
    lengths.append(int(hits[0]) if hits.size else s.size)
    censored += not hits.size
  lengths = np.asarray(lengths, np.float64)
  mean = float(lengths.mean())
  return {"mean": mean, "std": float(lengths.std()),
          "cv": float(lengths.std() / mean) if mean else float("nan"),
          "censored": censored / len(lengths)}


# The repetition rate must fall by at least this much from the lowest to the highest
# temperature for a knee to exist (a flat or rising curve has none).
MIN_FALL = 0.1


def knee(temperatures, values, min_fall: float = MIN_FALL) -> float:
  """The temperature where `values` (e.g. the repetition rate), falling from its first to its
  last value by at least `min_fall`, crosses halfway between them, interpolated linearly in
  log T; nan if it does not fall that much."""
  t = np.log(np.asarray(temperatures, np.float64))
  v = np.asarray(values, np.float64)
  if not v[0] - v[-1] >= min_fall:
    return float("nan")
  half = (v[0] + v[-1]) / 2
  for i in range(len(v) - 1):
    a, b = v[i] - half, v[i + 1] - half
    if a == 0:
      return float(np.exp(t[i]))
    if a * b < 0:
      return float(np.exp(t[i] + (t[i + 1] - t[i]) * a / (a - b)))
  return float("nan")
