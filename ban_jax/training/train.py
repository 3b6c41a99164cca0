"""`train_and_evaluate(config, workdir)`: set up, train, evaluate, write."""

import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ban_jax import config_validation
from ban_jax.errors import UserError
from ban_jax.inference import generate
from ban_jax.parallel import mesh as mesh_lib
from ban_jax.training import budget
from ban_jax.training import checkpoints
from ban_jax.training import evaluate
from ban_jax.training import queue as queue_lib
from ban_jax.training import selection
from ban_jax.training import setup
from ban_jax.training import workdir as workdir_lib
from ban_jax.training import writers


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns final metrics."""
  # Everything that can fail on bad input runs before the workdir is touched.
  model_config = config_validation.validate(config)
  workdir = workdir_lib.check(workdir)
  workdir_lib.check_resumable(workdir, config)
  mesh = setup.make_mesh(config)
  data = setup.build_data(config)
  total_steps = config.train.steps
  steps_per_epoch = data.train.steps_per_epoch
  strategy = selection.from_config(config.wells, num_examples=len(data.train.split.windows),
                                   steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  plan = setup.build(config, data.tokenizer.vocab_size, mesh, strategy=strategy,
                     token_bytes=jnp.asarray(data.tokenizer.token_bytes, jnp.float32),
                     model_config=model_config)
  workdir_lib.prepare(workdir)

  ckpt = checkpoints.Checkpointer(
      os.path.join(workdir, "checkpoints"), every_steps=config.checkpoint.every_steps,
      keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  data_iter = data.train.iterator()
  state, resumed = setup.restore_or_init(plan, ckpt, data_iter, jax.random.PRNGKey(config.seed))
  if resumed:
    logging.info("resumed from %s at step %d", workdir, int(state.step))
  else:
    workdir_lib.save_config(workdir, config)
  num_params = setup.count_params(plan.abstract.params)
  logging.info("model %s: %s parameters", config.model.name, f"{num_params:,}")
  run_plan = budget.announce(plan, config, strategy, len(data.train.split.windows), num_params)
  if jax.process_index() == 0:
    workdir_lib.write_json(os.path.join(workdir, "plan.json"), run_plan)

  train_step = plan.jit_train_step(strategy)
  host_queue = queue_lib.HostQueue(strategy, state.queue, data.train)
  evaluator = evaluate.Evaluator(plan, data.validation, data.heldout, config.eval,
                                 tokenizer=data.tokenizer)
  writer = writers.MetricWriter(workdir)
  first_step = int(state.step)
  selection_log = selection.SelectionLog(strategy, first_step)
  progress = writers.Progress(total_steps, config.train.batch_size * config.data.seq_len,
                              first_step)
  run_start, eval_seconds, pending, final = time.perf_counter(), 0.0, [], {}

  def run_eval(step):
    results = evaluator(state.params)
    writer.write_scalars(step, results)
    logging.info("step %d eval: %s", step,
                 ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items())))
    return results

  with mesh, workdir_lib.closing_on_error(writer, ckpt):
    for step in range(first_step, total_steps):
      batches = host_queue.next(data_iter)
      state, metrics, draw = train_step(
          state, *(mesh_lib.global_batch(b, plan.batch_sharding) for b in batches))
      host_queue.push(draw)
      pending.append(metrics)
      done = step + 1
      if done % config.train.log_every == 0 or done == total_steps:
        host, pending = jax.device_get(pending), []
        strengths = selection_log.record(done, host, state)
        if strengths is not None:
          writer.write_histogram(done, "wells/strength", strengths)
        scalars = writers.summarize(host)
        if not np.isfinite(scalars["train/loss"]):
          raise UserError(f"training diverged: the train loss is {scalars['train/loss']} in the "
                          f"steps up to {done}; the last finite checkpoint is in "
                          f"{workdir}/checkpoints. Lower optimizer.learning_rate (or raise "
                          "optimizer.warmup_steps) and resume or restart.")
        scalars["train/epoch"] = done / steps_per_epoch
        rates = progress.report(done)
        # Wall-clock spent training in this process (evaluation excluded), for speed comparisons.
        rates["train_sec"] = time.perf_counter() - run_start - eval_seconds
        writer.write_scalars(done, {**scalars, **{f"perf/{k}": v for k, v in rates.items()}})
        writers.log_progress(done, total_steps, scalars, rates)
        final.update(scalars)
      if done % config.eval.every_steps == 0 or done == total_steps:
        eval_start = time.perf_counter()
        final.update(run_eval(done))
        eval_seconds += time.perf_counter() - eval_start
      ckpt.save(done, state, data_iter, force=done == total_steps)
    if first_step >= total_steps:
      final.update(run_eval(first_step))

  sample = generate.sample_text(
      plan.model, state.params, data.tokenizer, config.eval.sample_prompt,
      length=config.eval.sample_length, temperature=config.eval.sample_temperature,
      rng=jax.random.fold_in(state.rng, 1 << 30), train_len=config.data.seq_len)
  writer.write_text(total_steps, "sample", sample)
  writer.close()
  ckpt.close()
  final.update({"num_params": num_params, "steps": total_steps})
  workdir_lib.write_final(workdir, params=state.params, sample=sample, final=final,
                          title=f"{config.model.name} on {data.name}",
                          steps_per_epoch=steps_per_epoch,
                          selection_log=selection_log if first_step < total_steps else None)
  logging.info("sample: %s", sample)
  return final
