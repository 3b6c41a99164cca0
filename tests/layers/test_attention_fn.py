"""Tests for ban_jax/layers/attention_fn.py: gravity attention as flax's `attention_fn`."""

import bz2
import importlib.metadata
import inspect
import re
from typing import Callable

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ban_jax.layers import attention_fn
from ban_jax.ops import gravity as G

WIKI_DUMP = ("gensim/test/test_data/"
             "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")


def _qkv(shape_q, shape_kv, seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(k[0], shape_q), jax.random.normal(k[1], shape_kv),
          jax.random.normal(k[2], shape_kv))


# ------------------------------------------------------------------------------------------
# The flax calling convention.


@pytest.mark.parametrize("flax_fn", [nn.dot_product_attention, nnx.dot_product_attention],
                         ids=["linen", "nnx"])
def test_accepts_every_argument_of_flax_dot_product_attention(flax_fn):
  ours = inspect.signature(attention_fn.gravity_attention_fn).parameters
  missing = [name for name in inspect.signature(flax_fn).parameters if name not in ours]
  assert not missing, missing
  ours = inspect.signature(attention_fn.GravityAttentionFn.__call__).parameters
  missing = [name for name in inspect.signature(flax_fn).parameters if name not in ours]
  assert not missing, missing


def test_dropout_matches_flax_with_the_same_rng():
  """score="dot", M = 1 is flax's attention: with dropout on and the same key, the same output
  and gradients (two batch axes, a mask and a bias), broadcast mask or not."""
  q, k, v = _qkv((2, 3, 5, 4, 8), (2, 3, 6, 4, 8))
  mask = jax.random.bernoulli(jax.random.key(3), 0.8, (2, 3, 4, 5, 6))
  bias = jax.random.normal(jax.random.key(4), (4, 5, 6))
  kw = dict(bias=bias, mask=mask, dropout_rng=jax.random.key(5), dropout_rate=0.3)

  @jax.jit
  def run(q, k, v):
    out = {}
    for broadcast in (True, False):
      ours = lambda q, k, v, b=broadcast: attention_fn.gravity_attention_fn(
          q, k, v, score="dot", broadcast_dropout=b, **kw)
      theirs = lambda q, k, v, b=broadcast: nn.dot_product_attention(
          q, k, v, broadcast_dropout=b, **kw)
      out[broadcast] = (ours(q, k, v), theirs(q, k, v))
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
    grads = [jax.grad(loss(f), (0, 1, 2))(q, k, v) for f in (ours, theirs)]
    plain = attention_fn.gravity_attention_fn(q, k, v, score="dot", bias=bias, mask=mask)
    return out, grads, plain

  out, (g_ours, g_theirs), plain = run(q, k, v)
  for ours, theirs in out.values():
    np.testing.assert_allclose(ours, theirs, atol=2e-6)
    assert not np.allclose(ours, plain)          # the dropout did something
  assert not np.allclose(out[True][0], out[False][0])
  for a, b in zip(g_ours, g_theirs):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_gravity_dropout_drops_the_weights_flax_would():
  """Flax with a zero query attends by its bias alone; with the gravity logits
  M²/(‖q−k‖²+ε) as that bias it is gravity attention, dropout included (GQA, is_causal)."""
  q, k, v = _qkv((2, 9, 4, 8), (2, 9, 2, 8))
  mass = jnp.asarray([0.5, 1.0, 1.5, 2.0])
  kr = jnp.repeat(k, 2, axis=2)
  d2 = jnp.sum((q[:, :, None] - kr[:, None]) ** 2, -1).transpose(0, 3, 1, 2)   # [b, h, q, k]
  logits = (mass ** 2)[:, None, None] / (d2 + 0.1)
  kw = dict(dropout_rng=jax.random.key(7), dropout_rate=0.2, is_causal=True)
  flax_fn = lambda **kw: jax.jit(lambda: nnx.dot_product_attention(
      jnp.zeros_like(q), k, v, bias=logits, **kw))()
  ours = lambda **kw: jax.jit(lambda: attention_fn.gravity_attention_fn(
      q, k, v, mass=mass, **kw))()
  np.testing.assert_allclose(ours(**kw), flax_fn(**kw), rtol=1e-5, atol=1e-5)
  # Without dropout it is the memory-efficient op with the same top-left causal mask.
  np.testing.assert_allclose(ours(is_causal=True), flax_fn(is_causal=True), rtol=1e-5,
                             atol=1e-5)


