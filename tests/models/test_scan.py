"""Scanned layers (`model.scan_layers`): the same function as the per-layer model, and the
per-layer tree everywhere outside the train step."""

import dataclasses
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ban_jax
from ban_jax import models
from ban_jax.errors import UserError
from ban_jax.inference import banx_export as export
from ban_jax.models import scan
from ban_jax.runtime import banx
from ban_jax.training import checkpoints
from ban_jax.training import integrity
from ban_jax.training import setup
from ban_jax.training import steps
from ban_jax.training import workdir as workdir_lib

VOCAB = 259


def _pair(preset, depth=2, **model):
  """(per-layer model, scanned model, per-layer params) at float32, random parameters."""
  from configs import wiki  # pylint: disable=g-import-not-at-top
  c = wiki.get_config(preset)
  c.model.update(dict(dtype="float32", num_layers=depth, d_model=32, num_heads=4, num_kv_heads=2,
                      head_dim=8), **model)
  mc = models.make_config(c.model)
  plain = models.get_model(dataclasses.replace(mc, scan_layers=False), VOCAB)
  scanned = models.get_model(dataclasses.replace(mc, scan_layers=True), VOCAB)
  tokens = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(plain.init, jax.random.PRNGKey(0), tokens)["params"]
  rng = np.random.default_rng(depth)
  params = jax.tree.map(lambda s: (rng.standard_normal(s.shape) * (
      s.shape[0] ** -0.5 if s.ndim > 1 else 0.3) + (s.ndim == 1)).astype(np.float32), shapes)
  return plain, scanned, params


