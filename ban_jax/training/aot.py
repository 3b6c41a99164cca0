"""A run's programs compiled ahead of time for devices that need not be here (a TPU slice).

The same seams a run uses (`setup.build`, `Plan.train_step_jit`, `Plan.jit_eval_step`, the
decoder), on a mesh of the target's devices (`mesh.make_mesh(..., devices=)`), with abstract
inputs that carry the run's shardings: what compiles here is the program the slice would run.
No dataset is opened (the vocabulary and the window count come from the config).

FLOPs are not read from the compiled program (its cost analysis counts a loop body once and sees
nothing inside a Mosaic kernel). They come from the plain train step lowered for one device at
the per-device batch with the attention materialised (`implementation="reference"`, no loops)
and the attractor unrolled: XLA's cost analysis of that loop-free program.
"""

import copy
import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ban_jax import config_validation
from ban_jax.data.tokenizer import ByteTokenizer
from ban_jax.errors import UserError
from ban_jax.inference import decode as decode_lib
from ban_jax.models import scan
from ban_jax.ops.gravity import platform as gravity_platform
from ban_jax.ops import kv_cache as kv_ops
from ban_jax.parallel import mesh as mesh_lib
from ban_jax.training import budget
from ban_jax.training import selection
from ban_jax.training import setup
from ban_jax.training import steps

GIB = 2 ** 30


def vocab_size(config: ml_collections.ConfigDict) -> int:
  """The tokenizer's vocabulary without reading data (spm: the size it is trained to)."""
  if config.data.tokenizer == "bytes":
    return ByteTokenizer.vocab_size
  return int(config.data.spm_vocab_size)


def planned_windows(config: ml_collections.ConfigDict) -> int:
  """Windows the selection state is sized for: one epoch of the run's steps (no data read)."""
  return max(config.train.batch_size, config.train.steps * config.train.batch_size)


@dataclasses.dataclass
class Compiled:
  """One compiled program's memory per device and its compile time."""
  name: str
  compile_s: float
  arguments: int
  outputs: int
  temporaries: int
  code: int
  aliased: int
  kernel_calls: int = 0     # Pallas custom calls in the program (the fused attention kernels)

  @property
  def total(self) -> int:
    return self.arguments + self.outputs + self.temporaries + self.code - self.aliased

  def as_dict(self) -> dict:
    return dict(dataclasses.asdict(self), total=self.total)


def _lower(jitted, devices, *args):
  """Lowers for `devices`' platform: gravity attention picks and lowers its kernels for the
  target (a TPU slice), not for this host."""
  with gravity_platform.compiling_for(devices[0].platform, devices[0].device_kind):
    return jitted.lower(*args)


def _compile(name, lowered) -> Compiled:
  text = lowered.as_text()
  kernels = text.count("tpu_custom_call") + text.count("__gpu$xla.gpu.triton")
  t0 = time.perf_counter()
  compiled = lowered.compile()
  seconds = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  return Compiled(name=name, compile_s=seconds, kernel_calls=kernels,
                  arguments=int(ma.argument_size_in_bytes),
                  outputs=int(ma.output_size_in_bytes),
                  temporaries=int(ma.temp_size_in_bytes),
                  code=int(ma.generated_code_size_in_bytes),
                  aliased=int(ma.alias_size_in_bytes))


def with_batch(config: ml_collections.ConfigDict, batch_size: int) -> ml_collections.ConfigDict:
  config = copy.deepcopy(config)
  with config.unlocked():
    config.train.batch_size = batch_size
  return config


