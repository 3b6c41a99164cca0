"""Everything a run sets up before its first step: mesh, data, model, optimizer, state."""

import dataclasses
import functools
import os
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ban_jax import models
from ban_jax.data import pipeline
from ban_jax.data import sources
from ban_jax.errors import UserError
from ban_jax.parallel import mesh as mesh_lib
from ban_jax.training import checkpoints
from ban_jax.training import optimizer as optimizer_lib
from ban_jax.training import queue as queue_lib
from ban_jax.training import selection
from ban_jax.training import steps
from ban_jax.training.state import TrainState

# eval.heldout_path="auto" means HELDOUT_FILE in the folder named by $BAN_JAX_HELDOUT_DIR, else
# in DEFAULT_HELDOUT_DIR, the shared data folder beside this checkout; the held-out evaluation
# is skipped when the file is not there.
HELDOUT_FILE = "wikitext2_valid.txt"
HELDOUT_DIR_ENV = "BAN_JAX_HELDOUT_DIR"
DEFAULT_HELDOUT_DIR = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data"))


def heldout_path(configured: str) -> str | None:
  """The held-out text file that eval.heldout_path names, or None for no held-out evaluation."""
  if not configured:
    return None
  if configured == "auto":
    path = os.path.join(os.environ.get(HELDOUT_DIR_ENV) or DEFAULT_HELDOUT_DIR, HELDOUT_FILE)
    if os.path.exists(path):
      return path
    logging.info("held-out text %s not found: skipping the held-out evaluation.", path)
    return None
  if not os.path.exists(configured):
    raise UserError(f"eval.heldout_path={configured} does not exist; point it at a UTF-8 text "
                    "file, or set it to '' to skip the held-out evaluation.")
  return configured


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
  path = heldout_path(config.eval.heldout_path)
  if path:
    with open(path, "rb") as f:
      heldout = pipeline.text_split(f.read(), tokenizer, config.data.seq_len)
  dataset = pipeline.Dataset(train, global_batch=config.train.batch_size, seed=config.seed,
                             read_threads=config.data.read_threads, prefetch=config.data.prefetch)
  logging.info("data %s: %d train windows (%d docs, %d tokens), %d validation windows; "
               "%d steps per epoch", name, len(train.windows), train.num_documents,
               train.windows.num_tokens, len(validation.windows), dataset.steps_per_epoch)
  return Data(tokenizer, dataset, validation, heldout, name)


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """Joins the other processes (when distributed) and lays the devices out as a mesh."""
  cfg = config.mesh
  if cfg.distributed and not jax.distributed.is_initialized():
    explicit = {}
    if cfg.coordinator_address:  # else detected from the cluster environment
      explicit = dict(coordinator_address=cfg.coordinator_address,
                      num_processes=cfg.num_processes, process_id=cfg.process_id)
    jax.distributed.initialize(**explicit)
  mesh = mesh_lib.make_mesh(cfg)
  for key in ("train.batch_size", "eval.batch_size"):
    block, field = key.split(".")
    if config[block][field] % mesh.size:
      raise UserError(f"{key}={config[block][field]} must be a multiple of the {mesh.size} "
                      "devices of the mesh.")
  return mesh


def init_state(model, tx, config, rng) -> TrainState:
  """A fresh TrainState without selection (pure; run it under jit with output shardings)."""
  init_rng, state_rng = jax.random.split(rng)
  tokens = jnp.zeros([1, config.data.seq_len], jnp.int32)
  params = model.init({"params": init_rng, "dropout": init_rng}, tokens,
                      segment_ids=jnp.ones_like(tokens), positions=jnp.zeros_like(tokens),
                      deterministic=True)["params"]
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params),
                    rng=state_rng)


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# More passes than this over the training windows and the model mostly memorises them.
MAX_EPOCHS = 10


def planned_epochs(config: ml_collections.ConfigDict, num_train_windows: int) -> float:
  """train.steps / steps per epoch of the main data stream (selection's extra updates excluded).

  Args:
    config: a run config (train.steps, train.batch_size).
    num_train_windows: windows of data.seq_len tokens in the train split:
      `len(build_data(config).train.split.windows)`, or without packing,
      `(num_tokens - 1) // config.data.seq_len` for a split of `num_tokens` tokens counted with
      each document's BOS and EOS (`split.windows.num_tokens`).
  """
  per_epoch = num_train_windows // config.train.batch_size
  if per_epoch == 0:
    raise UserError(f"train.batch_size={config.train.batch_size} exceeds the "
                    f"{num_train_windows} training windows; lower the batch size or "
                    "data.seq_len.")
  return config.train.steps / per_epoch


