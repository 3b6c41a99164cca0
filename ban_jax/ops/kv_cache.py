"""A bounded key/value cache with eviction policies, as pure functions (the paper's level one).

One attention layer's cache is a dict of arrays with a fixed number of slots S:

| key          | shape                 | what                                                     |
|--------------|-----------------------|----------------------------------------------------------|
| k, v         | [b, S, kv_heads, d]   | keys (RoPE already applied at their position) and values |
| position     | int32 [b, S]          | the token's original position; -1 marks an empty slot    |
| key_mass     | [b, S]                | context-tagging mass m_j (1 without tagging)             |
| surprisal    | [b, S]                | −log P(x_j | x_<j) when the token was read (nats)        |
| attn_sum     | [b, S]                | attention received since written, summed over queries     |
| attn_last    | [b, S]                | attention from the latest query                          |
| queries      | [b, S]                | how many queries have seen the slot                      |
| knorm        | [b, S]                | ‖k_j‖, mean over key/value heads                         |

Attention weights enter as the mean over query heads. A policy maps a cache (or the candidates
of one insertion) to a score per slot, higher = keep; when the cache is full the lowest is
evicted. The newest token always enters. Slots are unordered: attention reads each slot's
stored position, so eviction never moves or re-indexes anything (see docs/design.md §KV cache
for why original positions are kept for every positional kind).

Policies (`POLICIES`):
- full: no eviction (the cache is sized to the whole generation).
- recent: the last S tokens.
- sinks: StreamingLLM, the first `sinks` tokens plus the most recent.
- h2o: H2O, the most recent `recent` tokens plus the heaviest by attention received (sum).
- tova: TOVA, evict the token the newest query attends least (mean over heads).
- knorm: keep the keys of smallest norm (kvpress's Knorm).
- gravity: the Information Gravity paper's level one: the most recent `recent` tokens plus the
  heaviest by gravitational mass, log M_j = log m_j (context tagging) + s_j (surprisal when it
  was read: the potential Φ) + log ā_j (mean attention received per query); each term can be
  switched off (`GravityTerms`) to tell which carries the signal.
"""

import dataclasses

import jax
import jax.numpy as jnp

POLICIES = ("full", "recent", "sinks", "h2o", "tova", "knorm", "gravity")
GRAVITY_TERMS = ("tag", "surprisal", "attention")
STATS = ("position", "key_mass", "surprisal", "attn_sum", "attn_last", "queries", "knorm")
# A protected slot (a sink, a recent token) scores this much above any policy score.
_PROTECT = 1e9


@dataclasses.dataclass(frozen=True)
class KVSpec:
  """How one generation caches keys and values (frozen: a static argument under jit).

  Attributes:
    policy: one of POLICIES.
    slots: cache slots per layer (the budget; for "full", the longest sequence).
    recent: tokens always kept because they are the newest (h2o, gravity); None: slots // 2.
    sinks: the first tokens always kept (sinks).
    terms: the gravity score's terms, a subset of GRAVITY_TERMS.
  """
  policy: str = "full"
  slots: int = 256
  recent: int | None = None
  sinks: int = 4
  terms: tuple[str, ...] = GRAVITY_TERMS

  def __post_init__(self):
    if self.policy not in POLICIES:
      raise ValueError(f"kv policy {self.policy!r} is unknown; use one of {POLICIES}.")
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


def empty(batch: int, slots: int, kv_heads: int, head_dim: int, v_dim: int, dtype) -> dict:
  """A cache with every slot empty."""
  zeros = lambda: jnp.zeros((batch, slots), jnp.float32)
  return {"k": jnp.zeros((batch, slots, kv_heads, head_dim), dtype),
          "v": jnp.zeros((batch, slots, kv_heads, v_dim), dtype),
          "position": jnp.full((batch, slots), -1, jnp.int32),
          "key_mass": jnp.ones((batch, slots), jnp.float32), "surprisal": zeros(),
          "attn_sum": zeros(), "attn_last": zeros(), "queries": zeros(), "knorm": zeros()}


