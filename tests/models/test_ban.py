"""Tests for ban_jax.models.ban: the Branched Attractor Network language model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ban_jax.models import make_config
from ban_jax.models.ban import BANLM
from ban_jax.models.common import param_count
from ban_jax.ops.surprisal import token_surprisal

# Flat `config.model` fields, as configs/wiki.py spells them.
TINY = dict(d_model=32, num_layers=2, num_heads=2, num_branches=3, attractor_steps=3)


def _ban(**flat):
  """A BANLM with vocabulary 64 from flat config.model fields (TINY + `flat`)."""
  return BANLM(vocab_size=64, config=make_config(dict(TINY, name="ban", **flat)))


def _params(model, tokens, seed=0):
  """Random parameters of the right shapes through eval_shape (no init compile)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))["params"]
  rng = np.random.default_rng(seed)
  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return jnp.ones(s.shape, s.dtype)                     # RMSNorm scales
    std = s.shape[-2] ** -0.5 if len(s.shape) >= 2 else 0.3
    std = 1.0 if name.endswith("['embedding']") else std   # as BANLM initialises it
    return jnp.asarray(rng.normal(size=s.shape) * std, s.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _tokens(seed, length=16, vocab=64):
  """Distinct tokens per row, so an embedding row's gradient is one position's gradient."""
  rng = np.random.default_rng(seed)
  return np.stack([rng.permutation(vocab)[:length] for _ in range(2)]).astype(np.int32)


def _future_gradients(model, params, tokens, **kwargs):
  """d(logits[0, t] · r_t)/d(embedding rows) for every t: [length, vocab, width]."""
  r = np.random.default_rng(1).normal(size=(tokens.shape[1], model.vocab_size))

  def per_position(table):
    p = dict(params, embed={"embedding": table})
    logits = model.apply({"params": p}, tokens, **kwargs)
    return jnp.sum(logits[0] * r, axis=-1)                  # [length]

  return np.asarray(jax.jit(jax.jacrev(per_position))(params["embed"]["embedding"]))


@pytest.mark.parametrize("settings", [dict(tie_embeddings=False),
                                      dict(implicit_grad=True, routing="straight_through",
                                           num_kv_heads=1, tie_embeddings=False,
                                           attention="gravity", positional="power_law",
                                           tagging=True)])
def test_logits_have_exactly_zero_gradient_from_future_tokens(settings):
  model = _ban(**settings)
  tokens = _tokens(0)
  params = _params(model, tokens)
  jac = _future_gradients(model, params, tokens)
  row_norms = np.abs(jac).sum(-1)                           # [t, vocab]
  length = tokens.shape[1]
  for t in range(length):
    future = tokens[0, t + 1:]
    past = tokens[0, :t + 1]
    assert np.all(row_norms[t, future] == 0.0), t           # exactly zero, not just small
    assert np.all(row_norms[t, past] > 0.0), t              # the check can fail: past matters


def test_packed_documents_do_not_see_each_other():
  model = _ban(tie_embeddings=False)
  tokens = _tokens(1)
  segment_ids = np.array([[1] * 6 + [2] * 10] * 2, np.int32)
  positions = np.array([list(range(6)) + list(range(10))] * 2, np.int32)
  params = _params(model, tokens)
  jac = _future_gradients(model, params, tokens, segment_ids=segment_ids, positions=positions)
  row_norms = np.abs(jac).sum(-1)
  for t in range(6, 16):
    assert np.all(row_norms[t, tokens[0, :6]] == 0.0)      # second document ignores the first
    assert np.all(row_norms[t, tokens[0, 6:t + 1]] > 0.0)


@pytest.mark.parametrize("remat", [False, True])
def test_interface_shapes_diagnostics_and_losses(remat):
  model = _ban(remat=remat)
  tokens = _tokens(2)
  segment_ids = np.ones_like(tokens)
  segment_ids[1, 12:] = 0                                   # padding at the end of row 1
  params = _params(model, tokens)

  def loss(p):
    logits, state = model.apply({"params": p}, tokens, segment_ids=segment_ids,
                                mutable=["diagnostics", "losses"])
    return logits.sum() + sum(jax.tree.leaves(state["losses"])), (logits, state)

  grads, (logits, state) = jax.jit(jax.grad(loss, has_aux=True))(params)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  assert logits.shape == (2, 16, 64) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))
  names = {f"focus_usage_{i}" for i in range(3)} | {
      "salience_entropy", "load_balance", "attractor_residual", "attractor_residual_rel",
      "influence_magnitude", "gate_open_rate"}
  for layer in ("layer_0", "layer_1"):
    diag = state["diagnostics"][layer]["attractor"]
    assert set(diag) == names
    usage = sum(float(diag[f"focus_usage_{i}"][0]) for i in range(3))
    np.testing.assert_allclose(usage, 1.0, rtol=1e-6)
    loss = float(state["losses"][layer]["attractor"]["load_balance"][0])
    np.testing.assert_allclose(loss, 0.01 * float(diag["load_balance"][0]), rtol=1e-6)


