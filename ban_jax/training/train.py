"""`train_and_evaluate(config, workdir)`: data → model → jitted steps → checkpoints → metrics."""

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ban_jax import config_validation
from ban_jax import models
from ban_jax.data import pipeline
from ban_jax.data import sources
from ban_jax.errors import UserError
from ban_jax.parallel import mesh as mesh_lib
from ban_jax.training import checkpoints
from ban_jax.training import injection
from ban_jax.training import optimizer as optimizer_lib
from ban_jax.training import plots
from ban_jax.training import sampling
from ban_jax.training import steps as steps_lib
from ban_jax.training import writers
from ban_jax.training.state import TrainState

# Fields that fix the shapes or meaning of the parameters; a resumed run must match them.
RESUME_KEYS = ("model", "data.tokenizer", "data.spm_model", "data.spm_vocab_size", "seed",
               "data.source", "data.tfds_name", "data.dump_dir", "data.train_split",
               "data.text_key", "data.seq_len", "train.batch_size", "wells")


@dataclasses.dataclass
class Data:
  tokenizer: object
  train: pipeline.Dataset
  validation: pipeline.Split
  heldout: pipeline.Split | None
  name: str


def build_data(config: ml_collections.ConfigDict) -> Data:
  """Opens (building on first use) the dataset, the tokenizer and the held-out text."""
  splits, name = sources.open_splits(config.data)
  tokenizer = sources.make_tokenizer(config.data, splits["train"])
  train = pipeline.open_split(splits["train"], name + ":train", tokenizer, config.data)
  validation = pipeline.open_split(splits["validation"], name + ":validation", tokenizer,
                                   config.data)
  heldout = None
  path = pipeline.heldout_path(config.eval.heldout_path)
  if path:
    with open(path, "rb") as f:
      heldout = pipeline.text_split(f.read(), tokenizer, config.data.seq_len)
  elif config.eval.heldout_path == "auto":
    logging.info("held-out text ../shared/data/wikitext2_valid.txt not found: skipping the "
                 "held-out evaluation.")
  dataset = pipeline.Dataset(train, global_batch=config.train.batch_size, seed=config.seed,
                             read_threads=config.data.read_threads, prefetch=config.data.prefetch)
  logging.info("data %s: %d train windows (%d docs, %d tokens), %d validation windows; "
               "%d steps per epoch", name, len(train.windows), train.num_documents,
               train.windows.num_tokens, len(validation.windows), dataset.steps_per_epoch)
  return Data(tokenizer, dataset, validation, heldout, name)


