"""`ban_jax.load` (ban_jax/__init__.py) and `ban_jax.nnx.load`: the README's snippets run."""

import contextlib
import io
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ban_jax
from ban_jax import nnx as ban_nnx
from ban_jax.errors import UserError
from ban_jax.training import checkpoints
from ban_jax.training import setup
from ban_jax.training import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_snippets():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  section = readme.split("## Using a trained model", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _untrained_run(config, workdir):
  """A workdir as training leaves it (config.json, an orbax checkpoint of step 2), holding the
  initial state: what `load` reads is the format, and training would only cost time."""
  data = setup.build_data(config)
  plan = setup.build(config, data.tokenizer.vocab_size, setup.make_mesh(config),
                     token_bytes=jnp.ones([data.tokenizer.vocab_size], jnp.float32))
  workdir_lib.prepare(workdir)
  workdir_lib.save_config(workdir, config)
  ckpt = checkpoints.Checkpointer(f"{workdir}/checkpoints", every_steps=1, keep=1,
                                  async_save=False)
  ckpt.save(2, plan.init(jax.random.PRNGKey(0)), data.train.iterator(), force=True)
  ckpt.close()


def test_readme_snippets_score_a_string(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  _untrained_run(tiny_config(), workdir)
  linen_snippet, nnx_snippet = _readme_snippets()
  assert len(linen_snippet.strip().splitlines()) == 5
  printed, scope = [], {}
  for snippet in (linen_snippet, nnx_snippet):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      exec(snippet.replace('"runs/smoke"', repr(workdir)), scope)  # pylint: disable=exec-used
    printed.append(float(out.getvalue()))
  # By hand: the same nats per token from the run's parameters.
  model, params, config = ban_jax.load(workdir)
  assert config.model.name == tiny_config().model.name
  tokens = jnp.asarray([ban_jax.tokenizer(config).encode("The history of the city")])
  want = optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": params}, tokens[:, :-1]), tokens[:, 1:]).mean()
  np.testing.assert_allclose(printed, [want, want], rtol=1e-5)
  assert 0 < want < 10
  nnx_model, _ = ban_nnx.load(workdir)
  assert isinstance(nnx_model, ban_nnx.Linen)
  with pytest.raises(UserError, match="not the workdir of a run"):
    ban_jax.load(str(tmp_path))


def test_import_ban_jax_imports_no_jax():
  code = "import sys, ban_jax; print('jax' in sys.modules, callable(ban_jax.load))"
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True, env=dict(os.environ, PYTHONPATH=REPO))
  assert out.stdout.split() == ["False", "True"]
