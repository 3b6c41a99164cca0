"""Pure train and eval steps. `train.py` jits them with the model and optimizer bound in."""

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ban_jax.training.state import TrainState

COLLECTIONS = ("diagnostics", "losses")


def _flatten(tree, prefix: str) -> dict[str, jax.Array]:
  """Sown values ({path: tuple of arrays}) -> {"prefix/path": mean}."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
  return {f"{prefix}/{k}": jnp.mean(jnp.stack([jnp.mean(jnp.asarray(x, jnp.float32))
                                                for x in v]))
          for k, v in flat.items()}


def forward(model: nn.Module, params, batch: dict[str, jax.Array], *, rng=None,
            deterministic: bool = True):
  """logits [batch, length, vocab] and the sown collections."""
  return model.apply(
      {"params": params}, batch["inputs"], segment_ids=batch["segment_ids"],
      positions=batch["positions"], deterministic=deterministic,
      rngs={"dropout": rng} if rng is not None else {}, mutable=list(COLLECTIONS))


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """[batch, length, vocab], [batch, length] -> negative log-likelihood in nats [batch, length]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def loss_fn(params, batch, rng, *, model, z_loss: float, token_bytes: jax.Array):
  """Mean next-token loss over weighted targets, plus the z-loss and any sown auxiliary loss.

  Returns:
    (loss, aux) where aux holds scalar metrics and `example_loss` [batch], each example's mean
    token loss (for Gravity Wells).
  """
  logits, sown = forward(model, params, batch, rng=rng, deterministic=False)
  w = batch["weights"]
  nll = token_nll(logits, batch["targets"])
  weight_sum = jnp.maximum(jnp.sum(w), 1.0)
  mean_nll = jnp.sum(nll * w) / weight_sum
  log_z = jax.nn.logsumexp(logits, axis=-1)
  z_term = z_loss * jnp.sum(jnp.square(log_z) * w) / weight_sum
  aux_losses = sum((jnp.sum(x) for x in jax.tree.leaves(sown.get("losses", {}))), jnp.zeros(()))
  loss = mean_nll + z_term + aux_losses
  num_bytes = jnp.sum(token_bytes[batch["targets"]] * w)
  metrics = {
      "loss": mean_nll,
      "bits_per_byte": jnp.sum(nll * w) / math.log(2) / jnp.maximum(num_bytes, 1.0),
      "z_loss": z_term,
      "aux_loss": aux_losses,
      **_flatten(sown.get("diagnostics", {}), "diagnostics"),
  }
  example_loss = jnp.sum(nll * w, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1.0)
  return loss, (metrics, example_loss)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule, z_loss: float,
               token_bytes: jax.Array) -> tuple[TrainState, dict[str, Any]]:
  """One optimizer update on `batch`; the step's randomness is fold_in(state.rng, state.step)."""
  rng = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, (metrics, _)), grads = grad_fn(state.params, batch, rng, model=model, z_loss=z_loss,
                                     token_bytes=token_bytes)
  updates, opt_state = tx.update(grads, state.opt_state, state.params, train_step=state.step)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                 learning_rate=schedule(state.step))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict[str, jax.Array], *, model: nn.Module,
              token_bytes: jax.Array) -> dict[str, jax.Array]:
  """Sums over the batch: nats, UTF-8 bytes and weighted tokens (combine, then divide)."""
  logits, _ = forward(model, params, batch)
  w = batch["weights"]
  nll = token_nll(logits, batch["targets"])
  return {"nats": jnp.sum(nll * w), "bytes": jnp.sum(token_bytes[batch["targets"]] * w),
          "tokens": jnp.sum(w)}