def test_param_count_matches_the_formula():
  model = _ban(num_kv_heads=1, branch_width=24)
  v, d, n, b, hd = 64, 32, 3, 24, 16
  attention = d * 2 * hd + 2 * d * 1 * hd + 2 * hd * d
  branched = n * d * b + n * b + b + n + 2 * b * b + b * d
  assert param_count(model) == v * d + 2 * (attention + 2 * d + branched) + d
  untied = _ban(num_kv_heads=1, branch_width=24, tie_embeddings=False)
  assert param_count(untied) == param_count(model) + d * v


def test_bfloat16_dropout_and_untied_embeddings():
  tokens = _tokens(3)
  model = _ban(dtype="bfloat16", dropout_rate=0.5, tie_embeddings=False)
  params = _params(model, tokens)
  det, drop = jax.jit(lambda p: (
      model.apply({"params": p}, tokens),
      model.apply({"params": p}, tokens, deterministic=False,
                  rngs={"dropout": jax.random.key(1)})))(params)
  assert det.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(det)))
  assert np.abs(np.asarray(drop) - np.asarray(det)).max() > 0


@pytest.mark.parametrize("bad", [dict(d_model=33), dict(num_kv_heads=3), dict(num_layers=0),
                                 dict(dropout_rate=1.0), dict(alpha=2.0), dict(cap=0.0),
                                 dict(routing="soft"), dict(dtype="int8")])
def test_bad_config_raises_value_error_naming_the_field(bad):
  (field,) = bad
  with pytest.raises(ValueError, match=f"model.{field}"):
    _ban(**bad)


def test_bad_vocab_size_raises_value_error():
  with pytest.raises(ValueError, match="vocab_size"):
    jax.eval_shape(lambda: BANLM(vocab_size=0).init(jax.random.key(0), _tokens(0)))