def test_sow_weights_sows_the_gravity_weights():
  """Linen's sow_weights=True sows the weights (as flax does) and leaves the params alone."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 16))
  mha = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32,
                                        attention_fn=attention_fn.gravity_attention_fn)
  mask = nn.make_causal_mask(jnp.ones((2, 9)))
  params = jax.jit(lambda: mha.init(jax.random.key(0), x, mask=mask))()["params"]
  assert set(params) == {"query", "key", "value", "out"}
  out = jax.jit(lambda p: mha.apply({"params": p}, x, mask=mask))(params)
  out2, state = jax.jit(lambda p: mha.apply({"params": p}, x, mask=mask, sow_weights=True,
                                            mutable=["intermediates"]))(params)
  np.testing.assert_allclose(out, out2, rtol=1e-5, atol=1e-6)
  proj = lambda name: jnp.einsum("btf,fhd->bthd", x, params[name]["kernel"]) + params[name][
      "bias"]
  mass = jnp.full(4, jax.nn.softplus(0.5))
  o, w = G.gravity_attention_weights(proj("query"), proj("key"), proj("value"), mass)
  np.testing.assert_allclose(state["intermediates"]["attention_weights"][0], w, atol=1e-6)
  want = jnp.einsum("bthd,hdf->btf", o, params["out"]["kernel"]) + params["out"]["bias"]
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_arguments_it_cannot_honour_raise():
  q = jnp.ones((1, 4, 2, 4))
  with pytest.raises(ValueError, match="dropout_rng is None"):
    attention_fn.gravity_attention_fn(q, q, q, dropout_rate=0.1)
  with pytest.raises(ValueError, match=r"dropout_rate=1.0 must be in \[0, 1\)"):
    attention_fn.gravity_attention_fn(q, q, q, dropout_rate=1.0, deterministic=True)
  with pytest.raises(ValueError, match="qk_attn_weights_einsum is not supported"):
    attention_fn.gravity_attention_fn(q, q, q, qk_attn_weights_einsum=jnp.einsum)
  # Deterministic: no rng needed, dropout_rate ignored, as in flax.
  np.testing.assert_allclose(
      attention_fn.gravity_attention_fn(q, q, q, dropout_rate=0.1, deterministic=True),
      attention_fn.gravity_attention_fn(q, q, q))


def test_nnx_multi_head_attention_drop_in_matches_linen():
  """The snippet of issue 19, and the same weights in linen's layer give the same output."""
  x = jax.random.normal(jax.random.key(1), (2, 10, 32))
  mask = nn.make_causal_mask(jnp.ones((2, 10)))
  mha = nnx.MultiHeadAttention(num_heads=4, in_features=32, qkv_features=32, decode=False,
                               attention_fn=attention_fn.gravity_attention_fn,
                               rngs=nnx.Rngs(0))
  out = mha(x, mask=mask)
  np.testing.assert_allclose(mha(x, is_causal=True), out, rtol=1e-5, atol=1e-6)
  params = {name: {"kernel": getattr(mha, name).kernel.value,
                   "bias": getattr(mha, name).bias.value}
            for name in ("query", "key", "value", "out")}
  linen = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32,
                                          attention_fn=attention_fn.gravity_attention_fn)
  np.testing.assert_allclose(linen.apply({"params": params}, x, mask=mask), out, rtol=1e-5,
                             atol=1e-6)
  # Dropout through NNX's rng streams, sow_weights into nnx.Intermediate.
  mha = nnx.MultiHeadAttention(num_heads=4, in_features=32, qkv_features=32, decode=False,
                               dropout_rate=0.5, attention_fn=attention_fn.gravity_attention_fn,
                               rngs=nnx.Rngs(0, dropout=1))
  a, b = mha(x, mask=mask, deterministic=False), mha(x, mask=mask, deterministic=False)
  assert not np.allclose(a, b)
  # flax 0.12 collects sown values through nnx.capture (a bare sow is deprecated).
  _, sown = nnx.capture(mha, nnx.Intermediate)(x, mask=mask, deterministic=True,
                                               sow_weights=True)
  weights = jax.tree.leaves(sown)[0]
  assert weights.shape == (2, 4, 10, 10)
  np.testing.assert_allclose(jnp.sum(weights, -1), 1.0, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Drop-in use in models written for flax's own attention.


class TinyLM(nn.Module):
  """A byte-level causal LM built on nn.MultiHeadDotProductAttention; knows nothing of gravity."""
  attention_fn: Callable = nn.dot_product_attention
  features: int = 64
  layers: int = 2

  @nn.compact
  def __call__(self, tokens):
    length = tokens.shape[1]
    x = nn.Embed(256, self.features)(tokens)
    x = x + self.param("pos", nn.initializers.normal(0.02), (length, self.features))
    mask = nn.make_causal_mask(tokens)
    for _ in range(self.layers):
      h = nn.LayerNorm()(x)
      x = x + nn.MultiHeadDotProductAttention(num_heads=4, attention_fn=self.attention_fn)(
          h, mask=mask)
      h = nn.LayerNorm()(x)
      x = x + nn.Dense(self.features)(nn.gelu(nn.Dense(4 * self.features)(h)))
    return nn.Dense(256)(nn.LayerNorm()(x))


def _wikipedia_bytes(limit=300_000):
  """Article bodies (wiki markup) from the dump bundled with gensim, without importing it."""
  path = importlib.metadata.distribution("gensim").locate_file(WIKI_DUMP)
  with bz2.open(path, "rb") as f:
    xml = f.read()
  bodies = re.findall(rb"<text[^>]*>(.*?)</text>", xml, flags=re.S)
  text = b"\n".join(bodies)
  assert len(text) > limit
  return np.frombuffer(text[:limit], np.uint8)


def test_gravity_attention_fn_swapped_into_flax_model_trains_on_wikipedia():
  data = _wikipedia_bytes()
  length, batch, steps = 64, 16, 40
  model = TinyLM(attention_fn=attention_fn.GravityAttentionFn())
  rng = np.random.default_rng(0)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, length), jnp.int32))["params"]
  masses = jax.tree_util.tree_leaves_with_path(params)
  masses = [leaf for path, leaf in masses if "gravity_mass_log" in jax.tree_util.keystr(path)]
  assert len(masses) == 1 and masses[0].shape == (4,)
  opt = optax.adam(3e-3)

  @jax.jit
  def train_step(params, opt_state, tokens):
    def loss_fn(params):
      logits = model.apply({"params": params}, tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = opt.init(params)
  start_params = params
  losses = []
  for _ in range(steps):
    starts = rng.integers(0, len(data) - length - 1, size=batch)
    tokens = jnp.asarray(np.stack([data[s:s + length + 1] for s in starts]), jnp.int32)
    params, opt_state, loss = train_step(params, opt_state, tokens)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  first, last = np.mean(losses[:3]), np.mean(losses[-3:])
  assert last < first - 1.0, losses                      # from ~ln 256 = 5.5 down to ~3
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params,
                                 start_params)
  assert moved["attention_fn"]["gravity_mass_log"] > 0   # the mass is learnt




