"""Device meshes with axes (data, fsdp) and the sharding rules the training loop uses.

The batch is split over both axes (FSDP is data parallelism whose parameters are also split);
with `fsdp > 1` every large array of the train state is split along its largest axis that the
fsdp size divides, and gathered by XLA where a computation needs it whole.
"""

import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from ban_jax.errors import UserError

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
# Arrays smaller than this stay replicated: splitting them buys nothing and costs collectives.
MIN_SHARDED_SIZE = 2 ** 12


def make_mesh(cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
  """The (data, fsdp) mesh over the devices of `cfg.backend` (default: JAX's default backend).

  `devices` replaces them: e.g. the devices of a TPU topology described without a TPU, for
  ahead-of-time compilation (`ban_jax.aot`), laid out exactly as a run on that slice would be.
  """
  if devices is None:
    try:
      devices = jax.devices(cfg.backend) if cfg.backend else jax.devices()
    except RuntimeError as e:
      raise UserError(f"mesh.backend={cfg.backend!r} is not available here ({e}); use '' for "
                      f"JAX's default ({jax.default_backend()}).") from e
  n = len(devices)
  data, fsdp = cfg.data, cfg.fsdp
  if data == -1 and fsdp == -1:
    raise UserError("at most one of mesh.data and mesh.fsdp may be -1.")
  if data == -1:
    data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
  if fsdp == -1:
    fsdp = n // data if data > 0 and n % data == 0 else 0
  if data <= 0 or fsdp <= 0 or data * fsdp != n:
    raise UserError(f"mesh (data={cfg.data}, fsdp={cfg.fsdp}) does not fit the {n} "
                    f"{devices[0].platform} devices: data × fsdp must equal {n}.")
  try:
    grid = mesh_utils.create_device_mesh((data, fsdp), devices)
  except AssertionError:
    # A v4 described core by core (libtpu's topology description, ahead of time): mesh_utils
    # wants one device per chip. Device order is the topology's; the run itself never gets here.
    grid = np.asarray(devices).reshape(data, fsdp)
  return Mesh(grid, AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every mesh axis."""
  return NamedSharding(mesh, P(BATCH_AXES))


def state_shardings(mesh: Mesh, abstract_state):
  """Shardings for a train-state pytree of ShapeDtypeStructs, by the FSDP rule."""
  fsdp = mesh.shape["fsdp"]

  def rule(leaf):
    shape = getattr(leaf, "shape", ())
    if fsdp == 1 or np.prod(shape, dtype=np.int64) < MIN_SHARDED_SIZE:
      return NamedSharding(mesh, P())
    for axis in np.argsort(shape)[::-1]:
      if shape[axis] % fsdp == 0:
        spec = [None] * len(shape)
        spec[axis] = "fsdp"
        return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())

  return jax.tree.map(rule, abstract_state)


def process_slice(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's rows of a global host batch (its slice of the leading axis)."""
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return batch
  return {k: v.reshape((count, -1) + v.shape[1:])[index] for k, v in batch.items()}


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Process-local numpy batch -> global jax arrays laid out by `sharding`."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
