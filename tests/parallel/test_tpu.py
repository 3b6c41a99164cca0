"""TPU slice names (ban_jax/parallel/tpu.py): what each accepted name is on a real slice, and
that libtpu describes the same devices (when libtpu is installed)."""

import pytest

from ban_jax.parallel import tpu

# name -> (chips, devices jax.devices() shows on the real slice, HBM GiB per device, hosts).
# From Cloud TPU's documentation: v2/v3 show one device per TensorCore (2 a chip), v4/v5p one
# per chip (megacore), v5e/v6e one per chip.
REAL = {
    "v2-8": (4, 8, 8.0, 1),
    "v3-8": (4, 8, 16.0, 1),
    "v4-8": (4, 4, 32.0, 1),
    "v5p-8": (4, 4, 95.0, 1),
    "v5e-1": (1, 1, 16.0, 1),
    "v5litepod-8": (8, 8, 16.0, 1),
    "v5e-256": (256, 256, 16.0, 64),
    "v6e-1": (1, 1, 32.0, 1),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_each_accepted_name_is_the_real_slice(name):
  s = tpu.parse_slice(name)
  assert (s.chips, s.devices, s.hbm_gib_per_device, s.hosts) == REAL[name]


@pytest.mark.parametrize("name", ["V5E-1", " v5e-1 ", "v5litepod-1"])
def test_spellings(name):
  assert tpu.parse_slice(name).topology == "v5e:1x1"


@pytest.mark.parametrize("name,match", [
    ("v7-8", "unknown TPU generation 'v7'; known: v2, v3, v4, v5e, v5p, v6e"),
    ("v5e-3", "no v5e slice of that size; sizes: v5e-1, v5e-4"),
    ("v4-7", "count TensorCores, 2 a chip"),
    ("tpu", "is not a TPU slice name; use one like v2-8"),
])
def test_unknown_names_list_the_known_ones(name, match):
  with pytest.raises(ValueError, match=match):
    tpu.parse_slice(name)


@pytest.mark.parametrize("name", sorted(REAL))
def test_libtpu_describes_the_same_devices(name):
  # libtpu (the `tpu` extra) describes slices without a TPU; its v4 layout is the one known
  # difference (two devices a chip, where a real v4 slice shows megacore devices).
  pytest.importorskip("libtpu")
  s = tpu.parse_slice(name)
  devices = tpu.topology_devices(s)
  assert len(devices) == s.compiled_devices
  assert len({d.process_index for d in devices}) == s.hosts
  if s.chip.generation == "v4":
    assert s.compiled_devices == 2 * s.devices
  else:
    assert s.compiled_devices == s.devices
  assert devices[0].device_kind.startswith("TPU v" + s.chip.generation[1])


def test_no_libtpu_is_one_clear_error(monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "libtpu", None)
  with pytest.raises(ImportError, match=r'pip install -e "\.\[tpu\]"'):
    tpu.topology_devices(tpu.parse_slice("v5e-1"))


class _Device:
  def __init__(self, kind):
    self.device_kind = kind


@pytest.mark.parametrize("kind,count,name", [
    ("TPU v5 lite", 1, "v5e-1"), ("TPU v5 lite", 8, "v5e-8"), ("TPU v6 lite", 1, "v6e-1"),
    ("TPU v2", 8, "v2-8"), ("TPU v4", 4, "v4-8"), ("TPU v5", 4, "v5p-8"), ("TPU v5p", 4, "v5p-8"),
])
def test_the_slice_of_the_devices_a_real_slice_shows(kind, count, name):
  # What the Colab notebook's check calls on jax.devices().
  assert tpu.slice_of([_Device(kind)] * count) == tpu.parse_slice(name)