def scores(spec: KVSpec, stats: dict, now) -> jax.Array:
  """The policy's keep-score of every slot (or candidate): float32 [b, n], higher = keep.

  Args:
    spec: the KVSpec.
    stats: per-slot arrays [b, n] named as in STATS.
    now: int [b] or [], the newest position (for the recent window).

  Empty slots (position < 0) score -inf, so they are filled first.
  """
  pos = stats["position"]
  p = spec.policy
  if p in ("full", "recent"):
    s = pos.astype(jnp.float32)
  elif p == "sinks":
    s = pos.astype(jnp.float32) + jnp.where(pos < spec.sinks, _PROTECT, 0.0)
  elif p == "h2o":
    s = stats["attn_sum"]
  elif p == "tova":
    s = stats["attn_last"]
  elif p == "knorm":
    s = -stats["knorm"]
  else:
    s = gravity_log_mass(stats, spec.terms)
  if p in ("h2o", "gravity") and spec.recent_window:
    recent = pos > jnp.asarray(now)[..., None] - spec.recent_window
    s = s + jnp.where(recent, _PROTECT, 0.0)
  return jnp.where(pos < 0, -jnp.inf, s)


def gravity_log_mass(stats: dict, terms=GRAVITY_TERMS) -> jax.Array:
  """log M_j = log m_j + s_j + log ā_j over the enabled terms: float32 [b, n]."""
  out = jnp.zeros(stats["position"].shape, jnp.float32)
  if "tag" in terms:
    out = out + jnp.log(jnp.maximum(stats["key_mass"], 1e-30))
  if "surprisal" in terms:
    out = out + stats["surprisal"]
  if "attention" in terms:
    mean = stats["attn_sum"] / jnp.maximum(stats["queries"], 1.0)
    out = out + jnp.log(mean + 1e-9)
  return out


def new_entries(k, v, positions, key_mass, surprisal) -> dict:
  """The cache rows of L new tokens (stats start at zero; attention adds to them)."""
  b, length = positions.shape
  zeros = jnp.zeros((b, length), jnp.float32)
  knorm = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(k.astype(jnp.float32)), axis=-1)), axis=-1)
  return {"k": k, "v": v, "position": positions.astype(jnp.int32),
          "key_mass": (jnp.ones_like(zeros) if key_mass is None
                       else key_mass.astype(jnp.float32)),
          "surprisal": zeros if surprisal is None else surprisal.astype(jnp.float32),
          "attn_sum": zeros, "attn_last": zeros, "queries": zeros, "knorm": knorm}


def concat(cache: dict, new: dict) -> dict:
  """Cache slots followed by the new tokens, as one candidate set [b, S + L, ...]."""
  return {name: jnp.concatenate([cache[name], new[name].astype(cache[name].dtype)], axis=1)
          for name in cache}


def observe(candidates: dict, weights: jax.Array) -> dict:
  """Adds the attention the new queries paid to each candidate.

  Args:
    candidates: `concat(cache, new)`, [b, S + L, ...].
    weights: float [b, heads, L, S + L], the new queries' attention (0 where not visible).

  Returns:
    The candidates with attn_sum, attn_last and queries updated.
  """
  w = jnp.mean(weights.astype(jnp.float32), axis=1)                 # [b, L, S + L]
  length = w.shape[1]
  n = w.shape[2]
  slot = jnp.arange(n)
  first_seen = slot - (n - length)                                   # new token j: query j first
  seen = jnp.clip(length - jnp.maximum(first_seen, 0), 0, length).astype(jnp.float32)
  return dict(candidates, attn_sum=candidates["attn_sum"] + jnp.sum(w, axis=1),
              attn_last=w[:, -1], queries=candidates["queries"] + seen[None, :])


def select(spec: KVSpec, candidates: dict, now) -> dict:
  """The S slots to keep out of S + L candidates: the newest always, the rest by score.

  One new token (decoding) replaces the lowest-scoring slot in place; more (a prompt) keep
  the top S by score. Either way the cache holds exactly S slots, empty ones first to fill.
  """
  n = candidates["position"].shape[1]
  slots = spec.slots
  s = scores(spec, candidates, now)
  s = s.at[:, -1].set(jnp.inf)                                        # the newest stays
  if n - slots == 1:
    victim = jnp.argmin(s[:, :slots], axis=1)                         # [b]
    rows = jnp.arange(s.shape[0])
    return {name: x[:, :slots].at[rows, victim].set(x[:, -1]) for name, x in candidates.items()}
  keep = jax.lax.top_k(s, slots)[1]                                   # [b, S]
  return {name: jnp.take_along_axis(x, keep.reshape(keep.shape + (1,) * (x.ndim - 2)), axis=1)
          for name, x in candidates.items()}
