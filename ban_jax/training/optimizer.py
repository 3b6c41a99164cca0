"""AdamW with warm-up + cosine decay and global-norm clipping, from optax."""

import jax
import ml_collections
import optax


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate,
      warmup_steps=min(cfg.warmup_steps, max(total_steps - 1, 1)),
      decay_steps=max(total_steps, cfg.warmup_steps + 1),
      end_value=cfg.learning_rate * cfg.end_learning_rate_ratio)


def _decay_mask(params):
  # Weight decay on matrices only: norms' scales and other vectors are not shrunk.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int
                   ) -> optax.GradientTransformation:
  """The optax transformation of the `optimizer` config block."""
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm),
      optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                  weight_decay=cfg.weight_decay, mask=_decay_mask),
  )
