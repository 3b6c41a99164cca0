"""Tests for ban_jax/nnx.py: the NNX modules, inside flax's own NNX layers and training."""

import bz2
import importlib.metadata
import re

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# A deprecated call made by ban_jax's own code (e.g. reading an nnx.Variable by .value) fails.
pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning:ban_jax")

from ban_jax import nnx as ban_nnx
from ban_jax.layers import attention
from ban_jax.layers import attention_fn
from ban_jax.layers import branches
from ban_jax.models import ban

WIKI_DUMP = ("gensim/test/test_data/"
             "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")


def _wikipedia_bytes(limit=100_000):
  path = importlib.metadata.distribution("gensim").locate_file(WIKI_DUMP)
  with bz2.open(path, "rb") as f:
    text = b"\n".join(re.findall(rb"<text[^>]*>(.*?)</text>", f.read(), flags=re.S))
  return np.frombuffer(text[:limit], np.uint8)


def _x(shape=(2, 10, 32), seed=1):
  return jax.random.normal(jax.random.key(seed), shape)


def test_gravity_attention_fn_in_nnx_multi_head_attention_matches_linen():
  """The learnable-mass callable inside flax's nnx.MultiHeadAttention: its mass is a
  parameter of the layer, and the same weights in linen's layer give the same output."""
  x, mask = _x(), nn.make_causal_mask(jnp.ones((2, 10)))
  fn = ban_nnx.GravityAttentionFn(4, mass_init=0.3)
  mha = nnx.MultiHeadAttention(num_heads=4, in_features=32, qkv_features=32, decode=False,
                               attention_fn=fn, rngs=nnx.Rngs(0))
  assert ("attention_fn", "gravity_mass_log") in dict(nnx.to_flat_state(nnx.state(mha,
                                                                                 nnx.Param)))
  out = mha(x, mask=mask)
  params = {name: {"kernel": getattr(mha, name).kernel.value,
                   "bias": getattr(mha, name).bias.value}
            for name in ("query", "key", "value", "out")}
  params["attention_fn"] = {"gravity_mass_log": fn.gravity_mass_log.value}
  linen = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32,
                                          attention_fn=attention_fn.GravityAttentionFn())
  np.testing.assert_allclose(linen.apply({"params": params}, x, mask=mask), out, rtol=1e-5,
                             atol=1e-6)
  # nnx.Optimizer reaches the mass through flax's layer.
  optimizer = nnx.Optimizer(mha, optax.sgd(0.5), wrt=nnx.Param)
  optimizer.update(mha, nnx.grad(lambda m: jnp.mean(m(x, mask=mask) ** 2))(mha))
  assert not np.allclose(fn.gravity_mass_log.value, 0.3)
  # Not the fixed-mass function: the mass it holds is the one used.
  fixed = nnx.MultiHeadAttention(num_heads=4, in_features=32, qkv_features=32, decode=False,
                                 attention_fn=attention_fn.gravity_attention_fn,
                                 rngs=nnx.Rngs(0))
  assert not np.allclose(fixed(x, mask=mask), out, atol=1e-4)
  with pytest.raises(ValueError, match="num_heads=3"):
    nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=False,
                           attention_fn=ban_nnx.GravityAttentionFn(3), rngs=nnx.Rngs(0))(x)


def test_wrapped_layers_equal_the_linen_layers_on_the_same_weights():
  """GravityAttention and AttractorBlock alone, BranchedAttractor inside BANBlock."""
  x = _x((1, 6, 32))
  layers = [
      ban_nnx.GravityAttention(attention.AttentionConfig(num_heads=4, kind="gravity",
                                                         positional="power_law"),
                               32, rngs=nnx.Rngs(0)),
      ban_nnx.AttractorBlock(32, steps=3, alpha=0.5, rngs=nnx.Rngs(0)),
      ban_nnx.BANBlock(ban.BANConfig(width=32, depth=1), rngs=nnx.Rngs(0)),
  ]
  for layer in layers:
    params = jax.tree.map(np.asarray, layer.linen_params())
    want = layer.module.apply({"params": params}, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 layer(x), want)
  assert isinstance(ban_nnx.BranchedAttractor(branches.AttractorConfig(num_branches=3), 32,
                                              rngs=nnx.Rngs(0)).params["branches"], dict)
  # Trained linen parameters adopted as they are.
  block = layers[-1]
  again = ban_nnx.Linen(block.module, block.linen_params())
  np.testing.assert_allclose(again(x), block(x), rtol=1e-6)
  _, loss = block(x, return_losses=True)
  assert loss.shape == () and float(loss) > 0            # the load-balance loss comes back
  with pytest.raises(ValueError, match="has no rngs"):
    again(x, deterministic=False)


