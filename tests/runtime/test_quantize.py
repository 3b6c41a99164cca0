"""int8 and float16 weights: round-trip error bounds, and what they cost a trained model."""

import numpy as np
import pytest

from ban_jax.inference import trained
from ban_jax.runtime import cache as rt_cache
from ban_jax.runtime import model as rt_model
from ban_jax.runtime import quantize
from tests.runtime.exports import TRAINED, write_banx


@pytest.mark.parametrize("shape,contracted,group,scale_shape", [
    ((64, 3, 16), (0,), 0, (1, 3, 16)),         # a query kernel: per output channel
    ((4, 16, 64), (0, 1), 0, (1, 1, 64)),       # the attention output projection
    ((5, 64, 32), (1,), 0, (5, 1, 32)),         # the BAN's branch kernels
    ((259, 64), (1,), 0, (259, 1)),             # the embedding: per row
    ((64, 32), (0,), 16, (4, 32)),              # groups of 16 inputs
])
def test_int8_error_is_at_most_half_a_step_per_weight(shape, contracted, group, scale_shape):
  rng = np.random.default_rng(0)
  w = (rng.standard_normal(shape) * rng.uniform(0.01, 3, shape[-1])).astype(np.float32)
  q, scale = quantize.quantize_int8(w, contracted, group)
  assert q.dtype == np.int8 and scale.shape == scale_shape and scale.dtype == np.float32
  assert np.abs(q.astype(int)).max() == 127            # each block's peak uses the full range
  back = quantize.dequantize(q, scale)
  step = quantize.expand(scale, shape)
  assert np.all(np.abs(back - w) <= step / 2 + 1e-6 * np.abs(w))
  if group:
    coarse = quantize.dequantize(*quantize.quantize_int8(w, contracted))
    assert np.abs(back - w).mean() < np.abs(coarse - w).mean()   # finer scales, less error


def test_a_zero_channel_stays_zero():
  w = np.zeros((8, 4), np.float32)
  w[:, 1] = 1.0
  q, scale = quantize.quantize_int8(w, (0,))
  np.testing.assert_array_equal(quantize.dequantize(q, scale), w)


def _nll(path, text_ids):
  model = rt_model.load(path)
  logits = model.session(rt_cache.Spec("full", slots=len(text_ids))).prefill(text_ids)[:-1]
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -log_p[np.arange(len(text_ids) - 1), text_ids[1:]], logits


@pytest.mark.parametrize("kind", ["ban", "transformer"])
def test_int8_and_float16_cost_a_trained_model_little(tmp_path, kind):
  run = trained.load(TRAINED[kind])
  text = (b"The history of the city begins in the eleventh century, when a small "
          b"settlement grew around the river crossing.")
  ids = np.concatenate([[1], np.frombuffer(text, np.uint8).astype(np.int64) + 3])
  paths = {d: write_banx(tmp_path / f"{d}.banx", run.config, run.model, run.params, dtype=d)
           for d in quantize.DTYPES}
  nll = {d: _nll(p, ids) for d, p in paths.items()}
  reference, logits32 = nll["float32"]
  # The BAN's focus choice and gate are hard decisions: a rounding can flip one at a position
  # and move that position's logits by O(1), so the bound is on most positions, not all.
  for dtype, cost_bound, logit_bound in (("float16", 5e-3, 0.01), ("int8", 0.05, 0.25)):
    cost = nll[dtype][0].mean() - reference.mean()
    assert abs(cost) < cost_bound, (dtype, cost)
    moved = np.abs(nll[dtype][1] - logits32).max(axis=-1)
    assert np.quantile(moved, 0.9) < logit_bound, (dtype, np.quantile(moved, 0.9))
  size = {d: (tmp_path / f"{d}.banx").stat().st_size for d in paths}
  assert size["int8"] < 0.35 * size["float32"] and size["float16"] < 0.6 * size["float32"]
