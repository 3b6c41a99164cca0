"""AdamW with warm-up + cosine decay and global-norm clipping, from optax parts.

The learning rate is a function of the *train step* (batches consumed), passed to `update` as
`train_step=`, not of the optimizer's own update count. Gravity Wells and its controls apply
extra updates in some steps; indexing the schedule by the train step keeps every arm of an
experiment on the same schedule, and both updates of a step use the same rate.
"""

import jax
import ml_collections
import optax


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  # config_validation requires warmup_steps < total_steps; the clamp only keeps ad-hoc callers
  # (benchmarks with few steps) on a well-formed schedule.
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=cfg.learning_rate * cfg.end_learning_rate_ratio)


def scale_by_step_schedule(schedule: optax.Schedule) -> optax.GradientTransformationExtraArgs:
  """Multiplies updates by −schedule(train_step); `train_step` comes through `update`'s kwargs."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, *, train_step, **extra_args):
    del params, extra_args
    lr = schedule(train_step)
    return jax.tree.map(lambda u: -lr * u, updates), state

  return optax.GradientTransformationExtraArgs(init, update)


def _decay_mask(params):
  # Weight decay on weight matrices only: biases (even stacked per-branch ones, [N, d]), norm
  # scales and other vectors are not shrunk.
  def decays(path, p):
    name = str(getattr(path[-1], "key", path[-1])).lower()
    return p.ndim >= 2 and "bias" not in name and "scale" not in name
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int
                   ) -> optax.GradientTransformationExtraArgs:
  """The `optimizer` config block as one optax transformation: clip → Adam → decay → −lr(step).

  This is optax.adamw's own composition (decoupled weight decay, scaled by the learning rate).
  """
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm),
      optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
      optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
      scale_by_step_schedule(learning_rate_schedule(cfg, total_steps)),
  )
