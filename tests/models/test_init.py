"""Tests for ban_jax/models/__init__.py: config.model -> config dataclass -> model."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import pytest

from ban_jax import models
from ban_jax.layers.attention import AttentionConfig
from ban_jax.layers.branches import AttractorConfig
from ban_jax.models.ban import BANConfig, BANLM
from ban_jax.models.transformer import TransformerConfig, TransformerLM
from configs import wiki


@pytest.mark.parametrize("preset", wiki.PRESETS)
def test_every_preset_maps_onto_its_dataclass(preset):
  block = wiki.get_config(preset).model
  config = models.make_config(block)
  assert config.width == block.d_model and config.depth == block.num_layers
  assert config.dtype == block.dtype
  attention = config.attention
  assert (attention.num_heads, attention.num_kv_heads, attention.head_dim, attention.kind,
          attention.positional, attention.tagging) == (
              block.num_heads, block.num_kv_heads, block.head_dim, block.attention,
              block.positional, block.tagging)
  if block.name == "ban":
    assert isinstance(config, BANConfig)
    assert config.attractor.steps == block.attractor_steps
    assert config.attractor.num_branches == block.num_branches
    assert config.attractor.unroll == block.unroll
  else:
    assert isinstance(config, TransformerConfig) and config.mlp_dim == block.mlp_dim
  hash(config)                                  # a valid linen attribute
  assert config == models.make_config(block)


def test_get_model_takes_a_block_or_a_dataclass():
  block = wiki.get_config("tiny").model
  model = models.get_model(block, 259)
  assert isinstance(model, TransformerLM) and model.vocab_size == 259
  assert models.get_model(models.make_config(block), 259) == model
  ban = models.get_model(BANConfig(width=32, depth=1), 64)
  assert isinstance(ban, BANLM)


def test_unknown_name_field_and_option_are_named():
  block = wiki.get_config("tiny").model
  with pytest.raises(ValueError, match=re.escape(
      "model.name='rnn' is not one of ('ban', 'transformer')")):
    models.make_config(dict(block, name="rnn"))
  with pytest.raises(ValueError, match=r"model.num_branches is not a setting of the "
                                       r"transformer model; remove it or use one of \[.*mlp_dim"):
    models.make_config(dict(block, num_branches=3))
  with pytest.raises(ValueError, match=r"model.attention_options.eps2 .*'eps'"):
    models.make_config(dict(block, attention_options={"eps2": 0.1}))
  with pytest.raises(ValueError, match=re.escape(
      "model.attention='cosine' is not one of ('dot', 'gravity', 'inverse_square')")):
    models.make_config(dict(block, attention="cosine"))
  with pytest.raises(ValueError, match="model.num_heads=2 must be a multiple of "
                                       "model.num_kv_heads=3"):
    models.make_config(dict(block, num_kv_heads=3))
  with pytest.raises(ValueError, match="model.dtype='float8'"):
    models.make_config(dict(block, dtype="float8"))


def test_attention_options_and_defaults():
  config = models.make_config(dict(name="ban", d_model=32, num_heads=2,
                                   attention_options=dict(eps=0.2, implementation="xla")))
  assert config.attention == AttentionConfig(num_heads=2, eps=0.2, implementation="xla")
  assert config.attractor == AttractorConfig()
  assert config.depth == BANConfig().depth
  # dtype objects are stored by name, so configs compare as their blocks do.
  assert dataclasses.replace(config, dtype=jnp.bfloat16).dtype == "bfloat16"


def _tree(model):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  return {jax.tree_util.keystr(p): tuple(leaf.shape)
          for p, leaf in jax.tree_util.tree_leaves_with_path(shapes["params"])}


def test_parameter_trees_keep_their_names_and_shapes():
  """Checkpoints written before the configs became dataclasses still load."""
  ban = models.get_model(dict(
      name="ban", d_model=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
      attention="gravity", positional="power_law", tagging=True, num_branches=3,
      branch_width=6, tie_embeddings=False), 11)
  a, f = "['layer_0']['attention']", "['layer_0']['attractor']"
  assert _tree(ban) == {
      "['embed']['embedding']": (11, 8), "['final_norm']['scale']": (8,),
      "['logits']['kernel']": (8, 11),
      "['layer_0']['attention_norm']['scale']": (8,),
      "['layer_0']['attractor_norm']['scale']": (8,),
      a + "['query']['kernel']": (8, 2, 4), a + "['key']['kernel']": (8, 1, 4),
      a + "['value']['kernel']": (8, 1, 4), a + "['out']['kernel']": (2, 4, 8),
      a + "['gravity_mass_log']": (2,),
      a + "['power_law']['power']": (2,), a + "['power_law']['scale']": (2,),
      a + "['tagging']['mass']['kernel']": (8, 1), a + "['tagging']['mass']['bias']": (1,),
      f + "['branches']['kernel']": (3, 8, 6), f + "['branches']['bias']": (3, 6),
      f + "['salience']['vector']": (6,), f + "['salience']['bias']": (3,),
      f + "['gate']['proj']['kernel']": (6, 6), f + "['attractor']['w']": (6, 6),
      f + "['out']['kernel']": (6, 8)}
  transformer = models.get_model(dict(name="transformer", d_model=8, num_layers=1,
                                      num_heads=2, num_kv_heads=2, head_dim=4, mlp_dim=16), 11)
  b = "['block_0']"
  assert _tree(transformer) == {
      "['embed']['embedding']": (11, 8), "['final_norm']['scale']": (8,),
      b + "['attn_norm']['scale']": (8,), b + "['mlp_norm']['scale']": (8,),
      b + "['attn']['query']['kernel']": (8, 2, 4), b + "['attn']['key']['kernel']": (8, 2, 4),
      b + "['attn']['value']['kernel']": (8, 2, 4), b + "['attn']['out']['kernel']": (2, 4, 8),
      b + "['mlp']['up']['kernel']": (8, 16), b + "['mlp']['down']['kernel']": (16, 8)}