def check_workdir(workdir: str) -> str:
  """Fails early if `workdir` could not be created or written; creates nothing."""
  if not workdir:
    raise UserError("--workdir is required: the folder for checkpoints, metrics and plots.")
  if "://" in workdir:
    raise UserError(f"workdir {workdir}: only filesystem paths are supported (metrics are "
                    "appended line by line); on a multi-host TPU or GPU cluster mount the "
                    "bucket on every host (e.g. gcsfuse) and pass the mounted path.")
  workdir = os.path.abspath(workdir)
  parent = workdir
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"workdir {workdir} is not writable ({parent} is not a writable folder); "
                    "pass a --workdir you can write to.")
  return workdir


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` and proves it writable."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable ({e.strerror}); pass a --workdir you "
                    "can write to.") from e
  return workdir


def _differences(a, b, prefix=""):
  """Dotted keys whose values differ between two nested dicts."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
    return out
  return [] if a == b else [(prefix[:-1], a, b)]


def _check_resumable(workdir: str, config):
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  mine = config.to_dict()
  for key in RESUME_KEYS:
    block, _, field = key.partition(".")
    a, b = saved.get(block, {}), mine.get(block, {})
    if field:
      a, b = a.get(field), b.get(field)
    diff = _differences(a, b, key + ".")
    if diff:
      name, theirs, ours = diff[0]
      raise UserError(f"{workdir} holds a run trained with {name}={theirs!r}, but this config "
                      f"has {name}={ours!r}; resume with the same settings or use a fresh "
                      "--workdir.")
  if saved.get("train", {}).get("steps") != config.train.steps:
    logging.warning("resuming with train.steps=%d (was %s): the learning-rate schedule changes "
                    "from here on, so this is a continuation, not an exact resume.",
                    config.train.steps, saved.get("train", {}).get("steps"))


def _write_json(path: str, obj):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def init_state(model, tx, config, rng) -> TrainState:
  """A fresh TrainState (pure; run it under jit with output shardings)."""
  init_rng, state_rng = jax.random.split(rng)
  tokens = jnp.zeros([1, config.data.seq_len], jnp.int32)
  params = model.init({"params": init_rng, "dropout": init_rng}, tokens,
                      segment_ids=jnp.ones_like(tokens), positions=jnp.zeros_like(tokens),
                      deterministic=True)["params"]
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params),
                    rng=state_rng)


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def evaluate(eval_fn, params, split: pipeline.Split, batch_size: int, max_batches: int,
             sharding) -> dict[str, float]:
  """bits/byte and loss (nats/token) over a split."""
  totals = {"nats": 0.0, "bytes": 0.0, "tokens": 0.0}
  for batch in pipeline.eval_batches(split, batch_size, max_batches):
    local = mesh_lib.process_slice(batch)
    sums = jax.device_get(eval_fn(params, mesh_lib.global_batch(local, sharding)))
    for k in totals:
      totals[k] += float(sums[k])
  return {"bits_per_byte": totals["nats"] / math.log(2) / max(totals["bytes"], 1.0),
          "loss": totals["nats"] / max(totals["tokens"], 1.0)}


@dataclasses.dataclass
class Plan:
  """One config on one mesh: the model, its optimizer, and sharded, jitted init and steps.

  Attributes:
    model, tx, schedule: the network, the optax transformation and its learning rate.
    init: rng -> TrainState, jitted with the state's output shardings.
    abstract: the TrainState as ShapeDtypeStructs carrying their shardings (restore target).
    state_sharding, batch_sharding: shardings of the state pytree and of a batch.
    replicated: the sharding of a step's other outputs (metrics, well draws), so that every
      process can read them.
    step_kw: the keyword arguments every train step takes (model, tx, schedule, ...).
  """
  model: Any
  tx: Any
  schedule: Any
  init: Callable[[jax.Array], TrainState]
  abstract: TrainState
  state_sharding: Any
  batch_sharding: Any
  replicated: Any
  step_kw: dict

  def jit_step(self, fn: Callable, *, num_batches: int = 1, num_outputs: int = 2) -> Callable:
    """jit(fn(state, *batches, **step_kw)) with shardings, the state donated."""
    return jax.jit(functools.partial(fn, **self.step_kw),
                   in_shardings=(self.state_sharding,) + (self.batch_sharding,) * num_batches,
                   out_shardings=(self.state_sharding,) + (self.replicated,) * (num_outputs - 1),
                   donate_argnums=(0,))


def build(config: ml_collections.ConfigDict, vocab_size: int, mesh, *, token_bytes,
          extend_state: Callable[[TrainState, jax.Array], TrainState] | None = None) -> Plan:
  """Model, optimizer and sharded init for `config` on `mesh` (extend_state adds e.g. wells)."""
  model = models.get_model(config.model, vocab_size)
  total_steps = config.train.steps
  tx = optimizer_lib.make_optimizer(config.optimizer, total_steps)
  schedule = optimizer_lib.learning_rate_schedule(config.optimizer, total_steps)

  def init_fn(rng):
    state = init_state(model, tx, config, rng)
    return extend_state(state, rng) if extend_state else state

  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  state_sharding = mesh_lib.state_shardings(mesh, abstract)
  if abstract.wells is not None:
    # Sampling takes a cumsum over every slot: keep the selection state whole on each device.
    state_sharding = state_sharding.replace(wells=jax.tree.map(
        lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
        state_sharding.wells))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sharding)
  return Plan(model=model, tx=tx, schedule=schedule,
              init=jax.jit(init_fn, out_shardings=state_sharding), abstract=abstract,
              state_sharding=state_sharding, batch_sharding=mesh_lib.batch_sharding(mesh),
              replicated=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
              step_kw=dict(model=model, tx=tx, schedule=schedule, z_loss=config.train.z_loss,
                           token_bytes=token_bytes))


@contextlib.contextmanager
def _closing_on_error(writer, ckpt):
  """On an exception, flush the metrics and let an in-flight async checkpoint finish."""
  try:
    yield
  except BaseException:
    writer.close()
    ckpt.close()
    raise


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns final metrics."""
  # Everything that can fail on bad input runs before the workdir is touched.
  config_validation.validate(config)
  workdir = check_workdir(workdir)
  _check_resumable(workdir, config)
  if config.mesh.distributed and not jax.distributed.is_initialized():
    explicit = {}
    if config.mesh.coordinator_address:  # else detected from the cluster environment
      explicit = dict(coordinator_address=config.mesh.coordinator_address,
                      num_processes=config.mesh.num_processes,
                      process_id=config.mesh.process_id)
    jax.distributed.initialize(**explicit)
  mesh = mesh_lib.make_mesh(config.mesh)
  for key in ("train.batch_size", "eval.batch_size"):
    block, field = key.split(".")
    if config[block][field] % mesh.size:
      raise UserError(f"{key}={config[block][field]} must be a multiple of the {mesh.size} "
                      "devices of the mesh.")
  data = build_data(config)
  mode = config.wells.mode
  num_examples = len(data.train.split.windows)
  extend = None
  if mode != "off":
    extend = lambda state, rng: state.replace(wells=injection.init(
        config.wells, num_examples, config.train.batch_size, jax.random.fold_in(rng, 1)))
  token_bytes = jnp.asarray(data.tokenizer.token_bytes, jnp.float32)
  plan = build(config, data.tokenizer.vocab_size, mesh, token_bytes=token_bytes,
               extend_state=extend)
  prepare_workdir(workdir)
  total_steps = config.train.steps
  rng = jax.random.PRNGKey(config.seed)

  ckpt = checkpoints.Checkpointer(
      os.path.join(workdir, "checkpoints"), every_steps=config.checkpoint.every_steps,
      keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  data_iter = data.train.iterator()
  latest = ckpt.latest_step()
  if latest is not None:
    state = ckpt.restore(latest, plan.abstract, data_iter)
    logging.info("resumed from %s at step %d", workdir, latest)
  else:
    state = plan.init(rng)
    if jax.process_index() == 0:
      _write_json(os.path.join(workdir, "config.json"), config.to_dict())
  num_params = count_params(plan.abstract.params)
  logging.info("model %s: %s parameters", config.model.name, f"{num_params:,}")

  if mode == "off":
    train_step = plan.jit_step(steps_lib.train_step)
  else:
    train_step = plan.jit_step(
        functools.partial(injection.train_step, cfg=config.wells,
                          steps_per_epoch=data.train.steps_per_epoch, num_examples=num_examples,
                          inject_flags=injection.load_inject_steps(config.wells.inject_steps,
                                                                   total_steps)),
        num_batches=2, num_outputs=3)
    host_queue = injection.HostQueue(state, mode, data.train)
    trace = injection.StrengthTrace() if mode == "wells" else None
    injected_steps = []
  batch_sharding = plan.batch_sharding
  eval_fn = jax.jit(functools.partial(steps_lib.eval_step, model=plan.model,
                                      token_bytes=token_bytes),
                    in_shardings=(plan.state_sharding.params, batch_sharding))

  writer = writers.MetricWriter(workdir)
  tokens_per_step = config.train.batch_size * config.data.seq_len
  first_step = int(state.step)
  progress = writers.Progress(total_steps, tokens_per_step, first_step)
  run_start, eval_seconds = time.perf_counter(), 0.0
  pending = []
  final = {}

  def run_eval(step):
    results = {f"eval/{k}": v for k, v in evaluate(
        eval_fn, state.params, data.validation, config.eval.batch_size,
        config.eval.max_batches, batch_sharding).items()}
    if data.heldout is not None:
      results.update({f"heldout/{k}": v for k, v in evaluate(
          eval_fn, state.params, data.heldout, config.eval.batch_size,
          config.eval.heldout_max_batches, batch_sharding).items()})
    writer.write_scalars(step, results)
    logging.info("step %d eval: %s", step,
                 ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items())))
    return results

  with mesh, _closing_on_error(writer, ckpt):
    for step in range(first_step, total_steps):
      if mode == "off":
        batch = mesh_lib.global_batch(next(data_iter), batch_sharding)
        state, metrics = train_step(state, batch)
      else:
        regular, extra = host_queue.next(data_iter)
        state, metrics, draw = train_step(state, mesh_lib.global_batch(regular, batch_sharding),
                                          mesh_lib.global_batch(extra, batch_sharding))
        host_queue.push(draw)
      pending.append(metrics)
      done = step + 1
      if done % config.train.log_every == 0 or done == total_steps:
        host = jax.device_get(pending)
        if mode != "off":
          injected_steps += [done - len(host) + i for i, m in enumerate(host) if m["injected"]]
          if trace is not None:
            writer.write_histogram(done, "wells/strength", trace.record(done, state))
        scalars = {}
        for k in host[0]:
          v = np.asarray([m[k] for m in host], np.float64)
          if k == "extra_loss":  # NaN in the steps without an extra update
            if np.any(np.isfinite(v)):
              scalars[f"train/{k}"] = float(np.nanmean(v))
          else:
            scalars[f"train/{k}"] = float(np.mean(v))
        if not np.isfinite(scalars["train/loss"]):
          raise UserError(f"training diverged: the train loss is {scalars['train/loss']} in the "
                          f"steps up to {done}; the last finite checkpoint is in "
                          f"{workdir}/checkpoints. Lower optimizer.learning_rate (or raise "
                          "optimizer.warmup_steps) and resume or restart.")
        scalars["train/epoch"] = done / data.train.steps_per_epoch
        rates = progress.report(done)
        # Wall-clock spent training in this process (evaluation excluded), for speed comparisons.
        rates["train_sec"] = time.perf_counter() - run_start - eval_seconds
        writer.write_scalars(done, {**scalars, **{f"perf/{k}": v for k, v in rates.items()}})
        writers.log_progress(done, total_steps, scalars, rates)
        final.update(scalars)
        pending = []
      if done % config.eval.every_steps == 0 or done == total_steps:
        eval_start = time.perf_counter()
        final.update(run_eval(done))
        eval_seconds += time.perf_counter() - eval_start
      ckpt.save(done, state, data_iter, force=done == total_steps)
    if first_step >= total_steps:
      final.update(run_eval(first_step))

  sample = sampling.generate(
      plan.model, state.params, data.tokenizer, config.eval.sample_prompt,
      length=config.eval.sample_length, seq_len=config.data.seq_len,
      temperature=config.eval.sample_temperature,
      rng=jax.random.fold_in(state.rng, 1 << 30))
  writer.write_text(total_steps, "sample", sample)
  writer.close()
  ckpt.close()
  # Per-head masses are tiny and replicated: every process can read them, even under FSDP.
  flat = flax.traverse_util.flatten_dict(state.params, sep="/")
  masses = jax.device_get({k: v for k, v in flat.items() if k.endswith("gravity_mass_log")})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "sample.txt"), "w") as f:
      f.write(sample + "\n")
    plots.loss_curve(writers.read_metrics(workdir), os.path.join(workdir, "loss_curve.png"),
                     steps_per_epoch=data.train.steps_per_epoch,
                     title=f"{config.model.name} on {data.name}")
    plots.focus_usage(writers.read_metrics(workdir), os.path.join(workdir, "focus_usage.png"))
    plots.mass_heatmap(masses, os.path.join(workdir, "mass_heatmap.png"))
    if mode != "off" and first_step < total_steps:
      # Steps (0-based) whose extra update ran: the uniform control replays this list.
      _write_json(os.path.join(workdir, f"injected_steps_from_{first_step}.json"),
                  injected_steps)
      if trace is not None:
        trace.save(os.path.join(workdir, "well_strengths.png"), data.train.steps_per_epoch)
    final.update({"num_params": num_params, "steps": total_steps})
    _write_json(os.path.join(workdir, "final_metrics.json"), final)
  logging.info("sample: %s", sample)
  return final