def _rel(a, b):
  """Relative error ‖a − b‖ / ‖a‖ (Frobenius), in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


CASES = [("default", {}), ("default", {"remat": True, "tagging_source": "surprisal"}),
         ("transformer", {"remat": True, "attention": "gravity"})]


@pytest.mark.parametrize("preset,model", CASES)
def test_the_scanned_model_computes_the_per_layer_models_function(preset, model):
  plain, scanned, params = _pair(preset, **model)
  fmt = type(plain).LAYER_FORMAT
  stacked = scan.stack(params, fmt)
  # The scanned model's own init lays its parameters out as `stack` does.
  init = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  assert jax.tree.map(np.shape, init["params"]) == jax.tree.map(np.shape, stacked)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 24), 0, VOCAB)
  seg = jnp.ones_like(tokens).at[1, 16:].set(2)
  pos = jnp.concatenate([jnp.arange(24)[None], jnp.concatenate(
      [jnp.arange(16), jnp.arange(8)])[None]])
  kw = dict(segment_ids=seg, positions=pos, mutable=list(steps.COLLECTIONS))
  want, sown_want = plain.apply({"params": params}, tokens, **kw)
  got, sown_got = scanned.apply({"params": stacked}, tokens, **kw)
  assert _rel(want, got) < 1e-6
  sown_got = scan.unstack(flax.core.unfreeze(sown_got), fmt)
  assert jax.tree.structure(sown_got) == jax.tree.structure(flax.core.unfreeze(sown_want))
  for a, b in zip(jax.tree.leaves(sown_want), jax.tree.leaves(sown_got)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  def loss(model, p):
    return jnp.mean(jnp.square(model.apply({"params": p}, tokens, segment_ids=seg,
                                           positions=pos)))
  g_plain = scan.stack(jax.grad(lambda p: loss(plain, p))(params), fmt)
  g_scan = jax.grad(lambda p: loss(scanned, p))(stacked)
  # One relative error over the whole gradient: some leaves are ~1e-7, all cancellation.
  assert jax.tree.structure(g_plain) == jax.tree.structure(g_scan)
  flat = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (g_plain, g_scan)]
  assert _rel(*flat) < 1e-5


def test_stack_and_unstack_are_inverse_on_params_and_sown_tuples():
  tree = {"embed": np.ones(3), "layer_0": {"w": np.zeros((2, 2)), "s": (np.ones(1),)},
          "layer_1": {"w": np.ones((2, 2)), "s": (np.zeros(1),)}, "layer_x": np.ones(1)}
  stacked = scan.stack(tree, "layer_{}")
  assert set(stacked) == {"embed", "layers", "layer_x"}
  assert stacked["layers"]["w"].shape == (2, 2, 2) and stacked["layers"]["s"][0].shape == (2, 1)
  back = scan.unstack(stacked, "layer_{}")
  assert jax.tree.structure(back) == jax.tree.structure(tree)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, tree))
  assert scan.unstack(tree, "layer_{}") == tree                   # nothing scanned: unchanged
  flat = scan.per_layer({"layers/attn/m": np.arange(6).reshape(3, 2)}, "block_{}")
  assert sorted(flat) == ["block_0/attn/m", "block_1/attn/m", "block_2/attn/m"]
  np.testing.assert_array_equal(flat["block_2/attn/m"], [4, 5])


def test_train_step_metrics_name_layers_as_the_per_layer_model_does():
  plain, scanned, params = _pair("default", depth=2)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 0, VOCAB)
  batch = dict(inputs=tokens, targets=jnp.roll(tokens, -1, 1), weights=jnp.ones((2, 16)),
               segment_ids=jnp.ones_like(tokens), positions=jnp.broadcast_to(jnp.arange(16),
                                                                             (2, 16)))
  out = {}
  for model, p in ((plain, params), (scanned, scan.stack(params, "layer_{}"))):
    _, (metrics, _) = steps.loss_fn(p, batch, None, model=model, z_loss=0.0,
                                    token_bytes=jnp.ones([VOCAB]))
    out[model.config.scan_layers] = metrics
  assert sorted(out[True]) == sorted(out[False])
  assert any(k.startswith("diagnostics/layer_1/") for k in out[True])
  for k in out[False]:
    np.testing.assert_allclose(out[True][k], out[False][k], rtol=1e-5, atol=1e-6)


def _saved_run(config, workdir):
  """A workdir as training leaves it: config.json and a checkpoint of the initial state."""
  data = setup.build_data(config)
  plan = setup.build(config, data.tokenizer.vocab_size, setup.make_mesh(config),
                     token_bytes=jnp.ones([data.tokenizer.vocab_size], jnp.float32))
  workdir_lib.prepare(workdir)
  workdir_lib.save_config(workdir, config)
  ckpt = checkpoints.Checkpointer(f"{workdir}/checkpoints", every_steps=1, keep=1,
                                  async_save=False)
  state = plan.init(jax.random.PRNGKey(0))
  ckpt.save(2, state, data.train.iterator(), force=True)
  ckpt.close()
  return plan, state, data


def test_a_scanned_run_loads_exports_and_scores_per_layer(tiny_config, tmp_path):
  config = tiny_config(model__scan_layers=True, model__num_layers=2)
  workdir = str(tmp_path / "run")
  plan, state, _ = _saved_run(config, workdir)
  assert scan.LAYERS in state.params
  model, params, loaded = ban_jax.load(workdir)
  assert not model.config.scan_layers and not loaded.model.scan_layers
  assert scan.LAYERS not in params and "block_1" in params
  tokens = jax.random.randint(jax.random.PRNGKey(3), (1, 16), 0, model.vocab_size)
  want = plan.model.apply({"params": jax.device_get(state.params)}, tokens)
  np.testing.assert_allclose(model.apply({"params": params}, tokens), want, rtol=1e-5,
                             atol=1e-5)
  # The .banx holds the per-layer tensors, identical to the checkpoint's slices.
  run = ban_jax.inference.trained.load(workdir)
  path = str(tmp_path / "m.banx")
  export.export(run, path, "float32")
  head = banx.read_header(path)
  weights = banx.Weights(path, head)
  stacked = jax.device_get(state.params)[scan.LAYERS]
  for i in range(2):
    kernel = f"block_{i}/mlp/up/kernel"
    np.testing.assert_array_equal(weights.get(kernel), stacked["mlp"]["up"]["kernel"][i])
  assert not head["config"]["model"]["scan_layers"]


def test_a_checkpoint_of_the_other_layout_stops_naming_its_format_version(tiny_config,
                                                                          tmp_path):
  workdir = str(tmp_path / "run")
  _saved_run(tiny_config(model__scan_layers=False), workdir)
  step_dir = os.path.join(workdir, "checkpoints", "2")
  manifest = os.path.join(step_dir, integrity.MANIFEST)
  with open(manifest) as f:
    written = json.load(f)
  written["version"] = 1                 # as the ban_jax before scanned layers wrote it
  with open(manifest, "w") as f:
    json.dump(written, f)
  config = tiny_config(model__scan_layers=True)
  data = setup.build_data(config)
  plan = setup.build(config, data.tokenizer.vocab_size, setup.make_mesh(config),
                     token_bytes=jnp.ones([data.tokenizer.vocab_size], jnp.float32))
  ckpt = checkpoints.Checkpointer(f"{workdir}/checkpoints", every_steps=1, keep=1,
                                  async_save=False)
  with pytest.raises(UserError, match=r"format version 1\) holds its layers one by one.*"
                                      r"--config.model.scan_layers=False"):
    ckpt.restore_latest(plan.abstract, data.train.iterator())
  ckpt.close()
  # The per-layer config still restores it.
  config = tiny_config(model__scan_layers=False)
  plan = setup.build(config, data.tokenizer.vocab_size, setup.make_mesh(config),
                     token_bytes=jnp.ones([data.tokenizer.vocab_size], jnp.float32))
  ckpt = checkpoints.Checkpointer(f"{workdir}/checkpoints", every_steps=1, keep=1,
                                  async_save=False)
  assert ckpt.restore_latest(plan.abstract, data.train.iterator())[1] == 2
  ckpt.close()
