"""The files a run leaves in its workdir, and the checks that come before writing any."""

import contextlib
import json
import os

from absl import logging
import flax
import jax
import ml_collections

from ban_jax import formats
from ban_jax.errors import UserError
from ban_jax.models import scan
from ban_jax.training import plots
from ban_jax.training import writers

# Fields that fix the shapes or meaning of the parameters; a resumed run must match them.
RESUME_KEYS = ("model", "data.tokenizer", "data.spm_model", "data.spm_vocab_size", "seed",
               "data.source", "data.tfds_name", "data.dump_dir", "data.train_split",
               "data.text_key", "data.seq_len", "train.batch_size", "wells")
# Inside RESUME_KEYS but free to change on resume: they choose how, not what, is computed (the
# attention op's implementation: the fused kernel or XLA compute the same function). Scanning
# the layers computes the same function too, but lays the checkpoint out differently: the
# checkpoint's own check names the layout it holds (`checkpoints.Checkpointer`).
FREE_KEYS = ("model.attention_options.implementation", "model.scan_layers")


def check(workdir: str) -> str:
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


def prepare(workdir: str) -> str:
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


def _without(tree: dict, dotted_keys) -> dict:
  """A copy of `tree` without the dotted keys (and without mappings they leave empty)."""
  def drop(node, parts):
    if not isinstance(node, dict) or parts[0] not in node:
      return node
    node = dict(node)
    if len(parts) == 1:
      del node[parts[0]]
    else:
      node[parts[0]] = drop(node[parts[0]], parts[1:])
      if node[parts[0]] == {}:
        del node[parts[0]]
    return node
  for key in dotted_keys:
    tree = drop(tree, key.split("."))
  return tree


def _differences(a, b, prefix=""):
  """Dotted keys whose values differ between two nested dicts."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
    return out
  return [] if a == b else [(prefix[:-1], a, b)]


def check_resumable(workdir: str, config: ml_collections.ConfigDict):
  """Refuses a config that differs from the run in `workdir` in a field of RESUME_KEYS."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path} is unreadable ({type(e).__name__}: {e}); restore it (it records "
                    "the settings of the run in this workdir) or use a fresh --workdir.") from e
  if not isinstance(saved, dict):
    raise UserError(f"{path} is not a config (a JSON object); restore it or use a fresh "
                    "--workdir.")
  saved = formats.read("workdir", saved, path)
  mine = _without(config.to_dict(), FREE_KEYS)
  saved = _without(saved, FREE_KEYS)
  for key in RESUME_KEYS:
    block, _, field = key.partition(".")
    a, b = saved.get(block, {}), mine.get(block, {})
    if field:
      if not isinstance(a, dict):
        raise UserError(f"{path} has {block}={a!r:.80}, not a block of settings; restore it or "
                        "use a fresh --workdir.")
      a, b = a.get(field), b.get(field)
    diff = _differences(a, b, key + ".")
    if diff:
      name, theirs, ours = diff[0]
      raise UserError(f"{workdir} holds a run trained with {name}={theirs!r}, but this config "
                      f"has {name}={ours!r}; resume with the same settings or use a fresh "
                      "--workdir.")
  steps = saved.get("train", {}).get("steps") if isinstance(saved.get("train"), dict) else None
  if steps != config.train.steps:
    logging.warning("resuming with train.steps=%d (was %s): the learning-rate schedule changes "
                    "from here on, so this is a continuation, not an exact resume.",
                    config.train.steps, steps)


def write_json(path: str, obj):
  """Writes through a temporary file, so a reader never sees half a file."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):  # a failed write (a full disk) leaves nothing behind
      os.remove(tmp)


def save_config(workdir: str, config: ml_collections.ConfigDict):
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, "config.json"), formats.stamp("workdir", config.to_dict()))


@contextlib.contextmanager
def closing_on_error(writer, ckpt):
  """On an exception, flush the metrics and let an in-flight async checkpoint finish.

  A failure while closing (the disk that stopped the run is still full) is logged, so that the
  error that stopped the run is the one reported.
  """
  try:
    yield
  except BaseException:
    for close in (writer.close, ckpt.close):
      try:
        close()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("while stopping: %s", str(e).splitlines()[0] if str(e) else repr(e))
    raise


def write_final(workdir: str, *, params, sample: str, final: dict, title: str,
                steps_per_epoch: int, selection_log=None, layer_format: str = "layer_{}"):
  """The end-of-run files: sample, plots, the selection log and final_metrics.json.

  `layer_format` (the model's `LAYER_FORMAT`) names the layers of scanned parameters.
  """
  # Per-head masses are tiny and replicated: every process can read them, even under FSDP.
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  masses = jax.device_get({k: v for k, v in flat.items() if k.endswith("gravity_mass_log")})
  masses = scan.per_layer(masses, layer_format)
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, "sample.txt"), "w") as f:
    f.write(sample + "\n")
  records = writers.read_metrics(workdir)
  plots.loss_curve(records, os.path.join(workdir, "loss_curve.png"),
                   steps_per_epoch=steps_per_epoch, title=title)
  plots.focus_usage(records, os.path.join(workdir, "focus_usage.png"))
  plots.mass_heatmap(masses, os.path.join(workdir, "mass_heatmap.png"))
  if selection_log is not None:
    selection_log.save(workdir, steps_per_epoch)
  write_json(os.path.join(workdir, "final_metrics.json"), final)
