"""TPU slices by the names users type (`v5e-1`, `v2-8`, `v5p-8`, ...), without a TPU.

`parse_slice(name)` maps a Cloud TPU name to what the real slice is (chips, the devices
`jax.devices()` shows there, hosts, HBM per device) and to the topology libtpu describes for
ahead-of-time compilation (`jax.experimental.topologies.get_topology_desc`), so a program can be
compiled for the slice on a machine that has none (`ban_jax.aot`).

Naming (Cloud TPU's): for v2, v3, v4 and v5p the number counts TensorCores, two per chip
(`v4-8` is 4 chips); for v5e (`v5e-N`, `v5litepod-N`) and v6e (`v6e-N`) it counts chips.

What JAX shows on a real slice: one device per TensorCore on v2 and v3 (8 on a v2-8); one
device per chip on v4 and v5p ("megacore": both cores of a chip act as one device); one per
chip on v5e and v6e (one core each). libtpu 0.0.42's topology descriptions agree for v2, v3,
v5p, v5e and v6e. For v4 they lay the chip out as two separate cores (8 devices for a v4-8),
and no option of `get_topology_desc` was found to ask for megacore: a v4 program compiled here
is the two-core program, with half a chip's HBM per device (`Slice.compiled_devices`).
"""

import dataclasses
import os
import re


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures of one TPU generation."""
  generation: str
  hbm_gib: float          # HBM per chip
  bf16_tflops: float      # peak dense bf16 matrix FLOP/s per chip, in TFLOP/s
  hbm_gbps: float         # HBM bandwidth per chip, GB/s
  cores: int              # TensorCores per chip
  megacore: bool          # JAX shows one device per chip (True) or per core (False)
  topology_dims: int      # 2D (v2/v3/v5e/v6e) or 3D (v4/v5p) torus names
  source: str


# Sources: Cloud TPU documentation, "TPU versions" / system architecture pages (checked
# 2026-12): v2 (45 TFLOP/s, 16 GiB, 700 GB/s per chip), v3 (123 TFLOP/s, 32 GiB, 900 GB/s),
# v4 (275 TFLOP/s, 32 GiB, 1,200 GB/s), v5e (197 TFLOP/s, 16 GiB, 819 GB/s), v5p (459 TFLOP/s,
# 95 GiB, 2,765 GB/s), v6e Trillium (918 TFLOP/s, 32 GiB, 1,640 GB/s).
_DOCS = "https://cloud.google.com/tpu/docs/"
CHIPS = {
    "v2": Chip("v2", 16, 45, 700, 2, False, 2, _DOCS + "v2"),
    "v3": Chip("v3", 32, 123, 900, 2, False, 2, _DOCS + "v3"),
    "v4": Chip("v4", 32, 275, 1200, 2, True, 3, _DOCS + "v4"),
    "v5e": Chip("v5e", 16, 197, 819, 1, False, 2, _DOCS + "v5e"),
    "v5p": Chip("v5p", 95, 459, 2765, 2, True, 3, _DOCS + "v5p"),
    "v6e": Chip("v6e", 32, 918, 1640, 1, False, 2, _DOCS + "v6e"),
}
# The number in the name counts TensorCores for these, chips for the others.
_COUNTS_CORES = ("v2", "v3", "v4", "v5p")
_ALIASES = {"v5litepod": "v5e", "v6litepod": "v6e"}
# Chips -> torus shape. 2D slices as Cloud TPU shapes them; 3D ones grow along z, then y.
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8)}
# Chips per host: single-host slices of up to 8 chips (v5e/v6e) or 4 (others), else 4 a host.
_SINGLE_HOST_MAX = {"v5e": 8, "v6e": 8}

EXAMPLES = ("v2-8", "v3-8", "v4-8", "v5p-8", "v5e-1", "v5litepod-8", "v5e-256", "v6e-1",
            "v6e-8")


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice: what it is, and how to describe it to libtpu."""
  name: str               # as typed
  chip: Chip
  chips: int
  devices: int            # what jax.devices() shows on the real slice
  hosts: int
  topology: str           # libtpu topology name, e.g. "v5e:2x2"
  chips_per_host: tuple[int, int, int]

  @property
  def hbm_gib_per_device(self) -> float:
    """HBM of one device of the real slice."""
    return self.chip.hbm_gib * self.chips / self.devices

  @property
  def compiled_devices(self) -> int:
    """Devices of the program compiled here (differs from `devices` for v4, see above)."""
    if self.chip.generation == "v4":
      return self.chips * self.chip.cores
    return self.devices

  @property
  def hbm_gib_per_compiled_device(self) -> float:
    return self.chip.hbm_gib * self.chips / self.compiled_devices

  def topology_kwargs(self) -> dict:
    return dict(chips_per_host_bounds=self.chips_per_host)


