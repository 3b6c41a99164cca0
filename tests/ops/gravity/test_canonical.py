"""Tests for ban_jax/ops/gravity/canonical.py: argument validation and softplus_inverse."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.ops import gravity as G


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(score="cosine"), ValueError, "score"),
    (dict(implementation="cuda"), ValueError, "implementation"),
    (dict(mass=None), ValueError, "mass"),
    (dict(mass=jnp.ones(3)), ValueError, "mass"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(key_mass=jnp.ones((2, 5))), ValueError, "key_mass"),
    (dict(segment_ids=jnp.ones((2, 5), jnp.int32)), ValueError, "segment_ids"),
    (dict(power_law=jnp.ones(4)), TypeError, "power_law"),
    (dict(bias=jnp.ones((3, 8, 8))), ValueError, "bias"),
    (dict(block_q=0), ValueError, "block"),
])
def test_bad_input_raises(kwargs, error, match):
  q = jnp.ones((2, 8, 4, 4))
  kv = jnp.ones((2, 8, 2, 4))
  kwargs = dict(dict(mass=jnp.ones(4)), **kwargs)
  mass = kwargs.pop("mass")
  with pytest.raises(error, match=match):
    G.gravity_attention(q, kv, kv, mass, **kwargs)


def test_heads_must_group():
  with pytest.raises(ValueError, match="multiple"):
    G.gravity_attention(jnp.ones((1, 4, 3, 4)), jnp.ones((1, 4, 2, 4)), jnp.ones((1, 4, 2, 4)),
                        jnp.ones(3))


def test_integer_inputs_are_a_type_error():
  x = jnp.ones((1, 4, 2, 4), jnp.int32)
  with pytest.raises(TypeError, match="floating point"):
    G.gravity_attention(x, x, x, None, score="dot")


def test_decode_segments_must_be_a_pair():
  q = jnp.ones((1, 1, 2, 4))
  cache = jnp.ones((1, 8, 2, 4))
  with pytest.raises(TypeError, match="pair"):
    G.gravity_attention_decode(q, cache, cache, jnp.ones(2), index=3,
                               segment_ids=jnp.ones((1, 8), jnp.int32))


def test_softplus_inverse():
  y = jnp.asarray([1e-3, 0.5, 1.0, 30.0])
  np.testing.assert_allclose(jax.nn.softplus(G.softplus_inverse(y)), y, rtol=1e-5)
