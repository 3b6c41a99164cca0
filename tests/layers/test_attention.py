"""Tests for ban_jax/layers/attention.py."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.layers import attention
from ban_jax.ops import gravity as G
from ban_jax.ops import kv_cache


def _layer(**kw):
  """SelfAttention with 4 query heads, 2 kv heads of width 8; `kw` are AttentionConfig fields."""
  return attention.SelfAttention(attention.AttentionConfig(
      **dict(dict(num_heads=4, num_kv_heads=2, head_dim=8, block_size=8), **kw)))


def _x(batch=2, length=13, features=16, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, length, features))


@pytest.mark.parametrize("att, posn, tagging, want", [
    ("dot", "rope", False, {"query", "key", "value", "out"}),
    ("gravity", "none", False, {"query", "key", "value", "out", "gravity_mass_log"}),
    ("inverse_square", "power_law", True, {"query", "key", "value", "out", "power_law",
                                           "tagging"}),
    ("gravity", "alibi", True, {"query", "key", "value", "out", "gravity_mass_log",
                                "tagging"}),
])
def test_parameters(att, posn, tagging, want):
  params = jax.eval_shape(lambda: _layer(kind=att, positional=posn, tagging=tagging).init(
      jax.random.key(0), _x()))["params"]
  assert set(params) == want
  assert params["query"]["kernel"].shape == (16, 4, 8)
  assert params["key"]["kernel"].shape == (16, 2, 8)


def test_mass_starts_at_softplus_of_half():
  params = jax.jit(_layer(kind="gravity").init)(jax.random.key(0), _x())["params"]
  np.testing.assert_allclose(params["gravity_mass_log"], np.full(4, 0.5))
  np.testing.assert_allclose(jax.nn.softplus(params["gravity_mass_log"]), 0.974077, rtol=1e-5)


def test_layer_is_the_op_on_its_projections():
  """Gravity + power law + tagging + GQA + packed segments: the layer output equals the op
  applied by hand to the layer's own projections and parameters."""
  layer = _layer(kind="gravity", positional="power_law", tagging=True, mass_init=1.3)
  x = _x()
  seg = jnp.asarray([[1] * 6 + [2] * 5 + [0] * 2] * 2)
  pos = jnp.asarray([list(range(6)) + list(range(5)) + [0, 0]] * 2)
  params = jax.jit(layer.init)(jax.random.key(0), x)["params"]
  params["tagging"]["mass"]["kernel"] = 0.3 * jax.random.normal(jax.random.key(1), (16, 1))
  got, state = jax.jit(lambda p: layer.apply(
      {"params": p}, x, segment_ids=seg, positions=pos,
      mutable=["intermediates", "diagnostics"]))(params)
  p = params
  q = jnp.einsum("btf,fhd->bthd", x, p["query"]["kernel"])
  k = jnp.einsum("btf,fhd->bthd", x, p["key"]["kernel"])
  v = jnp.einsum("btf,fhd->bthd", x, p["value"]["kernel"])
  km = jax.nn.softplus(x @ p["tagging"]["mass"]["kernel"][:, 0] + p["tagging"]["mass"]["bias"])
  pl = (jax.nn.softplus(p["power_law"]["power"]), jax.nn.softplus(p["power_law"]["scale"]))
  o = G.gravity_attention(q, k, v, jax.nn.softplus(p["gravity_mass_log"]), segment_ids=seg,
                          positions=pos, key_mass=km, power_law=pl, implementation="reference")
  want = jnp.einsum("bthd,hdf->btf", o, p["out"]["kernel"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  sown = state["intermediates"]["tagging"]["key_mass"][0]
  np.testing.assert_allclose(sown, km, rtol=1e-6)
  mass_mean = state["diagnostics"]["gravity_mass_mean"][0]
  np.testing.assert_allclose(mass_mean, np.log1p(np.exp(1.3)), rtol=1e-5)


@pytest.mark.parametrize("att, posn, tagging", [
    ("gravity", "power_law", True),
    ("dot", "rope", False),        # the output from jax.nn, the weights from the op
])
def test_sown_attention_weights_reproduce_the_output(att, posn, tagging):
  """Asked for (a mutable "attention_weights"), the layer sows weights that, applied to its
  own values, give its output; causal, rows summing to 1 (0 on padding); not asked, nothing."""
  layer = _layer(kind=att, positional=posn, tagging=tagging)
  x = _x()
  seg = jnp.asarray([[1] * 6 + [2] * 5 + [0] * 2] * 2)
  pos = jnp.asarray([list(range(6)) + list(range(5)) + [0, 0]] * 2)
  params = layer.init(jax.random.key(0), x)["params"]
  got, state = layer.apply({"params": params}, x, segment_ids=seg, positions=pos,
                           mutable=[attention.WEIGHTS_COLLECTION])
  w = state[attention.WEIGHTS_COLLECTION]["weights"][0]
  assert w.shape == (2, 4, 13, 13)
  v = jnp.repeat(jnp.einsum("btf,fhd->bthd", x, params["value"]["kernel"]), 2, axis=2)
  want = jnp.einsum("bhqk,bkhd,hdf->bqf", w, v, params["out"]["kernel"])
  real = np.asarray(seg != 0)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(w.sum(-1), np.broadcast_to(real[:, None], (2, 4, 13)), atol=1e-5)
  assert float(jnp.abs(jnp.triu(w, 1)).max()) == 0.0
  assert float(w[:, :, 7, :6].max()) == 0.0   # no attention across documents
  _, quiet = layer.apply({"params": params}, x, segment_ids=seg, positions=pos,
                         mutable=["diagnostics"])
  assert attention.WEIGHTS_COLLECTION not in quiet


@pytest.mark.parametrize("att, posn, tagging", [
    ("gravity", "power_law", True),
    ("inverse_square", "alibi", False),
    ("dot", "rope", False),        # full forward via jax.nn, decode via the op
])
def test_decode_with_cache_equals_full_forward(att, posn, tagging):
  """Prefill 5 tokens, then one at a time into an unbounded ("full") cache longer than the
  text: every output equals the full causal forward at that position."""
  with jax.default_matmul_precision("highest"):   # jax.nn's float32 is TF32 on GPU otherwise
    _check_decode(att, posn, tagging)


def _check_decode(att, posn, tagging):
  layer = _layer(kind=att, positional=posn, tagging=tagging)
  x = _x(length=12)
  params = jax.jit(layer.init)(jax.random.key(1), x)["params"]
  full = jax.jit(layer.apply)({"params": params}, x)
  spec = kv_cache.KVSpec("full", slots=16)
  step = jax.jit(lambda cache, xt: layer.apply({"params": params, "cache": cache}, xt, kv=spec,
                                                mutable=["cache"]))
  out, state = jax.jit(lambda xt: layer.apply({"params": params}, xt, kv=spec,
                                              mutable=["cache"]))(x[:, :5])
  outs = [out]
  for t in range(5, 12):
    out, state = step(state["cache"], x[:, t:t + 1])
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=2e-6)
  held = np.sort(np.asarray(state["cache"]["slots"]["position"]), axis=1)
  np.testing.assert_array_equal(held, [[-1] * 4 + list(range(12))] * 2)


def test_bad_configuration_raises_value_error_naming_the_flat_field():
  with pytest.raises(ValueError, match=re.escape(
      "model.attention='cosine' is not one of ('dot', 'gravity', 'inverse_square')")):
    attention.AttentionConfig(kind="cosine")
  with pytest.raises(ValueError, match="model.positional='sinusoid'"):
    attention.AttentionConfig(positional="sinusoid")
  with pytest.raises(ValueError, match="multiple of model.num_kv_heads=3"):
    attention.AttentionConfig(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="model.attention_options.implementation"):
    attention.AttentionConfig(implementation="cuda")
  with pytest.raises(ValueError, match="model.attention_options.eps"):
    attention.AttentionConfig(eps=0.0)
  with pytest.raises(TypeError, match="model.num_heads"):
    attention.AttentionConfig(num_heads="4")


def test_defaults_make_a_usable_layer():
  """The config a user would write to lift the layer into their own model."""
  layer = attention.SelfAttention(attention.AttentionConfig(num_heads=4, head_dim=16,
                                                            kind="gravity"))
  params = jax.eval_shape(lambda: layer.init(jax.random.key(0), _x()))["params"]
  assert params["key"]["kernel"].shape == (16, 4, 16)      # num_kv_heads None: num_heads
  # head_dim None: the input width over the heads.
  params = jax.eval_shape(lambda: attention.SelfAttention().init(jax.random.key(0), _x()))
  assert params["params"]["query"]["kernel"].shape == (16, 4, 4)