class Lm1bStyleLM(nn.Module):
  """flax examples/lm1b's decoder shrunk: learned positions, pre-norm blocks with attention
  dropout, a causal mask in training and the layers' own decode cache in decoding."""
  attention_fn: Callable
  decode: bool = False
  features: int = 32
  layers: int = 2
  max_len: int = 64
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, tokens, deterministic=True):
    x = nn.Embed(256, self.features)(tokens)
    pos = self.param("pos", nn.initializers.normal(0.02), (self.max_len, self.features))
    if self.decode:
      # As lm1b's AddPositionEmbs: one position per call, counted in the cache.
      initialized = self.has_variable("cache", "position")
      index = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
      if initialized:
        x = x + jax.lax.dynamic_slice_in_dim(pos, index.value, 1)[None]
        index.value += 1
      mask = None                       # the decode cache masks the slots not yet written
    else:
      x = x + pos[None, :tokens.shape[1]]
      mask = nn.make_causal_mask(tokens)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    for _ in range(self.layers):
      h = nn.LayerNorm()(x)
      h = nn.MultiHeadDotProductAttention(
          num_heads=4, attention_fn=self.attention_fn, dropout_rate=self.attention_dropout_rate,
          deterministic=deterministic, decode=self.decode)(h, mask=mask)
      x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
      h = nn.LayerNorm()(x)
      h = nn.Dense(self.features)(nn.gelu(nn.Dense(4 * self.features)(h)))
      x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return nn.Dense(256)(nn.LayerNorm()(x))


