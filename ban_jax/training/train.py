"""`train_and_evaluate(config, workdir)`: set up, train, evaluate, write."""

import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from ban_jax import config_validation
from ban_jax.inference import generate
from ban_jax.models import scan
from ban_jax.parallel import mesh as mesh_lib
from ban_jax.training import budget
from ban_jax.training import checkpoints
from ban_jax.training import disk
from ban_jax.training import divergence
from ban_jax.training import evaluate
from ban_jax.training import kernel_check
from ban_jax.training import live_views
from ban_jax.training import lock as lock_lib
from ban_jax.training import preemption
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
  if jax.process_count() == 1:
    # Multi-process runs compile without it: two processes of one run hung at shutdown with
    # the cache on (tests/parallel/test_multiprocess.py), one process each reading the other's.
    setup.enable_compilation_cache(config)
  data = setup.build_data(config)
  total_steps = config.train.steps
  steps_per_epoch = data.train.steps_per_epoch
  strategy = selection.from_config(config.wells, num_examples=len(data.train.split.windows),
                                   steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  plan = setup.build(config, data.tokenizer.vocab_size, mesh, strategy=strategy,
                     token_bytes=jnp.asarray(data.tokenizer.token_bytes, jnp.float32),
                     model_config=model_config)
  workdir_lib.prepare(workdir)
  # The lock outermost: it is given back only after the checkpoints and metrics are closed.
  with (lock_lib.hold(workdir, refresh_s=config.train.get("lock_refresh_s", 60.0)) as lock,
        disk.reporting("writing to the workdir", os.path.join(workdir, "checkpoints"))):
    return _train(config, workdir, mesh=mesh, data=data, strategy=strategy, plan=plan,
                  lock=lock)


def _train(config, workdir, *, mesh, data, strategy, plan, lock) -> dict[str, float]:
  """The run itself, in a workdir this process holds."""
  total_steps = config.train.steps
  steps_per_epoch = data.train.steps_per_epoch
  ckpt = checkpoints.Checkpointer(
      os.path.join(workdir, "checkpoints"), every_steps=config.checkpoint.every_steps,
      keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  data_iter = data.train.iterator()
  rng = jax.random.PRNGKey(config.seed)
  state, first_step, carried = setup.restore_or_init(plan, ckpt, data_iter, rng)
  if kernel_check.uses_kernel(config):
    xla_config = kernel_check.with_xla(config)
    xla_plan = setup.build(xla_config, data.tokenizer.vocab_size, mesh, strategy=strategy,
                           token_bytes=plan.step_kw["token_bytes"],
                           model_config=config_validation.validate(xla_config))
    config, plan = kernel_check.check_or_fall_back(config, plan, xla_plan, state.params,
                                                   data.validation, config.eval.batch_size)
  if first_step:
    logging.info("resumed from %s at step %d", workdir, first_step)
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
  # A finished run asked again re-evaluates; its records at that step are already written.
  evaluated = first_step >= total_steps and any(
      r["step"] == first_step and any(k.startswith("eval/") for k in r)
      for r in writers.read_metrics(workdir))
  writer = writers.MetricWriter(workdir, start_step=first_step)
  selection_log = selection.SelectionLog(strategy, first_step)
  progress = writers.Progress(total_steps, config.train.batch_size * config.data.seq_len,
                              first_step)
  guard = divergence.Guard(config.train, ckpt, carried)
  run_start, eval_seconds, final, preempted = time.perf_counter(), 0.0, {}, None
  trace = live_views.StepTrace(os.path.join(workdir, "tensorboard"), first_step=first_step,
                               steps=config.train.get("profile_steps", 0))  # older configs lack it

  def run_eval(step, write=True):
    results = evaluator(state.params)
    if write:
      writer.write_scalars(step, results)
    logging.info("step %d eval: %s", step,
                 ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items())))
    return results

  step = first_step
  with (mesh, preemption.Preemption() as stop,
        workdir_lib.closing_on_error(writer, ckpt)):
    while step < total_steps:
      guard.skip_if_due(step, data_iter)
      batches = host_queue.next(data_iter)
      trace.before(step)
      state, metrics, draw = train_step(
          state, *(mesh_lib.global_batch(b, plan.batch_sharding) for b in batches))
      host_queue.push(draw)
      guard.add(metrics)
      done = step + 1
      trace.after(done, state)
      log_due = done % config.train.log_every == 0 or done == total_steps
      save_due = ckpt.due(done) or done == total_steps
      stopping = stop.should_stop(done)
      if log_due or save_due or stopping:
        # The flags of every step so far, read with the metrics (the only device sync).
        diverged = guard.verify(done)
        if diverged is not None:
          state, step, data_iter = guard.recover(diverged, plan, data, rng)
          writer.rewind(step)
          host_queue = queue_lib.HostQueue(strategy, state.queue, data.train)
          continue
      if log_due:
        host = guard.take()
        strengths = selection_log.record(done, host, state)
        if strengths is not None:
          writer.write_histogram(done, "wells/strength", strengths)
        scalars = writers.summarize(host)
        scalars["train/epoch"] = done / steps_per_epoch
        rates = progress.report(done)
        # Wall-clock spent training in this process (evaluation excluded), for speed comparisons.
        rates["train_sec"] = time.perf_counter() - run_start - eval_seconds
        writer.write_scalars(done, {**scalars, **{f"perf/{k}": v for k, v in rates.items()}})
        writers.log_progress(done, total_steps, scalars, rates)
        live_views.write(writer, done, state.params, scalars, plan.model.LAYER_FORMAT)
        final.update(scalars)
      if done % config.eval.every_steps == 0 or done == total_steps:
        eval_start = time.perf_counter()
        final.update(run_eval(done))
        eval_seconds += time.perf_counter() - eval_start
      # Only verified states reach here: every checkpoint holds finite parameters.
      saved = ckpt.save(done, state, data_iter, pending=guard.unlogged(),
                        force=done == total_steps or stopping)
      if log_due or saved:
        lock.refresh(done)  # stops here if another run took the workdir
      step = done
      if stopping:
        preempted = stop.signal_name
        break
    trace.stop(state)
    if first_step >= total_steps:
      final.update(run_eval(first_step, write=not evaluated))

  if preempted:
    writer.close()
    ckpt.close()
    logging.warning("stopped by %s at step %d; checkpoint saved in %s/checkpoints: rerun the "
                    "same command to resume.", preempted, step, workdir)
    return {**final, "preempted_at_step": step}
  # Decoding runs the per-layer model (what `ban_jax.load` and export see).
  sample = generate.sample_text(
      *scan.unscanned(plan.model, state.params), data.tokenizer, config.eval.sample_prompt,
      length=config.eval.sample_length, temperature=config.eval.sample_temperature,
      rng=jax.random.fold_in(state.rng, 1 << 30), train_len=config.data.seq_len)
  writer.write_text(total_steps, "sample", sample)
  writer.close()
  ckpt.close()
  final.update({"num_params": num_params, "steps": total_steps})
  workdir_lib.write_final(workdir, params=state.params, sample=sample, final=final,
                          title=f"{config.model.name} on {data.name}",
                          steps_per_epoch=steps_per_epoch,
                          selection_log=selection_log if first_step < total_steps else None,
                          layer_format=plan.model.LAYER_FORMAT)
  logging.info("sample: %s", sample)
  return final
