"""Tests for ban_jax/models/flops.py."""

import jax
import jax.numpy as jnp

from ban_jax.models.flops import compiled_flops


def test_a_matmul_counts_two_flops_per_multiply_add():
  a = jax.ShapeDtypeStruct((8, 16), jnp.float32)
  b = jax.ShapeDtypeStruct((16, 4), jnp.float32)
  assert compiled_flops(jnp.matmul, a, b) == 2 * 8 * 16 * 4
