"""ban_jax: information gravity in JAX/Flax.

Gravity attention (`ban_jax.ops.gravity`, `ban_jax.layers`), the Branched Attractor Network
(`ban_jax.models`) and Gravity Wells training (`ban_jax.training`), trained on Wikipedia through
TFDS + grain (`ban_jax.data`).

`import ban_jax` imports nothing else (no JAX): `ban_jax.load` and `ban_jax.tokenizer` import
what they need when called, so the NumPy-only `ban_jax.runtime` stays JAX-free.
"""

__version__ = "0.1.0"


def load(workdir: str, *, step: int | None = None):
  """A trained run's (model, params, config), to use outside the training loop.

  Reads the newest checkpoint (or `step`) of `workdir`, parameters only (no optimizer state),
  as host arrays whatever mesh wrote them, so they run on one device; a folder written by
  `ban_jax.inference.trained.export` works too. `model.apply({"params": params}, tokens)` maps
  int32 tokens [batch, length] to float32 logits [batch, length, vocab]; `tokenizer(config)`
  makes the run's tokens. For NNX: `ban_jax.nnx.load(workdir)`.

  Args:
    workdir: the run's folder (config.json and checkpoints/).
    step: the checkpoint to read; None for the newest.

  Returns:
    (model: a flax.linen Module, params: the parameter tree, config: the run's ConfigDict).

  Raises:
    ban_jax.errors.UserError: `workdir` is not a run, holds no checkpoint, or no `step`.
  """
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  run = trained.load(workdir, step=step)
  return run.model, run.params, run.config


def tokenizer(config):
  """The tokenizer of a run's `config` (as `load` returns it): `.encode(text)` -> int32 ids."""
  from ban_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.make_tokenizer(config.data)
