"""Tests for ban_jax.layers.branches: the branched attractor's layers and their composition."""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from ban_jax.layers import branches as B
from ban_jax.models.flops import compiled_flops


def _layer(dtype=jnp.float32, **settings):
  """A BranchedAttractor with `settings` as AttractorConfig fields."""
  return B.BranchedAttractor(B.AttractorConfig(**settings), dtype=dtype)


def _x(seed, shape=(2, 5, 12)):
  x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True))  # as after an RMSNorm


def _params(layer, x, seed, **kwargs):
  """Random parameters of the right shapes (through eval_shape: no init compile, fast tests)."""
  shapes = jax.eval_shape(lambda: layer.init(jax.random.key(0), x, **kwargs))["params"]
  rng = np.random.default_rng(seed)
  def draw(s):
    std = s.shape[-2] ** -0.5 if len(s.shape) >= 2 else 0.3
    return jnp.asarray(rng.normal(size=s.shape) * std, s.dtype)
  return jax.tree.map(draw, shapes)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def _reference(params, x, *, steps, alpha, gamma, threshold, cap, routing):
  """float64 NumPy version of BranchedAttractor.__call__ (the documented maths, step by step)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  b = np.einsum("btm,nmd->btnd", x, p["branches"]["kernel"]) + p["branches"]["bias"]
  s = np.einsum("btnd,d->btn", b, p["salience"]["vector"]) + p["salience"]["bias"]
  probs = np.exp(s - s.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  focus = s.argmax(-1)
  h = np.take_along_axis(b, focus[..., None, None], axis=2)[..., 0, :]
  pf = np.take_along_axis(probs, focus[..., None], axis=-1)[..., 0]
  n = b.shape[2]
  drive = h
  if n > 1:
    weights = probs * (1 - np.eye(n)[focus])
    m = np.einsum("btn,btnd->btd", weights, np.tanh(b)) @ p["gate"]["proj"]["kernel"]
    sn = np.linalg.norm(m, axis=-1, keepdims=True)
    hn = np.linalg.norm(h, axis=-1, keepdims=True)
    g = np.where(sn > threshold * hn, m * np.minimum(1, cap * hn / np.maximum(sn, 1e-300)), 0)
    drive = h + gamma * g
  z = np.tanh(h)
  for _ in range(steps):
    z = (1 - alpha) * z + alpha * np.tanh(z @ p["attractor"]["w"] + drive)
  y = z @ p["out"]["kernel"]
  return y * pf[..., None] if routing == "scale" else y


def test_branch_generator_is_n_independent_projections():
  x = _x(0)
  gen = B.BranchGenerator(num_branches=3, branch_width=7)
  params = jax.jit(gen.init)(jax.random.key(0), x)["params"]
  params = jax.tree.map(lambda a: a + 0.1, params)   # non-zero bias
  out = gen.apply({"params": params}, x)
  assert out.shape == (2, 5, 3, 7)
  for n in range(3):
    expected = np.asarray(x, np.float64) @ params["kernel"][n] + params["bias"][n]
    assert _rel(out[:, :, n], expected) < 1e-6
  # Independent draws: the branch kernels differ from each other.
  k = np.asarray(params["kernel"])
  assert np.min([np.abs(k[i] - k[j]).max() for i in range(3) for j in range(i)]) > 0.1


def test_select_focus_and_gather():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(2, 6, 5)).astype(np.float32)
  branches = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
  focus, probs = B.select_focus(scores)
  np.testing.assert_array_equal(focus, scores.argmax(-1))
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  gathered = B.gather_branch(branches, focus)
  for i in range(2):
    for t in range(6):
      np.testing.assert_array_equal(gathered[i, t], branches[i, t, scores[i, t].argmax()])


def test_load_balance_is_one_when_balanced_and_n_when_collapsed():
  n = 4
  mask = np.ones((1, 8), bool)
  focus = np.arange(8)[None] % n
  uniform = np.full((1, 8, n), 1 / n, np.float32)
  np.testing.assert_allclose(B.load_balance(focus, uniform, mask), 1.0, rtol=1e-6)
  collapsed = np.asarray(jax.nn.one_hot(np.zeros((1, 8), int), n))
  np.testing.assert_allclose(B.load_balance(np.zeros((1, 8), int), collapsed, mask), n, rtol=1e-6)
  # Padding is ignored: collapsed real positions plus balanced padding still reads collapsed.
  mixed_focus = np.concatenate([np.zeros((1, 8), int), focus], axis=1)
  mixed_probs = np.concatenate([collapsed, uniform], axis=1)
  mixed_mask = np.concatenate([mask, ~mask], axis=1)
  np.testing.assert_allclose(B.load_balance(mixed_focus, mixed_probs, mixed_mask), n, rtol=1e-6)


@pytest.mark.parametrize("routing,n", [("scale", 1), ("straight_through", 3), ("scale", 8)])
def test_branched_attractor_matches_float64_reference(routing, n):
  settings = dict(steps=5, alpha=0.6, gamma=0.9, threshold=0.05, cap=0.15, routing=routing)
  layer = _layer(num_branches=n, branch_width=10, **settings)
  x = _x(n)
  params = _params(layer, x, n)
  y = jax.jit(layer.apply)({"params": params}, x)
  assert y.shape == x.shape
  assert _rel(y, _reference(params, x, **settings)) < 2e-5


def test_attractor_weights_start_contractive():
  block = B.AttractorBlock(steps=2, alpha=0.5, init_scale=0.7)
  w = jax.jit(block.init)(jax.random.key(0), jnp.zeros((1, 2, 16)))["params"]["w"]
  np.testing.assert_allclose(np.linalg.svd(np.asarray(w), compute_uv=False), 0.7, rtol=1e-5)


def test_implicit_grad_layer_runs_and_matches_forward():
  x = _x(3)
  a = _layer(num_branches=4, steps=6)
  b = _layer(num_branches=4, steps=6, implicit_grad=True)
  params = _params(a, x, 0)
  np.testing.assert_allclose(jax.jit(a.apply)({"params": params}, x),
                             jax.jit(b.apply)({"params": params}, x), rtol=1e-6, atol=1e-7)
  g = jax.jit(jax.grad(lambda p: b.apply({"params": p}, x).sum()))(params)
  assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(g))
  assert np.abs(np.asarray(g["attractor"]["w"])).max() > 0


@pytest.mark.parametrize("routing", ["scale", "straight_through"])
def test_gradients_reach_the_scorer_and_every_part(routing):
  x = _x(4)
  layer = _layer(num_branches=4, steps=3, routing=routing)
  params = _params(layer, x, 1)
  cot = np.random.default_rng(0).normal(size=x.shape)
  g = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) * cot)))(params)
  for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]:
    assert np.abs(np.asarray(leaf)).max() > 0, jax.tree_util.keystr(path)


def test_check_grads_of_the_layer_in_float64():
  with jax.enable_x64(True):
    x = np.asarray(_x(5, (1, 3, 6)), np.float64)
    layer = _layer(num_branches=3, branch_width=5, steps=3, threshold=0.0, cap=0.15,
                   dtype=jnp.float64)
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), _params(layer, x, 2))
    f = jax.jit(lambda p, x_: layer.apply({"params": p}, x_))
    # Small steps keep finite differences inside one routing decision and one gate state.
    check_grads(f, (params, x), order=1, modes=["rev"], eps=1e-7)


def test_diagnostics_and_losses():
  x = _x(6, (2, 8, 12))
  mask = np.ones((2, 8), bool)
  mask[1, 5:] = False
  layer = _layer(num_branches=4, steps=4, gamma=0.5, load_balance_weight=0.02)
  params = _params(layer, x, 0, mask=mask)
  apply = jax.jit(lambda p, x_, m: layer.apply(
      {"params": p}, x_, mask=m, mutable=["diagnostics", "losses", "intermediates"]))
  _, state = apply(params, x, mask)
  d = {k: float(v[0]) for k, v in state["diagnostics"].items()}
  usage = np.array([d[f"focus_usage_{i}"] for i in range(4)])
  np.testing.assert_allclose(usage.sum(), 1.0, rtol=1e-6)
  focus = np.asarray(state["intermediates"]["focus"][0])
  expected_usage = np.bincount(focus[mask], minlength=4) / mask.sum()
  np.testing.assert_allclose(usage, expected_usage, rtol=1e-6)
  assert 0 <= d["salience_entropy"] <= np.log(4) + 1e-6
  assert 0 <= d["gate_open_rate"] <= 1
  assert 0 <= d["influence_magnitude"] <= 0.5 * 0.15 * (1 + 1e-5)
  assert d["attractor_residual"] > 0 and d["attractor_residual_rel"] > 0
  assert 1 - 1e-6 <= d["load_balance"] <= 4 + 1e-6
  np.testing.assert_allclose(float(state["losses"]["load_balance"][0]),
                             0.02 * d["load_balance"], rtol=1e-6)


def test_closed_gate_means_periphery_has_no_effect():
  x = _x(7)
  settings = dict(num_branches=4, steps=4, threshold=0.99, cap=1.0)
  layer = _layer(**settings)
  params = _params(layer, x, 0)
  apply = jax.jit(lambda p: layer.apply({"params": p}, x, mutable=["diagnostics"]))
  y, state = apply(params)
  assert float(state["diagnostics"]["gate_open_rate"][0]) == 0.0
  params2 = jax.tree.map(lambda a: a, params)
  params2["gate"]["proj"]["kernel"] = params["gate"]["proj"]["kernel"] * 0.5
  np.testing.assert_array_equal(y, apply(params2)[0])


@pytest.mark.parametrize("bad, flat_name", [
    (dict(num_branches=0), "num_branches"), (dict(routing="soft"), "routing"),
    (dict(load_balance_weight=-1.0), "load_balance_weight"), (dict(steps=0), "attractor_steps"),
    (dict(threshold=0.3, cap=0.15), "threshold"), (dict(alpha=0.0), "alpha"),
    (dict(branch_width=-1), "branch_width")])
def test_bad_settings_raise_value_error_naming_the_flat_field(bad, flat_name):
  with pytest.raises(ValueError, match=f"model.{flat_name}="):
    B.AttractorConfig(**bad)


def test_wrong_types_raise_type_error():
  with pytest.raises(TypeError, match="model.num_branches"):
    B.AttractorConfig(num_branches=2.5)


def _layer_flops(n, steps, width=32, tokens=(2, 16)):
  layer = _layer(num_branches=n, steps=steps, unroll=True)
  x = jnp.zeros(tokens + (width,))
  params = jax.eval_shape(lambda: layer.init(jax.random.key(0), x))
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
  return compiled_flops(lambda p, x_: layer.apply(p, x_), params, x)


def test_deep_part_flops_are_independent_of_the_number_of_branches():
  # The attractor is unrolled so XLA counts every step (it counts a loop body once otherwise).
  per_step = [(_layer_flops(n, 6) - _layer_flops(n, 2)) / 4 for n in (2, 4, 8, 16)]
  assert len(set(per_step)) == 1, per_step
  # One step is at least the [tokens, d] x [d, d] product: 2 * 32 tokens * 32 * 32 FLOPs.
  assert per_step[0] >= 2 * 32 * 32 * 32
  # The whole layer does grow with N (the branch projections): the check above is not vacuous.
  assert _layer_flops(16, 2) > _layer_flops(2, 2)
