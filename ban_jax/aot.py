r"""Will this run fit a TPU slice, and how fast could it go? Checked here, before renting one.

    pip install -e ".[tpu]"        # libtpu: compiles for any TPU slice on this machine
    python -m ban_jax.aot --config=configs/wiki.py:default --topology=v5e-1
    python -m ban_jax.aot --config=configs/wiki.py:wikipedia --topology=v5e-256 \
        --config.mesh.fsdp=256 --config.mesh.data=1 --largest_batch

Compiles the run's train step (its selection strategy's, as training would), the eval step and
one cached decoding step for the named slice, laid out over every chip of every host as a run
would lay them out (the config's (data, fsdp) mesh), and prints per device: HBM used (arguments,
temporaries, outputs, code) against the device's HBM, compile time, FLOPs per step and a
roofline bound on the step time and MFU from the chip's published peak FLOP/s and HBM
bandwidth (`ban_jax.parallel.tpu.CHIPS`, with sources). Nothing is downloaded and no dataset is
opened.

Exit status 0 when the train step fits; 2 (one `error:` line) when it does not, naming the
largest global batch that does (`--largest_batch` finds it when it fits, too), or for a bad
--topology, a bad config, or no libtpu.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

from ban_jax.errors import UserError
from ban_jax.main import _CONFIG  # the same --config (and overrides) as training
from ban_jax.main import _fail
from ban_jax.main import _parse_flags

_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, as Cloud TPU names it: v5e-1, "
                                "v5litepod-8, v6e-1, v2-8, v4-8, v5p-8, v5e-256, ...")
_PROGRAMS = flags.DEFINE_list("programs", ["train", "eval", "decode"],
                              "Which programs to compile: train, eval, decode.")
_LARGEST = flags.DEFINE_bool("largest_batch", False, "Also find the largest global batch whose "
                             "train step fits (two more compiles) when the config's fits.")
_OUT = flags.DEFINE_string("out", "", "Also write the report as JSON here.")
_HEADROOM = flags.DEFINE_float("hbm_fraction", 1.0, "Count as fitting only up to this fraction "
                               "of a device's HBM (e.g. 0.8 to leave room).")


def log(msg):
  print(msg, flush=True)


def _size(num_bytes: float) -> str:
  if num_bytes >= 2 ** 30:
    return f"{num_bytes / 2 ** 30:.2f} GiB"
  return f"{num_bytes / 2 ** 20:.1f} MiB"


def check(config, topology: str = "", programs=("train", "eval", "decode"), largest=False,
          hbm_fraction=1.0, devices=None, data=None) -> dict:
  """Compiles `config` for the slice `topology`; returns the report (see the module doc).

  On a TPU, `devices=jax.devices()` (and `data=setup.build_data(config)`) compile for the
  chips at hand instead: the train step is then the very program training compiles, which it
  loads from the persistent compilation cache (`setup.enable_compilation_cache`).
  """
  from ban_jax.parallel import tpu  # pylint: disable=g-import-not-at-top
  from ban_jax.training import aot  # pylint: disable=g-import-not-at-top
  try:
    tpu_slice = tpu.slice_of(devices) if devices else tpu.parse_slice(topology)
  except ValueError as e:
    raise UserError(str(e)) from None
  if not devices:
    try:
      devices = tpu.topology_devices(tpu_slice)
    except ImportError as e:
      raise UserError(str(e)) from None
  n = len(devices)
  hbm = tpu_slice.hbm_gib_per_compiled_device * aot.GIB
  if devices[0].platform == "tpu" and not topology:
    stats = devices[0].memory_stats() or {}   # a real chip: what its allocator can hand out
    hbm = stats.get("bytes_limit") or hbm
  budget = hbm * hbm_fraction
  chip = tpu_slice.chip
  report = dict(
      preset=config.get("preset", ""), topology=tpu_slice.name, libtpu_topology=tpu_slice.topology,
      chips=tpu_slice.chips, hosts=tpu_slice.hosts, devices_on_the_slice=tpu_slice.devices,
      devices_compiled=n, device_kind=devices[0].device_kind,
      hbm_per_device_bytes=int(hbm), hbm_fraction=hbm_fraction,
      chip=dict(generation=chip.generation, hbm_gib=chip.hbm_gib, bf16_tflops=chip.bf16_tflops,
                hbm_gbps=chip.hbm_gbps, source=chip.source),
      mesh=dict(data=config.mesh.data, fsdp=config.mesh.fsdp),
      global_batch=config.train.batch_size, seq_len=config.data.seq_len, programs={})
  log(f"{report['preset'] or 'config'} on {tpu_slice.name}: {tpu_slice.chips} chip(s), {n} "
      f"device(s) of {hbm / aot.GIB:.1f} GiB HBM ({devices[0].device_kind}, libtpu topology "
      f"{tpu_slice.topology}, {tpu_slice.hosts} host(s)); global batch "
      f"{config.train.batch_size} x {config.data.seq_len} tokens")
  if n != tpu_slice.devices:
    log(f"note: libtpu lays this {chip.generation} slice out as {n} devices (one per "
        f"TensorCore); on the real slice jax.devices() shows {tpu_slice.devices} (one per chip, "
        "megacore). Figures below are per TensorCore.")
  compiled = {}
  for name in programs:
    fn = dict(train=aot.compile_train, eval=aot.compile_eval, decode=aot.compile_decode)[name]
    log(f"compiling the {name} step for {tpu_slice.name} ...")
    c = fn(config, devices, data)
    compiled[name] = c
    report["programs"][name] = c.as_dict()
    log(f"  {name}: {_size(c.total)} per device of {hbm / aot.GIB:.1f} GiB "
        f"({100 * c.total / hbm:.1f}%): arguments {_size(c.arguments)}, temporaries "
        f"{_size(c.temporaries)}, outputs {_size(c.outputs)}, code {_size(c.code)}; "
        f"{c.kernel_calls} Pallas kernel call(s); compiled in {c.compile_s:.1f} s")

  per_device_batch = config.train.batch_size // n if config.train.batch_size % n == 0 else None
  if "train" in compiled and per_device_batch:
    t0 = time.perf_counter()
    counted = aot.count_flops(aot.with_batch(config, per_device_batch))
    peak = chip.bf16_tflops * 1e12 * tpu_slice.chips / n
    bandwidth = chip.hbm_gbps * 1e9 * tpu_slice.chips / n
    t_compute = counted["flops"] / peak
    # HBM traffic, a lower bound from the compiled plan: the state read once, the outputs
    # written once, every temporary written and read once. (The lowered program's "bytes
    # accessed" is unfused, ~45x this for the default preset; the compiled one counts loops once.)
    train = compiled["train"]
    traffic = train.arguments + train.outputs + 2 * train.temporaries
    t_memory = traffic / bandwidth
    step = max(t_compute, t_memory)
    tokens = config.train.batch_size * config.data.seq_len
    report["flops"] = dict(
        per_device=counted["flops"], per_step=counted["flops"] * n,
        analytic_per_step=counted["analytic_flops"] * n, method=counted["method"],
        params=counted["params"],
        count_s=time.perf_counter() - t0)
    report["roofline"] = dict(
        peak_flops_per_device=peak, hbm_bytes_per_s_per_device=bandwidth,
        hbm_traffic_bytes_per_device=traffic,
        traffic_method="arguments + outputs + 2 x temporaries of the compiled train step (each "
                       "temporary written and read at least once): a lower bound",
        compute_s=t_compute, memory_s=t_memory, step_s=step,
        bound="compute" if t_compute >= t_memory else "memory",
        mfu_bound=t_compute / step, tokens_per_s=tokens / step,
        note="a bound: real steps are slower (overheads, imperfect overlap, the extra updates of "
             "a selection strategy are not counted)")
    log(f"FLOPs per step: {counted['flops'] * n:.3e} ({counted['flops']:.3e} per device; "
        f"analytic 6·N·tokens + attention: {counted['analytic_flops'] * n:.3e}, ratio "
        f"{counted['flops'] / max(counted['analytic_flops'], 1):.2f}); counted by "
        f"{counted['method']}")
    log(f"roofline: compute {1e3 * t_compute:.1f} ms at {peak / 1e12:.0f} TFLOP/s, memory "
        f"{1e3 * t_memory:.1f} ms ({_size(traffic)} at least) at {bandwidth / 1e9:.0f} GB/s "
        f"per device -> >= "
        f"{1e3 * step:.1f} ms a step ({report['roofline']['bound']}-bound), <= "
        f"{tokens / step:,.0f} tokens/s, MFU <= {100 * t_compute / step:.0f}%")

  train = compiled.get("train")
  fits = train is None or train.total <= budget
  report["fits"] = fits
  if train is not None and (largest or not fits):
    batch, tried = aot.largest_batch(config, devices, int(budget), train, data, log=log)
    report["largest_batch"] = batch
    report["largest_batch_capped"] = batch >= aot.search_cap(config, len(devices))
    report["largest_batch_compiles"] = tried
    log(f"largest global batch that fits: {batch}" + (
        f" at least (the search stops at {aot.MAX_SEARCH_FACTOR}x the configured batch)"
        if report["largest_batch_capped"] else ""))
  if train is not None:
    log(f"fits: {'yes' if fits else 'NO'} ({_size(train.total)} of {hbm / aot.GIB:.1f} GiB "
        f"per device, limit {100 * hbm_fraction:.0f}%); first step after "
        f"~{train.compile_s:.0f} s of compilation on this machine")
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _TOPOLOGY.value:
    _fail("--topology is required: a TPU slice such as v5e-1, v5litepod-8, v6e-1, v2-8, v4-8, "
          "v5p-8 or v5e-256.")
  bad = sorted(set(_PROGRAMS.value) - {"train", "eval", "decode"})
  if bad:
    _fail(f"--programs: {bad[0]!r} is not one of train, eval, decode.")
  logging.set_verbosity(logging.WARNING)
  try:
    report = check(_CONFIG.value, _TOPOLOGY.value, tuple(_PROGRAMS.value), _LARGEST.value,
                   _HEADROOM.value)
  except UserError as e:
    _fail(str(e))
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value + ".tmp", "w") as f:
      json.dump(report, f, indent=1)
    os.replace(_OUT.value + ".tmp", _OUT.value)
  if not report["fits"]:
    train = report["programs"]["train"]
    batch = report.get("largest_batch", 0)
    advice = (f"the largest global batch that fits is {batch} (--config.train.batch_size="
              f"{batch})" if batch else "no batch of at least one row per device fits: use "
              "more chips, --config.mesh.fsdp to shard the state, or a smaller model")
    _fail(f"{report['preset'] or 'the config'} does not fit {report['topology']}: the train "
          f"step needs {train['total'] / 2**30:.2f} GiB per device of "
          f"{report['hbm_per_device_bytes'] / 2**30:.1f} GiB; {advice}.")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