@pytest.mark.parametrize("implicit_grad", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_loss_falls_when_training_on_text(implicit_grad):
  text = (b"Information gravity: dense regions pull on the systems around them. " * 8)[:2 * 65]
  data = np.frombuffer(text, np.uint8).astype(np.int32).reshape(2, 65) % 64
  inputs, targets = data[:, :-1], data[:, 1:]
  model = _ban(implicit_grad=implicit_grad)
  params = _params(model, inputs)
  optimizer = optax.adam(1e-2)

  def loss_fn(p):
    logits, state = model.apply({"params": p}, inputs, mutable=["diagnostics", "losses"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    return ce + sum(jax.tree.leaves(state["losses"])), ce

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, opt):
    (_, ce), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    updates, opt = optimizer.update(g, opt, p)
    return optax.apply_updates(p, updates), opt, ce

  opt = optimizer.init(params)
  losses = []
  for _ in range(25):
    params, opt, ce = step(params, opt)
    losses.append(float(ce))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.5 * losses[0], losses


def test_from_a_config_dict():
  ml_collections = pytest.importorskip("ml_collections")
  cfg = ml_collections.ConfigDict(dict(
      name="ban", d_model=32, num_layers=2, num_heads=2, num_branches=3, attractor_steps=3,
      attention="gravity", positional="power_law", tagging=True, dtype="float32",
      attention_options=dict(eps=0.2)))
  model = BANLM(vocab_size=64, config=make_config(cfg))
  assert (model.config.width, model.config.depth, model.config.attention.eps) == (32, 2, 0.2)
  tokens = _tokens(4)
  params = _params(model, tokens)
  logits, state = jax.jit(lambda p: model.apply({"params": p}, tokens,
                                                mutable=["diagnostics"]))(params)
  assert logits.shape == (2, 16, 64) and np.all(np.isfinite(np.asarray(logits)))
  assert "gravity_mass_mean" in state["diagnostics"]["layer_0"]["attention"]
  cfg.mlp_dim = 128
  with pytest.raises(ValueError, match="model.mlp_dim"):
    make_config(cfg)


SURPRISAL = dict(attention="gravity", positional="power_law", tagging=True,
                 tagging_source="surprisal", tie_embeddings=False)


def _set_tagging(params, slope, bias):
  params = jax.tree.map(lambda x: x, params)
  for layer in ("layer_0", "layer_1"):
    params[layer]["attention"]["tagging"] = {"slope": jnp.float32(slope),
                                             "bias": jnp.float32(bias)}
  return params


def test_surprisal_tagging_reads_the_window_with_the_untagged_model_first():
  tagged, plain = _ban(**SURPRISAL), _ban(**dict(SURPRISAL, tagging=False))
  tokens = _tokens(3)
  params = _set_tagging(_params(tagged, tokens), 0.8, -0.5)
  plain_params = {k: v for k, v in params.items()}
  for layer in ("layer_0", "layer_1"):
    plain_params[layer] = dict(params[layer], attention={
        k: v for k, v in params[layer]["attention"].items() if k != "tagging"})
  logits, state = tagged.apply({"params": params}, tokens,
                               mutable=["diagnostics", "losses", "intermediates"])
  reading = plain.apply({"params": plain_params}, tokens)
  s = np.asarray(token_surprisal(reading, tokens), np.float64)
  want = np.log1p(np.exp(0.8 * s - 0.5))
  got = np.asarray(state["intermediates"]["layer_0"]["attention"]["tagging"]["key_mass"][0])
  assert np.max(np.abs(got - want) / want) < 1e-5          # masses from the reading pass
  assert np.max(np.abs(np.asarray(logits) - np.asarray(reading))) > 1e-3   # and they matter
  # The reading pass sows nothing: one value per diagnostic, one load-balance loss per layer.
  assert all(len(v) == 1 for v in jax.tree.leaves(
      state["diagnostics"], is_leaf=lambda x: isinstance(x, tuple)))
  assert len(jax.tree.leaves(state["losses"])) == 2
  # With unit masses (slope 0, bias softplus⁻¹(1)) the tagged model is the untagged one.
  unit = _set_tagging(params, 0.0, float(np.log(np.expm1(1.0))))
  np.testing.assert_allclose(tagged.apply({"params": unit}, tokens), reading, atol=2e-5)


@pytest.mark.parametrize("remat", [False, True])
def test_surprisal_tagging_is_causal_under_perturbation(remat):
  # The surprisal path is stop-gradient, so gradients cannot show a leak: change tokens.
  model = _ban(**SURPRISAL, remat=remat)
  tokens = _tokens(4)
  params = _set_tagging(_params(model, tokens), 1.0, 0.0)
  apply = jax.jit(lambda t: model.apply({"params": params}, t))
  base = np.asarray(apply(tokens))
  for t in (3, 9, 15):
    changed = tokens.copy()
    changed[:, t] = (changed[:, t] + 1) % 64
    out = np.asarray(apply(changed))
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert np.max(np.abs(out[:, t:] - base[:, t:])) > 0
  grads = jax.grad(lambda p: model.apply({"params": p}, tokens).sum())(params)
  assert float(jnp.abs(grads["layer_1"]["attention"]["tagging"]["slope"])) > 0
