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

def heldout_path(configured: str) -> str | None:
  """The held-out text file that eval.heldout_path names, or None for no held-out evaluation.

  The config decides where the file is (ban_jax/configs/wiki.py looks beside the checkout);
  the library only opens what it is given.
  """
  if not configured:
    return None
  if not os.path.isfile(configured):
    problem = "is a folder" if os.path.isdir(configured) else "does not exist"
    raise UserError(f"eval.heldout_path={configured} {problem}; point it at a UTF-8 text "
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
    if len(heldout.windows) == 0:  # else the held-out score would be a silent 0.0
      raise UserError(f"eval.heldout_path={path} holds fewer than data.seq_len="
                      f"{config.data.seq_len} tokens; point it at a longer UTF-8 text file, or "
                      "set it to '' to skip the held-out evaluation.")
  dataset = pipeline.Dataset(train, global_batch=config.train.batch_size, seed=config.seed,
                             read_threads=config.data.read_threads, prefetch=config.data.prefetch)
  logging.info("data %s: %d train windows (%d docs, %d tokens), %d validation windows; "
               "%d steps per epoch", name, len(train.windows), train.num_documents,
               train.windows.num_tokens, len(validation.windows), dataset.steps_per_epoch)
  return Data(tokenizer, dataset, validation, heldout, name)


def enable_compilation_cache(config: ml_collections.ConfigDict) -> str:
  """Points JAX's persistent compilation cache at `train.compilation_cache_dir` ("" = off).

  Returns the folder used ("" when off). Every compile of a second or more is stored, so a
  rerun of the same config on the same devices skips compiling.
  """
  path = config.train.get("compilation_cache_dir", "")  # older saved configs lack it
  if not path:
    return ""
  # One folder per backend and device count: on the CPU, a program compiled for another
  # --xla_force_host_platform_device_count was loaded from a shared folder and deadlocked in
  # its collectives (tests/parallel/test_multiprocess.py).
  path = os.path.join(os.path.expanduser(path),
                      f"{jax.default_backend()}-{jax.device_count()}-devices")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"train.compilation_cache_dir={path!r} cannot be created ({e}); point it "
                    "at a writable folder or set it to '' to compile every time.") from e
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return path


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
  mesh: Any = None

  def in_mesh(self, fn: Callable) -> Callable:
    """`fn` traced with the mesh visible (several devices): the Mosaic TPU attention kernel,
    which XLA cannot partition, then runs per batch shard (`ops/gravity/sharding.py`)."""
    if self.mesh is None or self.mesh.size == 1:
      return fn
    mesh = self.mesh

    @functools.wraps(fn)
    def traced(*args, **kwargs):
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return fn(*args, **kwargs)
    return traced

  def jit_step(self, fn: Callable, *, num_batches: int = 1, num_outputs: int = 2) -> Callable:
    """jit(fn(state, *batches, **step_kw)) with shardings, the state donated."""
    return jax.jit(self.in_mesh(functools.partial(fn, **self.step_kw)),
                   in_shardings=(self.state_sharding,) + (self.batch_sharding,) * num_batches,
                   out_shardings=(self.state_sharding,) + (self.replicated,) * (num_outputs - 1),
                   donate_argnums=(0,))

  def train_step_jit(self, strategy: selection.Strategy) -> tuple[Callable, int]:
    """(the jitted step the run uses, how many batches it takes): lowerable ahead of time."""
    if not strategy.draws:
      return self.jit_step(steps.train_step), 1
    num_batches = 2 if strategy.uses_extra_batch else 1
    return self.jit_step(functools.partial(steps.selection_step, strategy=strategy),
                         num_batches=num_batches, num_outputs=3), num_batches

  def jit_train_step(self, strategy: selection.Strategy) -> Callable:
    """(state, *batches) -> (state, metrics, draw), jitted; `draw` is None without draws.

    The batches are those the strategy's HostQueue gives: one, or regular and extra.
    """
    step, _ = self.train_step_jit(strategy)
    if not strategy.draws:
      return lambda state, batch: (*step(state, batch), None)
    return step

  def jit_eval_step(self) -> Callable:
    """(params, batch) -> sums of nats, bytes and tokens, jitted with the run's shardings."""
    return jax.jit(self.in_mesh(functools.partial(steps.eval_step, model=self.model,
                                                  token_bytes=self.step_kw["token_bytes"])),
                   in_shardings=(self.state_sharding.params, self.batch_sharding))


def build(config: ml_collections.ConfigDict, vocab_size: int, mesh, *, token_bytes,
          strategy: selection.Strategy = selection.Off(),
          model_config: models.ModelConfig | None = None) -> Plan:
  """Model, optimizer and sharded init for `config` on `mesh`, with `strategy`'s state.

  `model_config` is the model's validated config dataclass; None builds it from config.model.
  """
  model = models.get_model(model_config or config.model, vocab_size)
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
              replicated=replicated, mesh=mesh,
              step_kw=dict(model=model, tx=tx, schedule=schedule, z_loss=config.train.z_loss,
                           token_bytes=token_bytes))


def restore_or_init(plan: Plan, ckpt: checkpoints.Checkpointer, data_iterator,
                    rng: jax.Array) -> tuple[TrainState, int, list[dict]]:
  """(state, step, unlogged metrics): the newest checkpoint that restores (the iterator moved
  to it; corrupt newer ones moved aside), else a fresh state at step 0."""
  restored = ckpt.restore_latest(plan.abstract, data_iterator)
  if restored is None:
    return plan.init(rng), 0, []
  return restored