def parse_slice(name: str) -> Slice:
  """A Cloud TPU name (e.g. "v5e-1", "v5litepod-8", "v2-8", "v5p-8") -> `Slice`.

  Raises:
    ValueError: an unknown generation or a size that is not a slice shape; the message lists
      names that work.
  """
  m = re.fullmatch(r"\s*(v\d+[a-z]*|v\d+litepod)-(\d+)\s*", name.lower())
  known = ", ".join(EXAMPLES)
  if not m:
    raise ValueError(f"--topology={name!r} is not a TPU slice name; use one like {known} "
                     "(generation-size, as Cloud TPU names them).")
  gen, size = _ALIASES.get(m.group(1), m.group(1)), int(m.group(2))
  if gen not in CHIPS:
    raise ValueError(f"--topology={name!r}: unknown TPU generation {m.group(1)!r}; known: "
                     f"{', '.join(CHIPS)} (e.g. {known}).")
  chip = CHIPS[gen]
  if gen in _COUNTS_CORES:
    if size % chip.cores:
      raise ValueError(f"--topology={name!r}: {gen} slices count TensorCores, {chip.cores} a "
                       f"chip; use a multiple of {chip.cores * 4} (e.g. {gen}-8).")
    chips = size // chip.cores
  else:
    chips = size
  shapes = _SHAPES_3D if chip.topology_dims == 3 else _SHAPES_2D
  if chips not in shapes:
    sizes = sorted(n * (chip.cores if gen in _COUNTS_CORES else 1) for n in shapes)
    raise ValueError(f"--topology={name!r}: no {gen} slice of that size; sizes: "
                     f"{', '.join(f'{gen}-{n}' for n in sizes)}.")
  shape = shapes[chips]
  per_host_max = _SINGLE_HOST_MAX.get(gen, 4)
  if chips <= per_host_max:
    per_host = shape + (1,) * (3 - len(shape))
  else:
    per_host = (2, 2, 1)
  hosts = chips // (per_host[0] * per_host[1] * per_host[2])
  devices = chips if (chip.megacore or chip.cores == 1) else chips * chip.cores
  return Slice(name=name.strip(), chip=chip, chips=chips, devices=devices, hosts=hosts,
               topology=f"{gen}:{'x'.join(map(str, shape))}", chips_per_host=per_host)


def slice_of(devices) -> Slice:
  """The slice a list of real TPU devices (`jax.devices()` on a TPU VM or Colab) makes up."""
  kind = devices[0].device_kind.lower()
  m = re.match(r"tpu (v\d+)( lite|e|p)?", kind)
  if not m:
    raise ValueError(f"{devices[0].device_kind!r} is not a TPU this module knows.")
  gen = m.group(1) + {" lite": "e", "e": "e", "p": "p"}.get(m.group(2) or "", "")
  if gen == "v5":                      # "TPU v5" is the v5p
    gen = "v5p"
  chip = CHIPS[gen]
  chips = len(devices) if (chip.megacore or chip.cores == 1) else len(devices) // chip.cores
  size = chips * chip.cores if gen in _COUNTS_CORES else chips
  return parse_slice(f"{gen}-{size}")


def topology_devices(tpu_slice: Slice) -> list:
  """The devices of `tpu_slice` as libtpu describes them (no TPU needed; libtpu needed)."""
  try:
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise ImportError('compiling for a TPU here needs libtpu: pip install -e ".[tpu]"') from None
  # libtpu takes a machine-wide lock file on load, which would stop a second compiling process
  # (a test worker, a second check); there is no TPU here to share, so skip it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  topo = topologies.get_topology_desc(topology_name=tpu_slice.topology, platform="tpu",
                                      **tpu_slice.topology_kwargs())
  return list(topo.devices)
