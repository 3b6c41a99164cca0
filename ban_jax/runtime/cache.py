"""The bounded key/value cache of one attention layer, in NumPy: `ban_jax.ops.kv_cache` exactly.

Slots are unordered; each holds a key (RoPE applied at its own position), a value, the token's
original position (-1: empty), its tagging mass, its surprisal and the attention it received.
The policy scores every candidate (the slots plus the new tokens); the newest token always
enters; one new token overwrites the lowest-scoring slot, several keep the top `slots` in the
order `jax.lax.top_k` gives (stable), so every later decision matches the JAX cache's, slot for
slot. Scores are computed in float32, as there (the +1e9 that protects a slot rounds away small
score differences in float32; doing it in float64 would break ties differently).

Arrays drop the batch axis of the JAX cache: one stream per cache.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# The policies the runtime serves; the JAX cache's other ones (h2o, tova, knorm) raise.
POLICIES = ("full", "recent", "sinks", "gravity")
GRAVITY_TERMS = ("tag", "surprisal", "attention")
_PROTECT = np.float32(1e9)


@dataclasses.dataclass(frozen=True)
class Spec:
  """How one generation caches keys and values (as `ban_jax.ops.kv_cache.KVSpec`).

  Attributes:
    policy: one of POLICIES.
    slots: cache slots per layer.
    recent: newest tokens always kept (gravity); None: slots // 2.
    sinks: first tokens always kept (sinks).
    terms: the gravity score's terms, a subset of GRAVITY_TERMS.
  """
  policy: str = "recent"
  slots: int = 256
  recent: int | None = None
  sinks: int = 4
  terms: tuple[str, ...] = GRAVITY_TERMS

  def __post_init__(self):
    if self.policy not in POLICIES:
      raise ValueError(f"kv policy {self.policy!r} is not supported in the runtime; use one of "
                       f"{POLICIES} (h2o, tova and knorm run in ban_jax.generate).")
    if not isinstance(self.slots, int) or self.slots < 1:
      raise ValueError(f"the kv budget must be a positive number of slots, got {self.slots}.")
    if self.policy == "sinks" and self.slots <= self.sinks:
      raise ValueError(f"a kv budget of {self.slots} slots leaves no room after the "
                       f"{self.sinks} attention sinks; use a budget above {self.sinks}.")
    if self.recent is not None and not 0 <= self.recent < self.slots:
      raise ValueError(f"kv recent window {self.recent} must be in [0, {self.slots}).")
    bad = sorted(set(self.terms) - set(GRAVITY_TERMS))
    if bad:
      raise ValueError(f"gravity terms {bad} are unknown; use a subset of {GRAVITY_TERMS}.")

  @property
  def recent_window(self) -> int:
    return self.slots // 2 if self.recent is None else self.recent


def empty(slots: int, kv_heads: int, head_dim: int) -> dict:
  """A cache with every slot empty: k, v [S, kv_heads, head_dim], statistics [S]."""
  zeros = lambda: np.zeros(slots, np.float32)
  return {"k": np.zeros((slots, kv_heads, head_dim), np.float32),
          "v": np.zeros((slots, kv_heads, head_dim), np.float32),
          "position": np.full(slots, -1, np.int32), "key_mass": np.ones(slots, np.float32),
          "surprisal": zeros(), "attn_sum": zeros(), "attn_last": zeros(), "queries": zeros()}


def new_entries(k, v, positions, key_mass, surprisal) -> dict:
  """Rows of L new tokens: k, v [L, kv_heads, head_dim], positions int [L], masses [L] or None."""
  length = positions.shape[0]
  zeros = np.zeros(length, np.float32)
  return {"k": k, "v": v, "position": positions.astype(np.int32),
          "key_mass": np.ones(length, np.float32) if key_mass is None
                      else key_mass.astype(np.float32),
          "surprisal": zeros if surprisal is None else surprisal.astype(np.float32),
          "attn_sum": zeros, "attn_last": zeros, "queries": zeros}


def concat(cache: dict, new: dict) -> dict:
  """The S slots followed by the L new tokens: candidates [S + L, ...]."""
  return {n: np.concatenate([cache[n], new[n].astype(cache[n].dtype)]) for n in cache}


def observe(candidates: dict, weights: np.ndarray) -> dict:
  """Adds the new queries' attention, weights float [heads, L, S + L], to every candidate."""
  w = np.mean(weights.astype(np.float32), axis=0)                   # [L, S + L]
  length, n = w.shape
  first_seen = np.arange(n) - (n - length)
  seen = np.clip(length - np.maximum(first_seen, 0), 0, length).astype(np.float32)
  return dict(candidates, attn_sum=candidates["attn_sum"] + np.sum(w, axis=0),
              attn_last=w[-1], queries=candidates["queries"] + seen)


def scores(spec: Spec, stats: dict, now: int) -> np.ndarray:
  """The policy's keep-score of every candidate: float32 [n], higher = keep; empty: -inf."""
  pos = stats["position"]
  if spec.policy in ("full", "recent"):
    s = pos.astype(np.float32)
  elif spec.policy == "sinks":
    s = pos.astype(np.float32) + np.where(pos < spec.sinks, _PROTECT, np.float32(0))
  else:
    s = gravity_log_mass(stats, spec.terms)
    if spec.recent_window:
      recent = pos > now - spec.recent_window
      s = s + np.where(recent, _PROTECT, np.float32(0))
  with np.errstate(invalid="ignore"):
    return np.where(pos < 0, np.float32(-np.inf), s).astype(np.float32)


def gravity_log_mass(stats: dict, terms=GRAVITY_TERMS) -> np.ndarray:
  """log M_j = log m_j + s_j + log ā_j over the enabled terms: float32 [n]."""
  out = np.zeros(stats["position"].shape, np.float32)
  if "tag" in terms:
    out = out + np.log(np.maximum(stats["key_mass"], np.float32(1e-30)))
  if "surprisal" in terms:
    out = out + stats["surprisal"]
  if "attention" in terms:
    mean = stats["attn_sum"] / np.maximum(stats["queries"], np.float32(1.0))
    out = out + np.log(mean + np.float32(1e-9))
  return out.astype(np.float32)


def select(spec: Spec, candidates: dict, now: int) -> dict:
  """The S slots kept out of S + L candidates (the newest always), in the JAX cache's order."""
  n = candidates["position"].shape[0]
  slots = spec.slots
  s = scores(spec, candidates, now)
  s[-1] = np.inf
  if n - slots == 1:
    victim = int(np.argmin(s[:slots]))
    out = {}
    for name, x in candidates.items():
      kept = x[:slots].copy()
      kept[victim] = x[-1]
      out[name] = kept
    return out
  # jax.lax.top_k: descending, equal scores in index order (a stable sort of -s).
  keep = np.argsort(-s, kind="stable")[:slots]
  return {name: x[keep] for name, x in candidates.items()}
