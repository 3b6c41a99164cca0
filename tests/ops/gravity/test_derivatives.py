"""The table of docs/derivatives.md, cell by cell, against the float64 reference."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.ops.gravity import gravity_attention

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
T, H, KV, D = 16, 2, 1, 8
MODES = ("grad", "grad-of-grad", "jvp", "jvp-of-grad")


def _table():
  with open(os.path.join(REPO, "docs", "derivatives.md")) as f:
    rows = [line for line in f if line.startswith("| ") and "---" not in line]
  header = [c.strip() for c in rows[0].strip("|\n").split("|")]
  assert header == ["implementation", "masking", *MODES]
  out = []
  for row in rows[1:]:
    impl, masking, *cells = [c.strip() for c in row.strip("|\n").split("|")]
    out += [(impl, masking, mode, cell) for mode, cell in zip(MODES, cells)]
  return out


def _inputs(seed):
  keys = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(keys[0], (1, T, H, D))
  k = jax.random.normal(keys[1], (1, T, KV, D))
  v = jax.random.normal(keys[2], (1, T, KV, D))
  mass = jax.nn.softplus(jax.random.normal(keys[3], (H,)))
  t = jax.random.normal(keys[4], q.shape)
  return q, k, v, mass, t


def _run(mode, impl, masking, q, k, v, mass, t):
  kw = dict(causal=True) if masking == "causal=True" else dict(
      causal=False, mask=jnp.tril(jnp.ones((T, T), bool))[None, None])
  f = lambda x: jnp.sum(jnp.sin(gravity_attention(x, k, v, mass, implementation=impl,
                                                  block_q=8, block_k=8, **kw)))
  if mode == "grad":
    return jax.grad(f)(q)
  if mode == "grad-of-grad":
    return jax.grad(lambda x: jnp.sum(jax.grad(f)(x) ** 2))(q)
  if mode == "jvp":
    return jax.jvp(f, (q,), (t,))[1]
  return jax.jvp(jax.grad(f), (q,), (t,))[1]


@pytest.mark.parametrize("impl,masking,mode,cell", _table(),
                         ids=[f"{i}-{m.split('=')[0].replace(' ', '_')}-{d}"
                              for i, m, d, _ in _table()])
def test_the_table_holds(impl, masking, mode, cell):
  inputs = _inputs(seed=hash((impl, masking, mode)) % 1000)
  if cell == "error":
    # One exception whose message names the way out (docs/derivatives.md).
    if mode == "jvp":
      error, match = TypeError, r"jax.jacrev.*implementation='reference'"
    else:
      error, match = NotImplementedError, r"first derivatives only.*implementation='xla'"
    with pytest.raises(error, match=match):
      jax.block_until_ready(_run(mode, impl, masking, *inputs))
    return
  assert cell == "works", cell
  got = np.asarray(_run(mode, impl, masking, *inputs), np.float64)
  with jax.enable_x64(True):
    wide = [jnp.asarray(np.asarray(x), jnp.float64) for x in inputs]
    want = np.asarray(_run(mode, "reference", masking, *wide))
  rel = np.linalg.norm(got - want) / np.linalg.norm(want)
  assert rel < 2e-4, rel


def test_jvp_names_the_ways_out():
  q, k, v, mass, t = _inputs(0)
  f = lambda x: gravity_attention(x, k, v, mass, implementation="xla")
  with pytest.raises(TypeError, match=r"jax.jacrev.*implementation='reference'"):
    jax.jvp(f, (q,), (t,))


def test_causal_flag_equals_an_explicit_causal_mask():
  q, k, v, mass, t = _inputs(3)
  mask = jnp.tril(jnp.ones((T, T), bool))[None, None]
  for impl in ("xla", "pallas"):
    flag = lambda x: gravity_attention(x, k, v, mass, implementation=impl, block_q=8,
                                       block_k=8, causal=True)
    explicit = lambda x: gravity_attention(x, k, v, mass, implementation=impl, block_q=8,
                                           block_k=8, causal=False, mask=mask)
    np.testing.assert_allclose(flag(q), explicit(q), rtol=1e-5, atol=1e-6)
    gf = jax.grad(lambda x: jnp.sum(jnp.sin(flag(x))))(q)
    ge = jax.grad(lambda x: jnp.sum(jnp.sin(explicit(x))))(q)
    np.testing.assert_allclose(gf, ge, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("score,positional", [("gravity", "power_law"),
                                              ("inverse_square", "alibi"), ("dot", None)])
def test_causal_second_derivatives_on_harder_inputs(score, positional):
  """grad-of-grad and jvp-of-grad through "xla" with causal=True where the causal bounds vary
  most: q_len < k_len with a different q_offset per example, GQA, partial blocks, a key mass
  and a positional field, in q, k, v and the mass at once, against float64."""
  b, tq, tk, h, kvh, d = 2, 11, 21, 4, 2, 8
  keys = jax.random.split(jax.random.key(7), 8)
  q = jax.random.normal(keys[0], (b, tq, h, d))
  k = jax.random.normal(keys[1], (b, tk, kvh, d))
  v = jax.random.normal(keys[2], (b, tk, kvh, d))
  mass = jax.nn.softplus(jax.random.normal(keys[3], (h,)))
  key_mass = jax.nn.softplus(jax.random.normal(keys[4], (b, tk)))
  field = {}
  if positional == "power_law":
    field = dict(power_law=(jax.nn.softplus(jax.random.normal(keys[5], (h,))),
                            jax.nn.softplus(jax.random.normal(keys[6], (h,)))))
  elif positional == "alibi":
    field = dict(alibi_slopes=jax.nn.softplus(jax.random.normal(keys[5], (h,))))
  offsets = jnp.array([tk - tq, 3], jnp.int32)
  tangent = [jax.random.normal(kk, x.shape) for kk, x in zip(jax.random.split(keys[7], 4),
                                                             (q, k, v, mass))]

  def derivatives(impl, q, k, v, mass, key_mass, tangent, field):
    def f(args):
      out = gravity_attention(*args, key_mass=key_mass, q_offset=offsets, score=score,
                              implementation=impl, block_q=4, block_k=8, causal=True,
                              **field)
      return jnp.sum(jnp.sin(out))
    args = (q, k, v, mass)
    gog = jax.grad(lambda a: sum(jnp.sum(g ** 2) for g in jax.grad(f)(a)))(args)
    hvp = jax.jvp(jax.grad(f), (args,), (tuple(tangent),))[1]
    return [np.asarray(x, np.float64) for x in (*gog, *hvp)]

  got = derivatives("xla", q, k, v, mass, key_mass, tangent, field)
  with jax.enable_x64(True):
    wide = lambda x: jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), x)
    want = derivatives("reference", *wide((q, k, v, mass, key_mass, tangent, field)))
  for g, w in zip(got, want):
    if not np.any(w):                        # inverse_square has no mass: zero both ways
      assert not np.any(g)
      continue
    assert np.linalg.norm(g - w) / np.linalg.norm(w) < 2e-4


def test_first_derivatives_keep_the_dynamic_loops():
  """Only a differentiated kernel switches to full-length loops with lax.cond: the gradient
  training takes traces the causal loops with their block-dependent bounds, no cond."""
  q, k, v, mass, _ = _inputs(1)
  f = lambda x: jnp.sum(gravity_attention(x, k, v, mass, implementation="xla", block_q=8,
                                          block_k=8, causal=True))
  first = str(jax.make_jaxpr(jax.grad(f))(q))
  second = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(jax.grad(f)(x))))(q))
  assert " cond[" not in first and "while[" in first
  assert " cond[" in second
