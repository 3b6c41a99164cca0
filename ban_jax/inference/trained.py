"""A trained run back from its workdir: its config, model, parameters and tokenizer."""

import dataclasses
import json
import os
import shutil
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ban_jax import config_validation
from ban_jax import formats
from ban_jax import models
from ban_jax.data import sources
from ban_jax.errors import UserError
from ban_jax.models import scan
from ban_jax.training import checkpoints


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """What inference needs of a run. `config` is the saved one, with any overrides applied."""
  config: ml_collections.ConfigDict
  model: nn.Module
  params: Any
  tokenizer: Any
  step: int
  workdir: str


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path} does not exist: {workdir} is not the workdir of a run "
                    "(python -m ban_jax.main writes config.json there first).") from None
  except (ValueError, UnicodeDecodeError, RecursionError) as e:
    reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise UserError(f"{path} is not valid JSON ({reason}); it was cut short or edited by "
                    "hand.") from None
  if not isinstance(saved, dict):
    raise UserError(f"{path} is not a config (a JSON object); restore it or retrain.")
  saved = formats.read("workdir", saved, path)
  try:
    return ml_collections.ConfigDict(saved)
  except (TypeError, ValueError, KeyError, AttributeError) as e:
    raise UserError(f"{path} is not a config ({type(e).__name__}: {_first(e)}); restore it "
                    "or retrain.") from None


# A config.json with larger sizes is damaged: no run of this project nears them, and tracing
# the model's shapes for them takes hours (layers, unrolled steps) or aborts (a length).
MAX_SEQ_LEN = 1 << 20       # as a .banx file's (ban_jax.runtime.checks)
MAX_ATTRACTOR_STEPS = 10_000


def _check_sizes(config, model_config, params, workdir, own_length):
  path = os.path.join(workdir, "config.json")
  if config.data.seq_len > MAX_SEQ_LEN and not own_length:
    raise UserError(f"{path} says data.seq_len={config.data.seq_len}, more than "
                    f"{MAX_SEQ_LEN} tokens: the file is damaged; restore it or retrain.")
  depth, width = getattr(model_config, "depth", 1), getattr(model_config, "width", 1)
  count = sum(int(np.size(a)) for a in jax.tree.leaves(params))
  # Every layer holds at least a norm of the model's width.
  if depth * width > count:
    raise UserError(f"{path} describes {depth} layers of width {width}, more than the {count} "
                    f"parameters in {workdir} hold: the file is damaged or from another run; "
                    "restore it or retrain.")
  steps = getattr(getattr(model_config, "attractor", None), "steps", 0)
  if steps > MAX_ATTRACTOR_STEPS:
    raise UserError(f"{path} says model.attractor_steps={steps}, more than "
                    f"{MAX_ATTRACTOR_STEPS}: the file is damaged; restore it or retrain.")


def _first(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return text[0][:200] if text else ""


def _override(config, overrides):
  for dotted, value in (overrides or {}).items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      if p not in node:
        raise UserError(f"override {dotted}: the saved config has no block {p!r}.")
      node = node[p]
    if leaf not in node:
      raise UserError(f"override {dotted}: the saved config has no field {leaf!r}.")
    node[leaf] = value


EXPORTED_PARAMS = "params.msgpack"


def _read_params(workdir, step):
  """From an exported folder (params.msgpack, as `export` writes), else orbax checkpoints."""
  exported = os.path.join(workdir, EXPORTED_PARAMS)
  if not os.path.exists(exported):
    return checkpoints.read_params(os.path.join(workdir, "checkpoints"), step)
  if step is not None:
    raise UserError(f"{workdir} holds exported parameters of one step only; pass step=None.")
  try:
    with open(exported, "rb") as f:
      params = flax.serialization.msgpack_restore(f.read())
  except Exception as e:  # msgpack raises several types for a damaged file
    raise UserError(f"{exported} is unreadable ({type(e).__name__}: {e}); export it again.") from e
  return params, int(read_config(workdir).train.steps)


def export(run: "TrainedRun", folder: str):
  """Writes `run`'s config.json and params.msgpack into `folder` (a new or replaced folder,
  written whole through a temporary one); `load(folder)` reads it back."""
  tmp = folder.rstrip("/") + f".tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with open(os.path.join(tmp, EXPORTED_PARAMS), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(jax.device_get(run.params)))
  with open(os.path.join(tmp, "config.json"), "w") as f:
    json.dump(formats.stamp("workdir", run.config.to_dict()), f, indent=2, sort_keys=True,
              default=str)
  shutil.rmtree(folder, ignore_errors=True)
  os.replace(tmp, folder)


def load(workdir: str, *, step: int | None = None,
         overrides: dict[str, Any] | None = None) -> TrainedRun:
  """Restores a run's parameters (newest checkpoint, or `step`) with its model and tokenizer.

  Args:
    workdir: the run's folder (config.json and checkpoints/), or a folder `export` wrote.
    step: the checkpoint to read; None for the newest.
    overrides: dotted config fields to change before building, e.g. {"data.seq_len": 1024}
      to evaluate at another length; fields that shape the parameters must keep their values.

  Returns:
    A TrainedRun whose params are host arrays in the model's own tree.
  """
  workdir = os.path.abspath(workdir)
  config = read_config(workdir)
  try:
    _override(config, overrides)
    model_config = config_validation.validate(config)
    tokenizer = sources.make_tokenizer(config.data)
    model = models.get_model(model_config, tokenizer.vocab_size)
    # The per-layer model, whichever way the run trained (`ban_jax.models.scan`).
    if config.model.get("scan_layers", False):
      config.model.scan_layers = False
      model_config = dataclasses.replace(model_config, scan_layers=False)
      model = models.get_model(model_config, tokenizer.vocab_size)
  except (TypeError, ValueError, KeyError, AttributeError) as e:
    # A config.json edited by hand or damaged: a field of the wrong type or shape.
    raise UserError(f"{os.path.join(workdir, 'config.json')} does not describe a model this "
                    f"ban_jax builds ({type(e).__name__}: {_first(e)}); restore it or "
                    "retrain.") from None
  params, step = _read_params(workdir, step)
  params = scan.unstack(params, model.LAYER_FORMAT)
  _check_sizes(config, model_config, params, workdir, "data.seq_len" in (overrides or {}))
  # Parameter shapes do not depend on the length: a short one, as a damaged seq_len of 2**62
  # made this array abort the interpreter inside XLA.
  tokens = jnp.zeros([1, min(config.data.seq_len, 8)], jnp.int32)
  try:
    expected = jax.eval_shape(lambda: model.init(
        {"params": jax.random.PRNGKey(0)}, tokens, segment_ids=jnp.ones_like(tokens),
        positions=jnp.zeros_like(tokens), deterministic=True))["params"]
  except Exception as e:  # pylint: disable=broad-except
    # Settings that pass validation but not the model's own shapes and types (a head_dim of
    # 2**62, a cap of NaN): JAX raises any of several types while tracing.
    raise UserError(f"{os.path.join(workdir, 'config.json')} does not describe a model this "
                    f"ban_jax builds ({type(e).__name__}: {_first(e)}); restore it or "
                    "retrain.") from e
  want = jax.tree.map(lambda a: a.shape, expected)
  have = jax.tree.map(np.shape, params)
  if want != have:
    raise UserError(f"the checkpoint in {workdir} does not fit the model its config.json "
                    "describes (were the overrides shape-changing, or config.json edited?).")
  return TrainedRun(config=config, model=model, params=params, tokenizer=tokenizer, step=step,
                    workdir=workdir)