def _decodes_exactly(model, params, tokens):
  full = model.apply({"params": params}, tokens)
  decoder = model.clone(decode=True)
  cache = decoder.init(jax.random.key(0), tokens)["cache"]
  step_fn = jax.jit(lambda c, t: decoder.apply({"params": params, "cache": c}, t,
                                               mutable=["cache"]))
  decoded = []
  for t in range(tokens.shape[1]):
    logits, variables = step_fn(cache, tokens[:, t:t + 1])
    cache = variables["cache"]
    decoded.append(logits)
  np.testing.assert_allclose(jnp.concatenate(decoded, axis=1), full, atol=2e-5)


def test_lm1b_style_model_attention_dropout_and_decode_cache():
  """Attention dropout reaches the gravity weights; the layers' decode cache reproduces the
  full forward token by token."""
  model = Lm1bStyleLM(attention_fn=attention_fn.GravityAttentionFn(), layers=1)
  tokens = jnp.asarray(_wikipedia_bytes(10_000)[None, :16], jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens)["params"]
  only_attention = model.clone(dropout_rate=0.0)
  run = jax.jit(lambda key: only_attention.apply({"params": params}, tokens,
                                                 deterministic=False, rngs={"dropout": key}))
  assert not np.allclose(run(jax.random.key(2)), run(jax.random.key(3)), atol=1e-4)
  _decodes_exactly(model, params, tokens)


@pytest.mark.slow
def test_lm1b_style_model_with_attention_dropout_trains_and_decodes_exactly():
  data = _wikipedia_bytes(100_000)
  length, batch, steps = 32, 8, 30
  model = Lm1bStyleLM(attention_fn=attention_fn.GravityAttentionFn())
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, length), jnp.int32))["params"]
  opt = optax.adam(3e-3)

  @jax.jit
  def train_step(params, opt_state, tokens, step):
    def loss_fn(params):
      logits = model.apply({"params": params}, tokens[:, :-1], deterministic=False,
                           rngs={"dropout": jax.random.fold_in(jax.random.key(1), step)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(0)
  opt_state, losses = opt.init(params), []
  for step in range(steps):
    starts = rng.integers(0, len(data) - length - 1, size=batch)
    tokens = jnp.asarray(np.stack([data[s:s + length + 1] for s in starts]), jnp.int32)
    params, opt_state, loss = train_step(params, opt_state, tokens, step)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0, losses

  # Attention dropout alone changes the output; the trained model decodes exactly.
  only_attention = model.clone(dropout_rate=0.0)
  run = lambda key: only_attention.apply({"params": params}, tokens, deterministic=False,
                                         rngs={"dropout": key})
  assert not np.allclose(run(jax.random.key(2)), run(jax.random.key(3)), atol=1e-3)
  _decodes_exactly(model, params, tokens)


# ------------------------------------------------------------------------------------------
# Misuse by a Flax user: one error naming the fix.


def test_the_class_instead_of_an_instance_names_the_fix():
  x = jnp.ones((2, 8, 16))
  layer = nn.MultiHeadDotProductAttention(num_heads=2,
                                          attention_fn=attention_fn.GravityAttentionFn)
  with pytest.raises(TypeError, match=r"pass an instance, attention_fn=GravityAttentionFn\(\)"):
    layer.init(jax.random.key(0), x)


def test_the_linen_module_inside_an_nnx_layer_names_the_nnx_one():
  layer = nnx.MultiHeadAttention(num_heads=2, in_features=16, decode=False,
                                 attention_fn=attention_fn.GravityAttentionFn(),
                                 rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match=r"in NNX use ban_jax.nnx.GravityAttentionFn"):
    layer(jnp.ones((2, 8, 16)))


def test_a_fully_masked_row_returns_zeros_as_documented():
  """flax's own attention returns the uniform average there; the docstring says we differ."""
  q = jax.random.normal(jax.random.key(0), (1, 4, 2, 8))
  mask = jnp.ones((1, 1, 4, 4), bool).at[:, :, 2, :].set(False)
  out = attention_fn.gravity_attention_fn(q, q, q, mask=mask)
  np.testing.assert_array_equal(out[:, 2], 0.0)
  assert np.all(np.abs(np.asarray(out[:, 1])) > 0)
  assert "fully masked" in attention_fn.gravity_attention_fn.__doc__
