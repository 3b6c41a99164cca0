"""Gravity Wells' table storage: a fixed-capacity table of (example index, strength).

A well for an index already in the table is strengthened in place; a new well takes a slot only
if it is stronger than the weakest entry, which it then replaces, so the table always holds the
strongest `capacity` wells it has seen. Used by `ban_jax.training.wells.update`.
"""

import jax
import jax.numpy as jnp


def _locate(ids: jax.Array, queries: jax.Array, ok: jax.Array):
  """Matches table slots against distinct query indices in O((capacity + n) * log n).

  Args:
    ids: int32 [capacity] the table's example indices (-1 = empty).
    queries: int32 [n] example indices, distinct where `ok`.
    ok: bool [n] which queries take part.

  Returns:
    (hit, which, order): bool [capacity] whether the slot holds a query; int32 [capacity] the
    position in the sorted queries `queries[order]` that it holds (meaningful where hit);
    int32 [n] the sort order of the queries.
  """
  # Sorting the few queries and binary-searching every slot among them beats comparing every
  # slot with every query ([n, capacity] compares, slow on CPU for large tables).
  key = jnp.where(ok, queries, -2)                      # -2 matches no slot, not even empty ones
  order = jnp.argsort(key, stable=True)
  sorted_key = key[order]
  which = jnp.clip(jnp.searchsorted(sorted_key, ids), 0, queries.shape[0] - 1)
  hit = (sorted_key[which] == ids) & (ids >= 0)
  return hit, which, order


def strengthen(strength, ids, indices, inc, want):
  """Adds `inc` to the wells of `indices` where `want`; new ones replace the weakest.

  Args:
    strength: float32 [capacity]; ids: int32 [capacity] (-1 = empty slot).
    indices: int32 [batch], distinct where `want` (see `wells._first_occurrence`).
    inc: float32 [batch] the strength to add; want: bool [batch].

  Returns:
    (strength, ids) of the updated table.
  """
  hit, which, order = _locate(ids, indices, want)
  strength = strength + jnp.where(hit, inc[order][which], 0.0)
  found_sorted = jnp.zeros(indices.shape, jnp.int32).at[which].add(hit.astype(jnp.int32))
  found = jnp.zeros(indices.shape, jnp.bool_).at[order].set(found_sorted > 0)
  new = want & ~found
  new_strength = jnp.where(new, inc, 0.0)
  new_ids = jnp.where(new, indices, -1).astype(jnp.int32)
  # The final table is the strongest `capacity` of (table ∪ new candidates): only the k weakest
  # slots can lose their entry, so it is enough to let them compete with the candidates.
  k = min(indices.shape[0], strength.shape[0])
  _, slots = jax.lax.top_k(-strength, k)                                 # the k weakest slots
  pool_strength = jnp.concatenate([strength[slots], new_strength])
  pool_ids = jnp.concatenate([ids[slots], new_ids])
  # top_k breaks ties toward the lower position: a sitting entry beats an equal newcomer.
  keep_strength, keep = jax.lax.top_k(pool_strength, k)
  strength = strength.at[slots].set(keep_strength)
  ids = ids.at[slots].set(pool_ids[keep])
  return strength, ids