def build(config: ml_collections.ConfigDict, devices, data=None) -> tuple[Any, Any, Any]:
  """(plan, strategy, mesh) of `config` laid out over `devices` as a run would lay it out.

  With `data` (`setup.build_data(config)`), the vocabulary, token bytes and window count are
  the run's own, so the program is the very one `train_and_evaluate` compiles (and finds in
  the persistent compilation cache); without, they come from the config alone.
  """
  model_config = config_validation.validate(config)
  mesh = mesh_lib.make_mesh(config.mesh, devices=devices)
  for key in ("train.batch_size", "eval.batch_size"):
    block, field = key.split(".")
    value = config[block][field]
    if value % mesh.size:
      fix = mesh.size * max(1, value // mesh.size)
      raise UserError(f"{key}={value} must be a multiple of the {mesh.size} devices of the "
                      f"mesh; e.g. --config.{key}={fix}.")
  if data is None:
    windows = planned_windows(config)
    steps_per_epoch = max(1, windows // config.train.batch_size)
    vocab = vocab_size(config)
    token_bytes = jnp.ones([vocab], jnp.float32)
  else:
    windows, steps_per_epoch = len(data.train.split.windows), data.train.steps_per_epoch
    vocab = data.tokenizer.vocab_size
    token_bytes = jnp.asarray(data.tokenizer.token_bytes, jnp.float32)
  strategy = selection.from_config(config.wells, num_examples=windows,
                                   steps_per_epoch=steps_per_epoch,
                                   total_steps=config.train.steps)
  plan = setup.build(config, vocab, mesh, strategy=strategy, token_bytes=token_bytes,
                     model_config=model_config)
  return plan, strategy, mesh


def abstract_batch(batch_size: int, seq_len: int, sharding) -> dict:
  """A training/eval batch as ShapeDtypeStructs laid out by `sharding`."""
  def spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
  tokens = spec((batch_size, seq_len), jnp.int32)
  return dict(inputs=tokens, targets=tokens, segment_ids=tokens, positions=tokens,
              weights=spec((batch_size, seq_len), jnp.float32),
              index=spec((batch_size,), jnp.int32))


def compile_train(config, devices, data=None) -> Compiled:
  """The train step the run uses (the selection strategy's, if it draws)."""
  plan, strategy, _ = build(config, devices, data)
  fn, num_batches = plan.train_step_jit(strategy)
  batch = abstract_batch(config.train.batch_size, config.data.seq_len, plan.batch_sharding)
  return _compile("train", _lower(fn, devices, plan.abstract, *[batch] * num_batches))


def compile_eval(config, devices, data=None) -> Compiled:
  plan, _, _ = build(config, devices, data)
  batch = abstract_batch(config.eval.batch_size, config.data.seq_len, plan.batch_sharding)
  return _compile("eval", _lower(plan.jit_eval_step(), devices, plan.abstract.params, batch))


def compile_decode(config, devices, data=None) -> Compiled:
  """One cached decoding step (a token per sequence, one sequence per device) against a full
  cache of seq_len slots: what sampling during training runs."""
  plan, _, mesh = build(config, devices, data)
  batch = mesh.size
  # Sampling decodes the per-layer model (`train.py`), so the check compiles that one.
  model, params = plan.model, plan.abstract.params
  if config.model.get("scan_layers", False):
    model, _ = scan.unscanned(plan.model, None)
    params = jax.eval_shape(functools.partial(scan.unstack, layer_format=model.LAYER_FORMAT),
                            params)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          params, mesh_lib.state_shardings(mesh, params))
  decoder = decode_lib.Decoder(model, kv_ops.KVSpec("full", slots=config.data.seq_len))
  prompt = jax.ShapeDtypeStruct((batch, config.data.seq_len), jnp.int32)
  _, cache = jax.eval_shape(decoder.prefill_fn, params, prompt)
  batch_sharding = mesh_lib.batch_sharding(mesh)

  def lay_out(x):
    sharding = batch_sharding if x.ndim and x.shape[0] == batch else plan.replicated
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  cache = jax.tree.map(lay_out, cache)
  one = jax.ShapeDtypeStruct((batch, 1), jnp.int32, sharding=batch_sharding)
  surprisal = jax.ShapeDtypeStruct((batch, 1), jnp.float32, sharding=batch_sharding)
  return _compile("decode", _lower(decoder.step_fn, devices, params, cache, one, one,
                                   surprisal))


def count_flops(config) -> dict:
  """FLOPs of one plain train step per device, from a loop-free lowering.

  The plain step (no selection), at the per-device batch (`config.train.batch_size` must
  already be the per-device batch), attention materialised, attractor unrolled, lowered for
  the host's first device (not compiled).
  """
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model.attention_options = ml_collections.ConfigDict({"implementation": "reference"})
    if "unroll" in config.model:
      config.model.unroll = True
    if "scan_layers" in config.model:      # a scan, too, is a loop counted once
      config.model.scan_layers = False
    config.mesh.data, config.mesh.fsdp = 1, 1
    config.wells.mode = "off"
    config.eval.batch_size = config.train.batch_size
  plan, _, _ = build(config, jax.devices()[:1])
  batch = abstract_batch(config.train.batch_size, config.data.seq_len, plan.batch_sharding)
  cost = plan.jit_step(steps.train_step).lower(plan.abstract, batch).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  num_params = setup.count_params(plan.abstract.params)
  return dict(flops=float(cost.get("flops", 0.0)),
              analytic_flops=budget.analytic_flops(config, num_params), params=num_params,
              method="XLA cost analysis of the plain train step lowered for one device at the "
                     "per-device batch, attention materialised (implementation=reference), "
                     "attractor unrolled, layers not scanned: no loops, so nothing is counted once "
                     "for many")


MAX_FIT_COMPILES = 8  # after the line's two points: a bound on one search's compiles
# The search compiles no batch above this multiple of the configured one: a tiny model's line
# predicts batches (60,446 rows for smoke on a v5e; more on a v5p's 95 GiB) whose compile
# alone takes most of an hour, for a size nobody trains at. A batch that fits at the cap is
# reported as "at least" it.
MAX_SEARCH_FACTOR = 64


def search_cap(config, n: int) -> int:
  """The largest global batch `largest_batch` compiles for `config` on `n` devices."""
  return max(config.train.batch_size * MAX_SEARCH_FACTOR // n * n, n)


def largest_batch(config, devices, hbm_bytes: int, first: Compiled, data=None,
                  log=lambda msg: None) -> tuple[int, list[dict]]:
  """The largest global batch whose train step fits `hbm_bytes` per device.

  Memory is close to linear in the batch: a second compile at another batch fits the line, a
  third verifies the batch it predicts (stepping down a device's worth of rows until one fits).
  A batch so far past the line that the compiler runs out of HBM is bisected against the
  largest batch known to fit; at most MAX_FIT_COMPILES compiles after the first two. No batch
  above `search_cap` is compiled: where the line reaches past it (or memory does not grow
  between the first two batches, constants dominating), the cap itself is tried, and a cap
  that fits is returned, meaning "at least this".
  Returns (batch, the compiles made, as dicts).
  """
  n = len(devices)
  b1 = config.train.batch_size
  cap = search_cap(config, n)
  b2 = b1 // 2 if b1 // 2 >= n and (b1 // 2) % n == 0 else b1 * 2
  second = compile_train(with_batch(config, b2), devices, data)
  log(f"train step at batch {b2}: {second.total / GIB:.2f} GiB per device "
      f"({second.compile_s:.0f} s)")
  tried = [dict(batch=b2, total=second.total, compile_s=second.compile_s)]
  slope = (second.total - first.total) / (b2 - b1)
  if slope > 0:
    guess = min(int((hbm_bytes - first.total) / slope + b1) // n * n, cap)
  else:
    guess = cap
  # Fitting batches known so far (`first` is the configured batch, which fits when this runs).
  fits = [b for b, c in ((b1, first), (b2, second)) if c.total <= hbm_bytes]
  lo, hi = max(fits, default=0), None
  for _ in range(MAX_FIT_COMPILES):
    if guess < n or guess <= lo or (hi is not None and guess >= hi):
      break
    try:
      check = compile_train(with_batch(config, guess), devices, data)
    except Exception as e:  # pylint: disable=broad-except
      # Far past the line (a tiny model's predicted batch) the compiler itself runs out of HBM.
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      tried.append(dict(batch=guess, total=None, compile_s=None))
      log(f"train step at batch {guess}: the compiler ran out of HBM")
      hi = guess
      guess = (lo + hi) // 2 // n * n
      continue
    tried.append(dict(batch=guess, total=check.total, compile_s=check.compile_s))
    log(f"train step at batch {guess}: {check.total / GIB:.2f} GiB per device "
        f"({check.compile_s:.0f} s)")
    if check.total > first.total and guess != b1:   # the farther point fits the line better
      slope = (check.total - first.total) / (guess - b1)
    if check.total <= hbm_bytes:
      if guess >= cap or hi is None or hi - guess <= n:
        return guess, tried
      lo = guess
      guess = (lo + hi) // 2 // n * n
    else:
      hi = guess
      guess -= n * max(1, int((check.total - hbm_bytes) / max(slope * n, 1)))
  return lo, tried
