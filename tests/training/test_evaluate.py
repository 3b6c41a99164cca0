"""training/evaluate.py: every eval reports compressor yardsticks on exactly the scored bytes."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from ban_jax.data import pipeline
from ban_jax.data import yardsticks
from ban_jax.training import evaluate
from ban_jax.training import setup
from ban_jax.training import steps

COMPRESSORS = ("gzip", "bz2", "xz")

def _decoded(split, batch_size, max_batches):
  """Scored bytes decoded here, without the tokenizer: byte ids are 3 + the byte."""
  out = bytearray()
  for batch in pipeline.eval_batches(split, batch_size, max_batches):
    out += (batch["targets"][batch["weights"] > 0] - 3).astype(np.uint8).tobytes()
  return bytes(out)

def test_yardstick_bytes_are_the_bytes_eval_step_scores(tiny_config):
  config = tiny_config(eval__max_batches=3)
  data = setup.build_data(config)
  mesh = setup.make_mesh(config)
  token_bytes = jnp.asarray(data.tokenizer.token_bytes, jnp.float32)
  plan = setup.build(config, data.tokenizer.vocab_size, mesh, token_bytes=token_bytes)
  params = plan.init(jax.random.PRNGKey(0)).params
  eval_fn = jax.jit(lambda p, b: steps.eval_step(p, b, model=plan.model, token_bytes=token_bytes))
  counted = sum(float(eval_fn(params, batch)["bytes"]) for batch in pipeline.eval_batches(
      data.validation, config.eval.batch_size, config.eval.max_batches))
  scored = pipeline.scored_bytes(data.validation, config.eval.batch_size,
                                 config.eval.max_batches, data.tokenizer)
  # Equal counts: no window's targets are counted twice, and none are left out.
  assert len(scored) == counted > 0
  assert scored == _decoded(data.validation, config.eval.batch_size, config.eval.max_batches)

  evaluator = evaluate.Evaluator(plan, data.validation, None, config.eval,
                                 tokenizer=data.tokenizer)
  results = evaluator(params)
  expected = yardsticks.bits_per_byte(scored)
  for name in COMPRESSORS:
    assert results[f"eval/{name}_bits_per_byte"] == expected[name]
  assert math.isfinite(results["eval/bits_per_byte"])
  assert evaluator(params)["eval/xz_bits_per_byte"] == expected["xz"]   # reused, not recomputed
