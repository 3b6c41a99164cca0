"""Hessian-vector products of "xla" through ALiBi and a materialised bias, in q, k and v at once
(as `diagnostics.curvature.hvp` differentiates a layer's input), against the float64 reference.

Differentiating the online softmax's running max made these NaN once (JAX's rule for jnp.max
divides by how many entries equal the max, 0 on some rows once compiled): the shapes are ones
where that happened.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.ops.gravity import gravity_attention


def _hvp(impl, field, xs, tangents, mass, slopes, bias):
  extra = dict(alibi_slopes=slopes) if field == "alibi" else dict(bias=bias)
  f = lambda q, k, v: jnp.sum(jnp.sin(gravity_attention(
      q, k, v, mass, implementation=impl, causal=True, block_q=8, block_k=8, **extra)))
  return jax.jvp(jax.grad(f, argnums=(0, 1, 2)), xs, tangents)[1]


@pytest.mark.parametrize("field", ["alibi", "bias"])
def test_hvp_through_alibi_and_bias_matches_float64(field):
  keys = jax.random.split(jax.random.key(5), 9)
  xs = (jax.random.normal(keys[0], (2, 12, 4, 8)), jax.random.normal(keys[1], (2, 20, 2, 8)),
        jax.random.normal(keys[2], (2, 20, 2, 8)))
  tangents = tuple(jax.random.normal(key, x.shape) for key, x in zip(keys[3:6], xs))
  mass = jax.nn.softplus(jax.random.normal(keys[6], (4,)))
  slopes = jax.nn.softplus(jax.random.normal(keys[7], (4,)))
  bias = 0.3 * jax.random.normal(keys[8], (2, 4, 12, 20))
  args = (xs, tangents, mass, slopes, bias)
  got = jax.jit(lambda *a: _hvp("xla", field, *a))(*args)
  with jax.enable_x64(True):
    wide = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), args)
    want = jax.jit(lambda *a: _hvp("reference", field, *a))(*wide)
  for name, a, b in zip("qkv", got, want):
    a, b = np.asarray(a, np.float64), np.asarray(b)
    assert np.all(np.isfinite(a)), name
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-4, name
