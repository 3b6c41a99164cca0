"""Sharded training on a (data=4, fsdp=2) mesh of 8 fake CPU devices matches one device, and
its checkpoints move between the two meshes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ban_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import json, os, tempfile
    import grain
    import jax, jax.numpy as jnp, numpy as np
    import ml_collections
    from jax.sharding import Mesh
    from ban_jax.parallel import mesh as mesh_lib
    from ban_jax.training import checkpoints, setup, steps
    from configs import wiki

    assert jax.device_count() == 8
    c = wiki.get_config("transformer")
    c.model.d_model, c.model.mlp_dim, c.model.num_layers, c.data.seq_len = 64, 128, 2, 32
    c.model.dtype = "float32"
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 259, size=(8, 33)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
             "segment_ids": np.ones((8, 32), np.int32),
             "positions": np.tile(np.arange(32, dtype=np.int32), (8, 1)),
             "weights": np.ones((8, 32), np.float32), "index": np.arange(8, dtype=np.int32)}

    def run(mesh):
      plan = setup.build(c, 259, mesh, token_bytes=jnp.ones([259], jnp.float32))
      state = plan.init(jax.random.PRNGKey(0))
      step = plan.jit_step(steps.train_step)
      losses = []
      for _ in range(3):
        state, m = step(state, mesh_lib.global_batch(batch, plan.batch_sharding))
        losses.append(float(m["loss"]))
      specs = {str(s.spec) for s in jax.tree.leaves(plan.state_sharding.params)}
      return losses, state, specs, plan, step

    one = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), mesh_lib.AXES)
    many = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(backend="", data=4, fsdp=2)))
    l1, s1, _, plan1, step1 = run(one)
    l8, s8, specs, plan8, step8 = run(many)
    p1, p8 = jax.device_get(s1.params), jax.device_get(s8.params)
    err = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
              for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)))

    # Checkpoints across meshes: each run saves its step-3 state; the other mesh restores it
    # and takes step 4, which must give the loss that mesh computes from the same state
    # handed over in memory, bit for bit.
    def save(state, folder):
      ckpt = checkpoints.Checkpointer(folder, every_steps=1, keep=1, async_save=False)
      ckpt.save(3, state, iter(grain.MapDataset.range(4).to_iter_dataset()))
      ckpt.close()
      return jax.device_get(state)

    def next_loss(plan, step, state):
      return float(step(state, mesh_lib.global_batch(batch, plan.batch_sharding))[1]["loss"])

    def restored_loss(plan, step, folder):
      ckpt = checkpoints.Checkpointer(folder, every_steps=1, keep=1, async_save=False)
      state, restored_step, _ = ckpt.restore_latest(
          plan.abstract, iter(grain.MapDataset.range(4).to_iter_dataset()))
      ckpt.close()
      assert restored_step == 3
      shardings = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
      return next_loss(plan, step, state), sorted(shardings)

    tmp = tempfile.mkdtemp()
    host8 = save(s8, os.path.join(tmp, "written_on_8"))
    host1 = save(s1, os.path.join(tmp, "written_on_1"))
    on1, specs_on1 = restored_loss(plan1, step1, os.path.join(tmp, "written_on_8"))
    on8, specs_on8 = restored_loss(plan8, step8, os.path.join(tmp, "written_on_1"))
    handed1 = next_loss(plan1, step1, jax.device_put(host8, plan1.state_sharding))
    handed8 = next_loss(plan8, step8, jax.device_put(host1, plan8.state_sharding))
    print(json.dumps({"l1": l1, "l8": l8, "param_rel_err": err, "specs": sorted(specs),
                      "mesh": dict(many.shape), "restored_on_1": on1, "handed_on_1": handed1,
                      "restored_on_8": on8, "handed_on_8": handed8,
                      "specs_restored_on_8": specs_on8, "specs_restored_on_1": specs_on1}))
""")


@pytest.fixture(scope="module")
def two_meshes(cpu_devices_env):
  """The script's results: 3 steps on each mesh, then checkpoints moved between them."""
  out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=cpu_devices_env(8),
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_data4_fsdp2_step_matches_one_device(two_meshes):
  r = two_meshes
  assert r["mesh"] == {"data": 4, "fsdp": 2}
  assert any("fsdp" in s for s in r["specs"])      # parameters really are split
  for a, b in zip(r["l1"], r["l8"]):
    assert abs(a - b) <= 1e-5 * abs(a)
  assert r["l8"][2] < r["l8"][0]
  assert r["param_rel_err"] < 1e-5


def test_checkpoint_moves_between_8_devices_and_1(two_meshes):
  r = two_meshes
  # Restored in the target mesh's layout: split over fsdp on 8 devices, whole on 1.
  assert any("fsdp" in s for s in r["specs_restored_on_8"])
  assert not any("fsdp" in s for s in r["specs_restored_on_1"])
  # The next step after a restore is the step after handing the same state over in memory.
  assert r["restored_on_1"] == r["handed_on_1"]
  assert r["restored_on_8"] == r["handed_on_8"]
  # And the two meshes agree on it (the states differ only by float rounding).
  assert abs(r["restored_on_1"] - r["restored_on_8"]) <= 1e-5 * abs(r["restored_on_1"])
  assert r["restored_on_1"] < r["l1"][0]


def test_mesh_that_does_not_fit_is_a_user_error():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ban_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="does not fit"):
    mesh_lib.make_mesh(ml_collections.ConfigDict(dict(backend="", data=2, fsdp=3)))
  with pytest.raises(UserError, match="at most one"):
    mesh_lib.make_mesh(ml_collections.ConfigDict(dict(backend="", data=-1, fsdp=-1)))
