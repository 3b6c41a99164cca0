"""FLOPs as XLA counts them, for structural checks and benchmarks (not a speed measure)."""

import jax


def compiled_flops(fn, *args) -> float:
  """The FLOPs XLA's cost analysis assigns to `jax.jit(fn)(*args)`.

  A `lax.fori_loop`/`while_loop` body counts once whatever its trip count, so unroll loops
  (e.g. `AttractorConfig(unroll=True)`) when the count should grow with the steps.

  Args:
    fn: a jittable function.
    *args: its arguments (arrays or `jax.ShapeDtypeStruct`s).

  Returns:
    The floating-point operation count of one call.
  """
  lowered = jax.jit(fn).lower(*args)
  cost = lowered.cost_analysis()
  if cost is None:  # some backends (GPU) only analyse the compiled executable
    cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])