class NNXLM(nnx.Module):
  """A small causal LM written the way flax's NNX docs write one, with ban_jax's NNX layers:
  block 1 is flax's nnx.MultiHeadAttention with a learnable gravity mass, then an attractor;
  block 2 is a BAN block."""

  def __init__(self, width: int, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(256, width, rngs=rngs)
    self.norm1 = nnx.LayerNorm(width, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
        num_heads=4, in_features=width, decode=False, dropout_rate=0.1,
        attention_fn=ban_nnx.GravityAttentionFn(4), rngs=rngs)
    self.norm2 = nnx.LayerNorm(width, rngs=rngs)
    self.attractor = ban_nnx.BranchedAttractor(
        branches.AttractorConfig(num_branches=2, steps=2, load_balance_weight=0.01), width,
        rngs=rngs)
    self.block = ban_nnx.BANBlock(ban.BANConfig(
        width=width, depth=1, dropout_rate=0.1,
        attention=attention.AttentionConfig(num_heads=4, kind="gravity"),
        attractor=branches.AttractorConfig(num_branches=2, steps=2)), rngs=rngs)
    self.head = nnx.Linear(width, 256, rngs=rngs)

  def __call__(self, tokens, *, deterministic: bool):
    x = self.embed(tokens)
    x = x + self.attention(self.norm1(x), is_causal=True, deterministic=deterministic)
    h, aux = self.attractor(self.norm2(x), return_losses=True)
    x = x + h
    x, aux2 = self.block(x, deterministic=deterministic, return_losses=True)
    return self.head(x), aux + aux2


@pytest.mark.slow
def test_nnx_transformer_trains_with_nnx_optimizer():
  data = _wikipedia_bytes()
  length, batch, steps = 32, 8, 20
  model = NNXLM(32, rngs=nnx.Rngs(0, dropout=1))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  mass = model.attention.attention_fn.gravity_mass_log.value
  block = jax.tree.map(np.asarray, model.block.linen_params())

  @nnx.jit
  def train_step(model, optimizer, tokens):
    def loss_fn(model):
      logits, aux = model(tokens[:, :-1], deterministic=False)
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean() + aux
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    starts = rng.integers(0, len(data) - length - 1, size=batch)
    tokens = jnp.asarray(np.stack([data[s:s + length + 1] for s in starts]), jnp.int32)
    losses.append(float(train_step(model, optimizer, tokens)))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.7, losses
  # The optimizer reaches the gravity mass inside flax's layer and the wrapped linen weights.
  assert not np.allclose(model.attention.attention_fn.gravity_mass_log.value, mass)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), model.block.linen_params(),
                       block)
  assert min(jax.tree.leaves(moved)) > 0, moved
  eval_a, _ = model(tokens, deterministic=True)
  eval_b, _ = model(tokens, deterministic=True)
  np.testing.assert_array_equal(eval_a, eval_b)


def test_the_nnx_class_instead_of_an_instance_names_the_fix():
  layer = nnx.MultiHeadAttention(num_heads=2, in_features=16, decode=False,
                                 attention_fn=ban_nnx.GravityAttentionFn, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match=r"pass an instance, attention_fn=GravityAttentionFn\("
                                      r"num_heads\)"):
    layer(jnp.ones((2, 8, 16)))
  with pytest.raises(TypeError, match=r"unexpected keyword arguments \['mass_int'\]"):
    ban_nnx.GravityAttentionFn(2, mass_int=0.5)
