"""A trained run comes back from its workdir (or an export of it) and scores as it did."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.errors import UserError
from ban_jax.inference import trained
from ban_jax.training import evaluate
from ban_jax.training import setup
from ban_jax.training import steps
from ban_jax.training import train


def _val_bpb(run):
  data = setup.build_data(run.config)
  mesh = setup.make_mesh(run.config)
  fn = jax.jit(lambda p, b: steps.eval_step(p, b, model=run.model,
                                            token_bytes=jnp.asarray(run.tokenizer.token_bytes,
                                                                    jnp.float32)))
  with mesh:
    return evaluate.evaluate(fn, run.params, data.validation, run.config.eval.batch_size,
                             run.config.eval.max_batches,
                             setup.mesh_lib.batch_sharding(mesh))["bits_per_byte"]


def test_load_and_export_reproduce_the_runs_final_score(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  final = train.train_and_evaluate(tiny_config(train__steps=12, checkpoint__every_steps=6,
                                               eval__heldout_path=""), workdir)
  run = trained.load(workdir)
  assert run.step == 12
  assert _val_bpb(run) == pytest.approx(final["eval/bits_per_byte"], rel=1e-5)
  older = trained.load(workdir, step=6)
  assert _val_bpb(older) > _val_bpb(run)       # 6 more steps of training lowered it

  trained.export(run, str(tmp_path / "export"))
  back = trained.load(str(tmp_path / "export"))
  jax.tree.map(np.testing.assert_array_equal, back.params, run.params)
  assert back.config.to_dict() == run.config.to_dict()

  longer = trained.load(workdir, overrides={"data.seq_len": 2 * run.config.data.seq_len})
  assert longer.config.data.seq_len == 2 * run.config.data.seq_len
  with pytest.raises(UserError, match="no checkpoint of step 7"):
    trained.load(workdir, step=7)
  with pytest.raises(UserError, match="no field 'seq_length'"):
    trained.load(workdir, overrides={"data.seq_length": 256})
  with pytest.raises(UserError, match="does not fit the model"):
    trained.load(workdir, overrides={"model.d_model": 2 * run.config.model.d_model})


def test_not_a_run_is_one_clear_error(tmp_path):
  with pytest.raises(UserError, match="not the workdir of a run"):
    trained.load(str(tmp_path))
  (tmp_path / "config.json").write_text('{"model": ')
  with pytest.raises(UserError, match="not valid JSON"):
    trained.load(str(tmp_path))


def test_damaged_export_is_one_clear_error(tiny_config, tmp_path):
  with open(tmp_path / "config.json", "w") as f:
    json.dump(tiny_config().to_dict(), f)
  (tmp_path / trained.EXPORTED_PARAMS).write_bytes(b"\x93not msgpack")
  with pytest.raises(UserError, match="unreadable"):
    trained.load(str(tmp_path))
  os.remove(tmp_path / trained.EXPORTED_PARAMS)
  with pytest.raises(UserError, match="does not exist: no checkpoints"):
    trained.load(str(tmp_path))
