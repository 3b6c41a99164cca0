"""The Mosaic TPU kernels on meshes of several devices: one kernel call per batch shard.

XLA cannot partition a Mosaic custom call ("Mosaic kernels cannot be automatically partitioned"),
so on a mesh of more than one device each kernel (the forward; the backward's two kernels with
their glue) is wrapped in `custom_partitioning`. When XLA partitions the program it tells the
wrapper how the operands are sharded, and the wrapper answers: every batch-shaped operand split
along its leading (batch) axis over the mesh axes that q's batch axis is sharded on, the per-head
parameters `hp` replicated, and a body that runs the kernel on the local batch rows. Inside that
body the per-head parameter gradients (sums over the local rows) are `psum`-ed over those mesh
axes, so every gradient equals the single-device result up to summation order.

Why not `jax.shard_map` at trace time: the train step is jitted with `in_shardings` and no mesh
context (`training/setup.py`). Under that, JAX 0.10.2 gives a tracer neither the mesh
(`jax.sharding.get_abstract_mesh()` is empty) nor its spec (`jax.typeof(x).sharding` is P() on
an empty mesh); even under `jax.set_mesh`, Auto mesh axes leave the spec unknown. The
partitioner's callback sees both, whichever way the mesh was set.

Fallbacks: on one device (or inside a shard_map that has made every axis manual) the wrapper is
inlined and the kernel runs on the whole batch, exactly as without it. When q's batch axis is
not sharded, or its size does not divide over the axes it is sharded on, every operand is
replicated and each device runs the kernel on the whole batch (correct, but no faster than one
device); shard the batch to the mesh to avoid that.
"""

import functools
import math

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp

import ban_jax.ops.gravity.mosaic as mosaic

# Batch-shaped operands, by the name the kernels read them under; all are [batch, ...].
_PARAMS = ("q", "k", "v", "key_term")
_SIDE = ("qlim", "kfirst", "q_seg", "k_seg", "q_pos", "k_pos")
_BACKWARD = ("lse", "delta", "d_out")


def forward(st, params, side, hp):
  """`mosaic.forward`, partitioned over the batch: (out [b, tq, h, dv], lse [b, h, tq, 128])."""
  names, arrays = _batched(params, side, {})
  out, lse = _kernel(("forward", st, names), hp, *arrays)
  return out, lse


def backward(st, params, side, hp, lse, delta, d_out):
  """`mosaic.backward`, partitioned over the batch; the same returns.

  Returns:
    (dq, dk, dv, d key_term [b, tk] or None, [4 x [h]] per-head parameter gradients summed over
    the whole batch).
  """
  names, arrays = _batched(params, side, dict(lse=lse, delta=delta, d_out=d_out))
  outs = _kernel(("backward", st, names), hp, *arrays)
  dq, dk, dv = outs[:3]
  dkt = outs[3] if st.has_kt else None
  dpar = outs[-1]
  return dq, dk, dv, dkt, list(dpar)


def _batched(params, side, extra):
  """(names, arrays) of the batch-shaped operands that are present, in a fixed order."""
  pool = {**{n: params[n] for n in _PARAMS}, **{n: side[n] for n in _SIDE}, **extra}
  names = tuple(n for n in _PARAMS + _SIDE + _BACKWARD if pool.get(n) is not None)
  return names, [pool[n] for n in names]


def _run(static, hp, arrays):
  """The kernel call on whatever batch rows it is given (all of them, or one shard's)."""
  kind, st, names = static
  x = dict(zip(names, arrays))
  params = {n: x.get(n) for n in _PARAMS}
  side = {n: x.get(n) for n in _SIDE}
  if kind == "forward":
    return tuple(mosaic.forward(st, params, side, hp))
  dq, dk, dv, dkt, dpar = mosaic.backward(st, params, side, hp, x["lse"], x["delta"],
                                          x["d_out"])
  # [4, h]: one array, so that the partitioned body returns a fixed number of results.
  return (dq, dk, dv) + ((dkt,) if dkt is not None else ()) + (jnp.stack(dpar),)


@functools.partial(custom_partitioning, static_argnums=(0,))
def _kernel(static, hp, *arrays):
  return _run(static, hp, arrays)


def _batch_axes(mesh, q_shape):
  """The mesh axes q's batch axis is split over (a tuple), or None to replicate everything."""
  sharding = q_shape.sharding
  if not isinstance(sharding, NamedSharding) or not sharding.spec or mesh.empty:
    return None
  axes = sharding.spec[0]
  if axes is None:
    return None
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  size = math.prod(mesh.shape[a] for a in axes)
  # An uneven split would hand the kernel padded rows; replicate instead.
  if size <= 1 or q_shape.shape[0] % size:
    return None
  return axes


def _shardings(static, mesh, axes):
  """(operand shardings, result shardings) for the batch split over `axes`."""
  kind, st, names = static
  batched = NamedSharding(mesh, P(axes))
  replicated = NamedSharding(mesh, P())
  args = (replicated,) + (batched,) * len(names)
  if kind == "forward":
    return args, (batched, batched)
  return args, (batched,) * (4 if st.has_kt else 3) + (replicated,)


def _infer(static, mesh, arg_shapes, result_shape):
  del result_shape
  return _shardings(static, mesh, _batch_axes(mesh, arg_shapes[1]))[1]


def _partition(static, mesh, arg_shapes, result_shape):
  del result_shape
  axes = _batch_axes(mesh, arg_shapes[1])
  arg_shardings, result_shardings = _shardings(static, mesh, axes)

  def body(hp, *arrays):
    outs = _run(static, hp, arrays)
    if static[0] == "backward" and axes is not None:
      # Each shard summed the per-head gradients over its own rows only.
      outs = outs[:-1] + (jax.lax.psum(outs[-1], axes),)
    return outs

  return mesh, body, result_shardings, arg_shardings


def _sharding_rule(static, mesh, operand_types, result_types):
  """Shardy's rule: the leading axis of every batch-shaped operand and result is one factor.

  The other dimensions get factors of their own (`_partition` replicates them anyway); the
  backward's per-head gradients [4, h] take the factors of `hp` [h, 4], transposed.
  """
  del mesh
  fresh = iter(range(10 ** 6))

  def batch_first(t):
    return " ".join(["b"] + [f"x{next(fresh)}" for _ in range(len(t.shape) - 1)])

  operands = ["h f"] + [batch_first(t) for t in operand_types[1:]]
  if static[0] == "forward":
    results = [batch_first(t) for t in result_types]
  else:
    results = [batch_first(t) for t in result_types[:-1]] + ["f h"]
  return ", ".join(operands) + " -> " + ", ".join(results)


_kernel.def_partition(partition=_partition, infer_sharding_from_operands=_infer,
                      sharding_rule=_sharding_rule)
