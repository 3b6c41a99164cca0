"""The Mosaic TPU kernels on meshes of several devices: one kernel call per batch shard.

XLA cannot partition a Mosaic custom call ("Mosaic kernels cannot be automatically partitioned.
Please wrap the call in a shard_map"), so each kernel (the forward; the backward's two kernels
with their glue) runs under `jax.shard_map` when the call is traced for a mesh of more than one
device: every batch-shaped operand (q, k, v, key_term, segment ids, positions, the causal
limits built from q_offset, and the backward's lse, delta and dO) split along its leading
(batch) axis, the per-head parameters `hp` replicated, and the per-head parameter gradients
(each shard's sum over its own rows) `psum`-ed across the shards, so that every gradient equals
the single-device result up to float32 summation order.

Which mesh: the one the call is traced under, `jax.sharding.get_abstract_mesh()` (set by
`jax.set_mesh(mesh)` around the jit's trace or lowering), else the mesh in q's abstract type
(`jax.typeof(q).sharding`, set for Explicit mesh axes or for committed arguments). A jit with
only `in_shardings` and no mesh context gives a tracer neither (JAX 0.10.2): then nothing is
wrapped, and on more than one device XLA refuses the kernel with the error above.
`gravity_attention`'s "auto" therefore picks the kernel on a TPU only when `partition_plan`
finds a mesh or there is one device. (`custom_partitioning`, which would see the shardings at
compile time, is not wired to the TPU compiler: "Custom emitter for CustomSPMDPartitioning not
found", jax-ml/jax#38196, reproduced here with libtpu 0.0.42.)

Which mesh axes: q's batch axes when its type says (Explicit axes). Otherwise (Auto axes carry
no spec) the mesh axes of more than one device that are not already manual, in mesh order,
each taken if the batch still divides over the axes taken so far: the batch of
`ban_jax.parallel.mesh` is sharded over all of (data, fsdp), which this gives whenever the batch
divides over the mesh. Were the batch sharded otherwise, XLA reshards the operands to this split
(correct, at the cost of the transfer). When no axis divides the batch, every operand is
replicated and each device runs the kernel on the whole batch (correct, no faster than one
device).
"""

import math
from typing import NamedTuple, Optional

import jax
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp

import ban_jax.ops.gravity.mosaic as mosaic

# Batch-shaped operands, by the name the kernels read them under; all are [batch, ...].
_PARAMS = ("q", "k", "v", "key_term")
_SIDE = ("qlim", "kfirst", "q_seg", "k_seg", "q_pos", "k_pos")
_BACKWARD = ("lse", "delta", "d_out")


class Plan(NamedTuple):
  """How a kernel call is split: over `axes` of `mesh` (None: replicated on every device)."""
  mesh: object                     # jax.sharding.AbstractMesh or Mesh
  axes: Optional[tuple]


def _mesh_of(x):
  """The mesh `x` is traced under (possibly empty)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", mesh)
  return mesh


def partition_plan(q) -> Optional[Plan]:
  """The split of a kernel call on q [batch, ...], or None to call the kernel as it is.

  None when no mesh of more than one (non-manual) device is found: one device, an enclosing
  shard_map that has made every axis manual, or no mesh to be seen (see the module docstring).
  """
  mesh = _mesh_of(q)
  if mesh.empty:
    return None
  free = [a for a in mesh.axis_names if a not in mesh.manual_axes and mesh.shape[a] > 1]
  if not free:
    return None
  spec = getattr(getattr(jax.typeof(q), "sharding", None), "spec", None)
  axes = spec[0] if spec else None
  if axes is not None:
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if a in free)
  else:
    # Unknown (Auto axes): as many of the free axes, in mesh order, as the batch divides over;
    # an uneven split would hand the kernel padded rows.
    axes, size = [], 1
    for a in free:
      if q.shape[0] % (size * mesh.shape[a]) == 0:
        axes.append(a)
        size *= mesh.shape[a]
    axes = tuple(axes)
  if not axes or q.shape[0] % math.prod(mesh.shape[a] for a in axes):
    return Plan(mesh, None)               # every device takes the whole batch
  return Plan(mesh, axes)


def forward(st, params, side, hp):
  """`mosaic.forward`, per batch shard: (out [b, tq, h, dv], lse [b, h, tq, 128] float32)."""
  names, arrays = _batched(params, side, {})
  plan = partition_plan(params["q"])
  run = lambda hp, *arrays: _run(("forward", st, names), hp, arrays)
  if plan is None:
    return run(hp, *arrays)
  batch = P(plan.axes)
  return _shard_map(plan, run, (P(),) + (batch,) * len(arrays), (batch, batch))(hp, *arrays)


def backward(st, params, side, hp, lse, delta, d_out):
  """`mosaic.backward`, per batch shard; the same returns.

  Returns:
    (dq, dk, dv, d key_term [b, tk] or None, [4 x [h]] per-head parameter gradients summed over
    the whole batch).
  """
  names, arrays = _batched(params, side, dict(lse=lse, delta=delta, d_out=d_out))
  plan = partition_plan(params["q"])

  def run(hp, *arrays):
    outs = _run(("backward", st, names), hp, arrays)
    if plan is not None and plan.axes is not None:
      # Each shard summed the per-head gradients over its own rows only.
      outs = outs[:-1] + (jax.lax.psum(outs[-1], plan.axes),)
    return outs

  if plan is None:
    outs = run(hp, *arrays)
  else:
    batch = P(plan.axes)
    out_specs = (batch,) * (4 if st.has_kt else 3) + (P(),)
    outs = _shard_map(plan, run, (P(),) + (batch,) * len(arrays), out_specs)(hp, *arrays)
  dq, dk, dv = outs[:3]
  dkt = outs[3] if st.has_kt else None
  return dq, dk, dv, dkt, list(outs[-1])


def _shard_map(plan, fn, in_specs, out_specs):
  free = frozenset(a for a in plan.mesh.axis_names if a not in plan.mesh.manual_axes)
  # check_vma=False: pallas_call results carry no varying-axes types; the psum above is the
  # only cross-shard reduction, and every other result is per-shard by construction.
  return jax.shard_map(fn, mesh=plan.mesh, in_specs=in_specs, out_specs=out_specs,
                       axis_names=free, check_vma=False)


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
  # [4, h]: one array, so that the shard_map has a fixed number of results.
  return (dq, dk, dv) + ((dkt,) if dkt is not None else ()) + (jnp.stack(dpar),)
