"""Sharded training on a (data=4, fsdp=2) mesh of 8 fake CPU devices matches one device."""

import os
import subprocess
import sys
import textwrap

import pytest

from ban_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    import ml_collections
    from jax.sharding import Mesh
    from ban_jax.parallel import mesh as mesh_lib
    from ban_jax.training import setup, steps
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
      return losses, jax.device_get(state.params), specs

    one = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), mesh_lib.AXES)
    many = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(backend="", data=4, fsdp=2)))
    l1, p1, _ = run(one)
    l8, p8, specs = run(many)
    err = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
              for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)))
    print(json.dumps({"l1": l1, "l8": l8, "param_rel_err": err, "specs": sorted(specs),
                      "mesh": dict(many.shape)}))
""")


def test_data4_fsdp2_step_matches_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  import json  # pylint: disable=g-import-not-at-top
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["mesh"] == {"data": 4, "fsdp": 2}
  assert any("fsdp" in s for s in r["specs"])      # parameters really are split
  for a, b in zip(r["l1"], r["l8"]):
    assert abs(a - b) <= 1e-5 * abs(a)
  assert r["l8"][2] < r["l8"][0]
  assert r["param_rel_err"] < 1e-5


def test_mesh_that_does_not_fit_is_a_user_error():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ban_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="does not fit"):
    mesh_lib.make_mesh(ml_collections.ConfigDict(dict(backend="", data=2, fsdp=3)))
  with pytest.raises(UserError, match="at most one"):
    mesh_lib.make_mesh(ml_collections.ConfigDict(dict(backend="", data=-1, fsdp=-1)))