def _extra_updates(config: ml_collections.ConfigDict, num_train_windows: int) -> tuple[int, str]:
  """(most extra updates, a sentence), as the configured selection strategy states them."""
  strategy = selection.from_config(
      config.wells, num_examples=num_train_windows,
      steps_per_epoch=max(num_train_windows // config.train.batch_size, 1),
      total_steps=config.train.steps)
  most = config.train.steps if strategy.uses_extra_batch else 0
  return most, strategy.extra_note


def analytic_flops(config: ml_collections.ConfigDict, num_params: int) -> float:
  """Training FLOPs per step, 6·params·tokens + 6·layers·seq_len·(heads·head_dim)·tokens.

  Kaplan et al.'s estimate (forward 2N + 2·layers·L·d_attn per token, backward twice that);
  BAN's branches and attractor steps are only in it through their parameters.
  """
  m, tokens = config.model, config.train.batch_size * config.data.seq_len
  attention = 6 * m.num_layers * config.data.seq_len * m.num_heads * m.head_dim
  return float(6 * num_params * tokens + attention * tokens)


def train_step_flops(plan: "Plan", config: ml_collections.ConfigDict,
                     num_params: int) -> tuple[float, str]:
  """(FLOPs of one regular update, how they were counted).

  XLA's cost analysis of the lowered (not compiled) plain train step: it costs a trace, no
  compile. Where the backend only analyses compiled code (GPU), the analytic estimate instead,
  since a second compile of the step would cost more than the number is worth.
  """
  b, length = config.train.batch_size, config.data.seq_len
  tokens = jax.ShapeDtypeStruct((b, length), jnp.int32)
  batch = dict(inputs=tokens, targets=tokens, segment_ids=tokens, positions=tokens,
               weights=jax.ShapeDtypeStruct((b, length), jnp.float32),
               index=jax.ShapeDtypeStruct((b,), jnp.int32))
  try:
    cost = plan.jit_step(steps.train_step).lower(plan.abstract, batch).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and cost.get("flops", 0) > 0:
      return float(cost["flops"]), "XLA cost analysis of the lowered train step"
  except Exception as e:  # pylint: disable=broad-except
    # Only a number for the log: never let counting stop the run.
    logging.info("XLA cost analysis unavailable (%s); estimating FLOPs.", e)
  return analytic_flops(config, num_params), "analytic 6·params·tokens + attention"


def plan_summary(config: ml_collections.ConfigDict, num_train_windows: int, *,
                 num_params: int | None = None, flops_per_step: float | None = None,
                 flops_source: str = "") -> dict[str, Any]:
  """What a run will do, from its config and its data's size alone (pure; no training).

  Args:
    config: the run config.
    num_train_windows: see `planned_epochs`.
    num_params, flops_per_step, flops_source: filled in when known (None: left out).

  Returns:
    {"tokens_per_epoch", "steps_per_epoch", "tokens_per_step", "steps", "planned_epochs",
     "extra_updates_max", "extra_updates", "num_params", "flops_per_step", "flops_source"}.
  """
  tokens_per_step = config.train.batch_size * config.data.seq_len
  per_epoch = num_train_windows // config.train.batch_size
  extra_max, extra_text = _extra_updates(config, num_train_windows)
  summary = {
      "steps": config.train.steps,
      "steps_per_epoch": per_epoch,
      "tokens_per_step": tokens_per_step,
      "tokens_per_epoch": per_epoch * tokens_per_step,
      "planned_epochs": planned_epochs(config, num_train_windows),
      "extra_updates_max": extra_max,
      "extra_updates": extra_text,
  }
  if num_params is not None:
    summary["num_params"] = int(num_params)
  if flops_per_step is not None:
    summary.update(flops_per_step=float(flops_per_step), flops_source=flops_source)
  return summary


def log_plan(summary: dict[str, Any]):
  """One info block with the plan; one warning if it trains for more than MAX_EPOCHS epochs."""
  lines = [f"plan: {summary['steps']:,} steps of {summary['tokens_per_step']:,} tokens",
           f"  tokens per epoch: {summary['tokens_per_epoch']:,} "
           f"({summary['steps_per_epoch']:,} steps)",
           f"  planned epochs: {summary['planned_epochs']:.2f} (main data stream only)",
           f"  extra updates: {summary['extra_updates']}"]
  if "num_params" in summary:
    lines.append(f"  parameters: {summary['num_params']:,}")
  if "flops_per_step" in summary:
    lines.append(f"  training FLOPs per step: {summary['flops_per_step']:.3e} "
                 f"({summary['flops_source']})")
  logging.info("\n".join(lines))
  epochs = summary["planned_epochs"]
  if epochs > MAX_EPOCHS:
    logging.warning("this run makes %.1f passes over the training data (more than %d): it will "
                    "mostly memorise it. Lower train.steps, or train.batch_size × data.seq_len, "
                    "or train on more data.", epochs, MAX_EPOCHS)


@dataclasses.dataclass
class Plan:
  """One config on one mesh: the model, its optimizer, and sharded, jitted init and steps.

  Attributes:
    model, tx, schedule: the network, the optax transformation and its learning rate.
    init: rng -> TrainState, jitted with the state's output shardings.
    abstract: the TrainState as ShapeDtypeStructs carrying their shardings (restore target).
    state_sharding, batch_sharding: shardings of the state pytree and of a batch.
    replicated: the sharding of a step's other outputs (metrics, draws), so that every process
      can read them.
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

  def jit_train_step(self, strategy: selection.Strategy) -> Callable:
    """(state, *batches) -> (state, metrics, draw), jitted; `draw` is None without draws.

    The batches are those the strategy's HostQueue gives: one, or regular and extra.
    """
    if not strategy.draws:
      plain = self.jit_step(steps.train_step)
      return lambda state, batch: (*plain(state, batch), None)
    return self.jit_step(functools.partial(steps.selection_step, strategy=strategy),
                         num_batches=2 if strategy.uses_extra_batch else 1, num_outputs=3)


def build(config: ml_collections.ConfigDict, vocab_size: int, mesh, *, token_bytes,
          strategy: selection.Strategy = selection.Off()) -> Plan:
  """Model, optimizer and sharded init for `config` on `mesh`, with `strategy`'s state."""
  model = models.get_model(config.model, vocab_size)
  total_steps = config.train.steps
  tx = optimizer_lib.make_optimizer(config.optimizer, total_steps)
  schedule = optimizer_lib.learning_rate_schedule(config.optimizer, total_steps)

  def init_fn(rng):
    state = init_state(model, tx, config, rng)
    if not strategy.draws:
      return state
    queue = queue_lib.DrawQueue.init(jax.random.fold_in(rng, 1), strategy.num_examples,
                                     config.train.batch_size,
                                     active=strategy.replaces_regular_batch)
    return state.replace(selection=strategy.init(), queue=queue)

  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  # Drawing takes a cumsum over every slot: keep the selection state whole on each device.
  state_sharding = mesh_lib.state_shardings(mesh, abstract).replace(
      selection=jax.tree.map(lambda _: replicated, abstract.selection),
      queue=jax.tree.map(lambda _: replicated, abstract.queue))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sharding)
  return Plan(model=model, tx=tx, schedule=schedule,
              init=jax.jit(init_fn, out_shardings=state_sharding), abstract=abstract,
              state_sharding=state_sharding, batch_sharding=mesh_lib.batch_sharding(mesh),
              replicated=replicated,
              step_kw=dict(model=model, tx=tx, schedule=schedule, z_loss=config.train.z_loss,
                           token_bytes=token_bytes))


def restore_or_init(plan: Plan, ckpt: checkpoints.Checkpointer, data_iterator,
                    rng: jax.Array) -> tuple[TrainState, bool]:
  """(state, resumed): the newest checkpoint (the iterator moved to it), else a fresh state."""
  latest = ckpt.latest_step()
  if latest is None:
    return plan.init(rng), False
  return ckpt.restore(latest, plan.abstract, data_iterator), True
