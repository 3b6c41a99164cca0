"""Pure train and eval steps. `setup.Plan` jits them with the model and optimizer bound in."""

import functools
import math
from typing import Any

import flax
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import optax

from ban_jax.models import scan
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
    token loss (for batch selection).
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
      # Per layer under the unscanned names, however the model runs its layers.
      **_flatten(scan.unstack(flax.core.unfreeze(sown.get("diagnostics", {})),
                              model.LAYER_FORMAT), "diagnostics"),
  }
  example_loss = jnp.sum(nll * w, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1.0)
  return loss, (metrics, example_loss)


def apply_gradients(params, opt_state, grads, *, step: jax.Array,
                    tx: optax.GradientTransformation, schedule: optax.Schedule):
  """One optimizer update; every update of a train step goes through here.

  Returns:
    (params, opt_state, metrics) with the gradient's global norm and the learning rate.
  """
  updates, opt_state = tx.update(grads, opt_state, params, train_step=step)
  params = optax.apply_updates(params, updates)
  return params, opt_state, {"grad_norm": optax.global_norm(grads),
                             "learning_rate": schedule(step)}


def finite(loss: jax.Array, grad_norm: jax.Array) -> jax.Array:
  """bool []: the step's flag that the host checks before logging or saving its state (a
  non-finite gradient norm is what makes the parameters non-finite)."""
  return jnp.isfinite(loss) & jnp.isfinite(grad_norm)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule, z_loss: float,
               token_bytes: jax.Array) -> tuple[TrainState, dict[str, Any]]:
  """One optimizer update on `batch`; the step's randomness is fold_in(state.rng, state.step)."""
  rng = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (metrics, _)), grads = grad_fn(state.params, batch, rng, model=model, z_loss=z_loss,
                                        token_bytes=token_bytes)
  params, opt_state, update_metrics = apply_gradients(state.params, state.opt_state, grads,
                                                      step=state.step, tx=tx, schedule=schedule)
  metrics = dict(metrics, **update_metrics, finite=finite(loss, update_metrics["grad_norm"]))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def selection_step(state: TrainState, batch: dict[str, jax.Array],
                   extra: dict[str, jax.Array] | None = None, *, strategy, model: nn.Module,
                   tx: optax.GradientTransformation, schedule: optax.Schedule, z_loss: float,
                   token_bytes: jax.Array):
  """A train step under a strategy that draws batches (`training/selection.py`).

  The step's key k = fold_in(state.rng, state.step) splits into fold_in(k, 0) for the regular
  update, fold_in(k, 1) for the extra one and fold_in(k, 2) for the next draw.

  Args:
    state: TrainState with the strategy's `selection` state and the draw `queue`.
    batch: the regular batch (the drawn one, for a strategy that replaces it).
    extra: the batch of queue slot 0, for a strategy with extra updates; the update is skipped
      when that slot is inactive.

  Returns:
    (state, metrics, draw): `draw` = (index int32 [batch], active bool []) just drawn, to be
    used two steps later (the host fetches it; the state keeps it in its queue).
  """
  step = state.step
  key = jax.random.fold_in(state.rng, step)
  loss_grad = jax.value_and_grad(loss_fn, has_aux=True)
  kw = dict(model=model, z_loss=z_loss, token_bytes=token_bytes)
  update = functools.partial(apply_gradients, step=step, tx=tx, schedule=schedule)

  if strategy.uses_extra_batch:
    # The regular and the extra update as two iterations of one scan: the model's forward and
    # backward are traced and compiled once, not twice (half the Wells step's compile time).
    active = state.queue.active[0]
    xs = (jax.tree.map(lambda a, b: jnp.stack([a, b]), batch, extra),
          jnp.stack([jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)]),
          jnp.stack([jnp.array(True), active]))

    traced = []   # the shapes of run's outputs, from the trace lax.cond makes of it

    def one_update(carry, x):
      one_batch, one_key, on = x
      traced.clear()

      def run(carry):
        params, opt_state = carry
        (loss, (m, example_loss)), grads = loss_grad(params, one_batch, one_key, **kw)
        params, opt_state, um = update(params, opt_state, grads)
        out = (loss, m, um, example_loss)
        traced.append(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), out))
        return (params, opt_state), out

      def skip(carry):   # an inactive extra slot: nothing changes, outputs are placeholders
        # lax.cond traces `run` before `skip`: its shapes spare tracing the model a second
        # time (eval_shape would: a third of the Wells step's compile time, all in tracing).
        shapes = traced[-1] if traced else jax.eval_shape(run, carry)[1]
        return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      return lax.cond(on, run, skip, carry)

    (params, opt_state), (losses, ms, ums, examples) = lax.scan(
        one_update, (state.params, state.opt_state), xs)
    first = lambda tree: jax.tree.map(lambda a: a[0], tree)
    loss, metrics, update_metrics, example_loss = losses[0], first(ms), first(ums), examples[0]
    metrics = dict(metrics, **update_metrics,
                   finite=finite(loss, update_metrics["grad_norm"])
                   & jnp.where(active, finite(losses[1], ums["grad_norm"][1]), True))
    metrics["extra_loss"] = jnp.where(active, ms["loss"][1], jnp.float32(jnp.nan))
  else:
    (loss, (metrics, example_loss)), grads = loss_grad(state.params, batch,
                                                       jax.random.fold_in(key, 0), **kw)
    params, opt_state, update_metrics = update(state.params, state.opt_state, grads)
    metrics = dict(metrics, **update_metrics, finite=finite(loss, update_metrics["grad_norm"]))
    active = jnp.array(False)
  metrics["injected"] = active.astype(jnp.float32)
  metrics["grad_evals"] = 1.0 + metrics["injected"]

  selection, draw_index, draw_active, selection_metrics = strategy.after_step(
      state.selection, step=step, index=batch["index"], example_loss=example_loss,
      batch_loss=metrics["loss"], key=jax.random.fold_in(key, 2))
  metrics.update(selection_metrics)
  state = state.replace(step=step + 1, params=params, opt_state=opt_state, selection=selection,
                        queue=state.queue.push(draw_index, draw_active))
  return state, metrics, (draw_index, draw_active)


def eval_step(params, batch: dict[str, jax.Array], *, model: nn.Module,
              token_bytes: jax.Array) -> dict[str, jax.Array]:
  """Sums over the batch: nats, UTF-8 bytes and weighted tokens (combine, then divide)."""
  logits, _ = forward(model, params, batch)
  w = batch["weights"]
  nll = token_nll(logits, batch["targets"])
  return {"nats": jnp.sum(nll * w), "bytes": jnp.sum(token_bytes[batch["targets"]] * w),
          "tokens": jnp.sum(w)}
