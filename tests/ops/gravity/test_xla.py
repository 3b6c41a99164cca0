"""Tests for ban_jax/ops/gravity/xla.py through `gravity_attention`: the reference and the
blockwise implementation against a float64 oracle."""

import functools

import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.ops import gravity as G
from ban_jax.ops import positional

SCORES = ("gravity", "inverse_square", "dot")
# The differentiable inputs, in the order the loss takes them.
ARGS = ("query", "key", "value", "mass", "key_mass", "power", "scale", "alibi")


def rel_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return np.linalg.norm(x - ref) / np.linalg.norm(ref)


def make_problem(seed, *, batch=2, q_len=37, heads=4, kv_heads=2, head_dim=16, qk_scale=0.3):
  """Random float64 inputs, two packed documents per row, padding at the end.

  q and k are scaled so that distances are O(1) and the weights vary over keys without being
  one-hot (the regime where both the scores and their gradients carry information). The
  default shapes are shared by most tests so that their compiled functions are reused.
  """
  rng = np.random.default_rng(seed)
  lengths = (q_len // 2, q_len - q_len // 2 - 3, 3)          # doc 1, doc 2, padding
  seg = np.concatenate([np.full(n, s) for n, s in zip(lengths, (1, 2, 0))]).astype(np.int32)
  pos = np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)
  return dict(
      query=rng.normal(size=(batch, q_len, heads, head_dim)) * qk_scale,
      key=rng.normal(size=(batch, q_len, kv_heads, head_dim)) * qk_scale,
      value=rng.normal(size=(batch, q_len, kv_heads, head_dim)),
      mass=rng.uniform(1.0, 2.5, size=heads),
      key_mass=rng.uniform(0.5, 2.0, size=(batch, q_len)),
      power=rng.uniform(0.2, 1.5, size=heads),
      scale=rng.uniform(0.2, 1.0, size=heads),
      alibi=rng.uniform(0.01, 0.2, size=heads),
      segment_ids=np.broadcast_to(seg, (batch, q_len)).copy(),
      positions=np.broadcast_to(pos, (batch, q_len)).copy(),
      cotangent=rng.normal(size=(batch, q_len, heads, head_dim)))


def plain(prob):
  """The same problem with every extra neutral: one document, unit key masses, no fields."""
  prob = dict(prob)
  batch, length = prob["segment_ids"].shape
  heads = prob["mass"].shape[0]
  prob.update(segment_ids=np.ones((batch, length), np.int32),
              positions=np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)),
              key_mass=np.ones((batch, length)), power=np.zeros(heads), alibi=np.zeros(heads))
  return prob


@functools.cache
def grad_fn(score, implementation, block_q=16, block_k=16):
  """jit(value_and_grad) of output · cotangent over the 8 differentiable inputs (cached)."""
  def loss(query, key, value, mass, key_mass, power, scale, alibi, segment_ids, positions,
           cotangent):
    out = G.gravity_attention(
        query, key, value, mass, segment_ids=segment_ids, positions=positions,
        key_mass=key_mass, power_law=(power, scale), alibi_slopes=alibi, score=score,
        implementation=implementation, block_q=block_q, block_k=block_k)
    return jnp.sum(out.astype(cotangent.dtype) * cotangent), out
  return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(ARGS))), has_aux=True))


def run(score, implementation, prob, dtype=jnp.float32, **blocks):
  """(output, [gradients in ARGS order]) as float64 numpy."""
  wide = jnp.float64 if dtype == jnp.float64 else jnp.float32
  args = [jnp.asarray(prob[n], dtype if n in ("query", "key", "value") else wide)
          for n in ARGS]
  (_, out), grads = grad_fn(score, implementation, **blocks)(
      *args, jnp.asarray(prob["segment_ids"]), jnp.asarray(prob["positions"]),
      jnp.asarray(prob["cotangent"], wide))
  as64 = lambda x: np.asarray(x.astype(jnp.float32), np.float64)
  return as64(out), [as64(g) for g in grads]


def oracle(score, prob, dtype=jnp.float32):
  """float64 reference, on the inputs as rounded to `dtype`."""
  rounded = dict(prob)
  for n in ("query", "key", "value"):
    rounded[n] = np.asarray(jnp.asarray(prob[n], dtype).astype(jnp.float32), np.float64)
  with jax.enable_x64(True):
    return run(score, "reference", rounded, jnp.float64)


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_xla_matches_float64_oracle(score, dtype, tol):
  """Forward and every gradient: GQA, packed documents with padding, causal, key masses,
  both positional fields, and a length (37) that is no multiple of the blocks (16)."""
  prob = make_problem(seed=SCORES.index(score) + (10 if dtype == jnp.bfloat16 else 0))
  out64, grads64 = oracle(score, prob, dtype)
  out, grads = run(score, "xla", prob, dtype)
  assert rel_err(out, out64) < tol, rel_err(out, out64)
  for name, g, g64 in zip(ARGS, grads, grads64):
    assert np.all(np.isfinite(g)), name
    if score == "inverse_square" and name == "mass":
      # log M² cancels in the softmax: the output does not depend on the mass at all.
      assert np.all(g == 0) and np.all(g64 == 0)
      continue
    assert rel_err(g, g64) < tol, (name, rel_err(g, g64))


def test_reference_float32_matches_float64_oracle():
  prob = make_problem(seed=20)
  out64, grads64 = oracle("gravity", prob)
  out, grads = run("gravity", "reference", prob)
  assert rel_err(out, out64) < 1e-5
  for name, g, g64 in zip(ARGS, grads, grads64):
    assert rel_err(g, g64) < 1e-5, (name, rel_err(g, g64))


@pytest.mark.parametrize("score", [
    "gravity",
    pytest.param("inverse_square", marks=pytest.mark.slow),
    pytest.param("dot", marks=pytest.mark.slow)])
def test_custom_vjp_against_finite_differences(score):
  prob = make_problem(seed=7, batch=1, q_len=11, heads=2, kv_heads=1, head_dim=4)
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(prob[n], jnp.float64) for n in ARGS)
    extra = tuple(jnp.asarray(prob[n]) for n in ("segment_ids", "positions", "cotangent"))
    f = jax.jit(lambda *a: jnp.sum(G.gravity_attention(
        a[0], a[1], a[2], a[3], segment_ids=extra[0], positions=extra[1], key_mass=a[4],
        power_law=(a[5], a[6]), alibi_slopes=a[7], score=score, implementation="xla",
        block_q=4, block_k=3) * extra[2]))
    jtu.check_grads(f, args, order=1, modes=("rev",))


def _numpy_attention(prob, logits_fn):
  """Causal attention over one document, straight from a formula; GQA by repeating k, v."""
  q, k, v = prob["query"], prob["key"], prob["value"]
  group = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
  d2 = np.sum((q[:, :, None] - k[:, None, :]) ** 2, axis=-1)             # [b, q, k, h]
  z = logits_fn(d2, np.einsum("bqhd,bkhd->bqkh", q, k))
  n = q.shape[1]
  z = np.where(np.tril(np.ones((n, n), bool))[None, :, :, None], z, -np.inf)
  w = np.exp(z - z.max(axis=2, keepdims=True))
  w /= w.sum(axis=2, keepdims=True)
  return np.einsum("bqkh,bkhd->bqhd", w, v)


def test_gravity_is_the_gravity2_formula():
  """softmax_j(M² / (‖q_i − k_j‖² + ε)), with distances from explicit differences."""
  prob = plain(make_problem(seed=3))
  want = _numpy_attention(prob, lambda d2, s: prob["mass"] ** 2 / (d2 + 0.1))
  assert rel_err(run("gravity", "xla", prob)[0], want) < 1e-6


def test_inverse_square_weights_are_an_inverse_square_law():
  """Weights ∝ m_j / (‖q_i − k_j‖² + ε), whatever the mass."""
  prob = plain(make_problem(seed=4))
  prob["key_mass"] = np.random.default_rng(4).uniform(0.2, 3, size=prob["key_mass"].shape)
  km = prob["key_mass"][:, None, :, None]
  want = _numpy_attention(prob, lambda d2, s: np.log(km / (d2 + 0.1)))
  out, _ = run("inverse_square", "xla", prob)
  assert rel_err(out, want) < 1e-6
  prob["mass"] = prob["mass"] * 7.3
  np.testing.assert_array_equal(run("inverse_square", "xla", prob)[0], out)


def test_dot_matches_jax_nn():
  """score="dot" is plain scaled dot-product attention, with M² as an inverse temperature."""
  prob = plain(make_problem(seed=6, qk_scale=1.0))
  q, k, v = (jnp.asarray(prob[n], jnp.float32) for n in ("query", "key", "value"))
  # jax.nn's float32 matmuls default to TF32 on GPU; ask it for full precision.
  with jax.default_matmul_precision("highest"):
    for mass in (1.0, 1.7):
      prob["mass"] = np.full(4, mass)
      want = jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                          scale=mass ** 2 / np.sqrt(q.shape[-1]))
      assert rel_err(run("dot", "xla", prob)[0], want) < 1e-6
    none = G.gravity_attention(q, k, v, None, score="dot", implementation="reference")
    assert rel_err(none, jax.nn.dot_product_attention(q, k, v, is_causal=True)) < 1e-6


def test_gqa_equals_explicitly_repeated_mha():
  prob = make_problem(seed=8)
  out, grads = run("gravity", "xla", prob)
  mha = dict(prob, key=np.repeat(prob["key"], 2, axis=2), value=np.repeat(prob["value"], 2,
                                                                          axis=2))
  out_mha, grads_mha = run("gravity", "xla", mha)
  assert rel_err(out, out_mha) < 1e-6
  # The gradient of a shared key/value head is the sum over its repeats.
  for i, name in enumerate(ARGS):
    g_mha = grads_mha[i]
    if name in ("key", "value"):
      g_mha = g_mha.reshape(g_mha.shape[:2] + (2, 2) + g_mha.shape[3:]).sum(axis=3)
    assert rel_err(grads[i], g_mha) < 1e-5, name


@pytest.mark.parametrize("implementation", ["xla", "reference"])
def test_causal_gradients_after_t_are_exactly_zero(implementation):
  prob = make_problem(seed=9)
  cotangent = prob["cotangent"]
  for t in (0, 9, 25):
    prob["cotangent"] = np.zeros_like(cotangent)
    prob["cotangent"][:, t] = cotangent[:, t]          # the vjp of output position t
    if implementation == "reference":
      with jax.enable_x64(True):
        _, grads = run("gravity", implementation, prob, jnp.float64)
    else:
      _, grads = run("gravity", implementation, prob)
    for name, g in zip(ARGS[:3], grads[:3]):
      assert np.all(g[:, t + 1:] == 0), (t, name)
      # Position 0 sees only itself: its output is v_0 whatever q_0 and k_0 are.
      if t > 0 or name == "value":
        assert np.any(g[:, :t + 1] != 0), (t, name)
    assert np.all(grads[4][:, t + 1:] == 0)            # key masses after t


@pytest.mark.parametrize("score", SCORES)
def test_packed_segments_are_isolated(score):
  """Changing document 2 leaves document 1 bit-identical (and vice versa), and no gradient
  crosses between documents."""
  prob = make_problem(seed=10)
  seg = prob["segment_ids"][0]
  base, _ = run(score, "xla", prob)
  for doc, other in ((1, 2), (2, 1)):
    changed = dict(prob)
    rng = np.random.default_rng(other)
    for n in ("query", "key", "value"):
      changed[n] = prob[n].copy()
      changed[n][:, seg == other] = rng.normal(size=changed[n][:, seg == other].shape) * 0.3
    out, _ = run(score, "xla", changed)
    np.testing.assert_array_equal(out[:, seg == doc], base[:, seg == doc])
    assert np.any(out[:, seg == other] != base[:, seg == other])
    only = dict(prob, cotangent=np.where((seg == doc)[None, :, None, None],
                                         prob["cotangent"], 0.0))
    _, grads = run(score, "xla", only)
    for g in grads[:3]:
      assert np.all(g[:, seg != doc] == 0)


@pytest.mark.parametrize("score", SCORES)
def test_fully_masked_rows_are_zero_with_finite_gradients(score):
  prob = make_problem(seed=11)
  prob["segment_ids"][1] = 0                                   # a whole row of padding
  pad = prob["segment_ids"] == 0
  with jax.enable_x64(True):
    results = [run(score, "reference", prob, jnp.float64)]
  results.append(run(score, "xla", prob))
  for out, grads in results:
    assert np.all(out[pad] == 0)
    assert np.any(out[~pad] != 0)
    for name, g in zip(ARGS, grads):
      assert np.all(np.isfinite(g)), name


def test_result_does_not_depend_on_blocks():
  prob = make_problem(seed=12)
  out64, grads64 = oracle("gravity", prob)
  out, grads = run("gravity", "xla", prob, block_q=5, block_k=3)
  assert rel_err(out, out64) < 1e-5
  for name, g, g64 in zip(ARGS, grads, grads64):
    assert rel_err(g, g64) < 1e-5, name
  q, k, v = (jnp.asarray(prob[n], jnp.float32) for n in ("query", "key", "value"))
  for block_q, block_k in ((64, 7), (1, 1)):
    got = jax.jit(lambda q, k, v, bq=block_q, bk=block_k: G.gravity_attention(
        q, k, v, prob["mass"], segment_ids=prob["segment_ids"], implementation="xla",
        block_q=bq, block_k=bk))(q, k, v)
    want = G.gravity_attention(q, k, v, prob["mass"], segment_ids=prob["segment_ids"],
                               implementation="reference")
    assert rel_err(got, want) < 1e-6


def test_decode_with_cache_equals_full_forward():
  """Each position attended against a cache (unfilled slots hold garbage) equals the full
  forward at that position; so does a prefill block at per-row offsets."""
  prob = make_problem(seed=13)
  n, max_len = prob["query"].shape[1], 45
  rng = np.random.default_rng(0)
  full, _ = run("gravity", "xla", prob)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  def cache(x, fill):
    c = fill(size=(x.shape[0], max_len) + x.shape[2:])
    c[:, :n] = x
    return f32(c)
  garbage = lambda size: rng.normal(size=size) * 5
  k_c, v_c = cache(prob["key"], garbage), cache(prob["value"], garbage)
  km_c = cache(prob["key_mass"], lambda size: rng.uniform(0.1, 9, size=size))
  seg_c = jnp.asarray(cache(prob["segment_ids"], lambda size: rng.integers(0, 3, size=size)),
                      jnp.int32)
  pos_c = jnp.asarray(cache(prob["positions"], lambda size: rng.integers(0, 50, size=size)),
                      jnp.int32)

  @jax.jit
  def step(qt, t, seg_t, pos_t):
    return G.gravity_attention_decode(
        qt, k_c, v_c, f32(prob["mass"]), index=t, segment_ids=(seg_t, seg_c),
        positions=(pos_t, pos_c), key_mass=km_c, power_law=(f32(prob["power"]),
                                                            f32(prob["scale"])),
        alibi_slopes=f32(prob["alibi"]), implementation="xla", block_k=8)

  q = f32(prob["query"])
  seg, pos = jnp.asarray(prob["segment_ids"]), jnp.asarray(prob["positions"])
  for t in range(n):
    got = np.asarray(step(q[:, t:t + 1], t, seg[:, t:t + 1], pos[:, t:t + 1]))
    np.testing.assert_allclose(got[:, 0], full[:, t], rtol=1e-5, atol=2e-6)
  # A prefill block of 5 queries at per-row offsets (row 1 lags by 2 slots).
  rows = [np.arange(5, 10), np.arange(3, 8)]
  pick = lambda x: jnp.stack([x[0, rows[0]], x[1, rows[1]]])
  got = np.asarray(step(pick(q), jnp.asarray([5, 3]), pick(seg), pick(pos)))
  np.testing.assert_allclose(got[0], full[0, 5:10], rtol=1e-5, atol=2e-6)
  np.testing.assert_allclose(got[1], full[1, 3:8], rtol=1e-5, atol=2e-6)


def test_fewer_queries_than_keys_are_the_last_positions():
  prob = plain(make_problem(seed=14))
  full, _ = run("gravity", "xla", prob)
  q, k, v = (jnp.asarray(prob[n], jnp.float32) for n in ("query", "key", "value"))
  tail = jax.jit(lambda q: G.gravity_attention(q, k, v, prob["mass"], implementation="xla",
                                               block_q=8, block_k=8))(q[:, 25:])
  np.testing.assert_allclose(tail, full[:, 25:], rtol=1e-5, atol=1e-6)


def test_materialised_bias_and_mask_equal_the_fields():
  """The generic `bias`/`mask` fallback equals the per-block power law and segment mask,
  gradients of the field parameters included."""
  prob = make_problem(seed=15)
  pos = jnp.asarray(prob["positions"])
  seg = jnp.asarray(prob["segment_ids"])
  ones = jnp.ones(prob["key_mass"].shape)
  prob.update(key_mass=np.ones(prob["key_mass"].shape), alibi=np.zeros(4))
  _, grads = run("gravity", "xla", prob)
  q, k, v = (jnp.asarray(prob[n], jnp.float32) for n in ("query", "key", "value"))
  ct = jnp.asarray(prob["cotangent"], jnp.float32)

  @jax.jit
  @jax.grad
  def dense(args):
    q, p, a = args
    bias = positional.power_law_field(pos, pos, p, a)
    mask = (seg[:, None, :, None] == seg[:, None, None, :]) & (seg[:, None, None, :] != 0)
    return jnp.sum(ct * G.gravity_attention(q, k, v, prob["mass"], bias=bias, mask=mask,
                                            key_mass=ones, implementation="xla",
                                            block_q=16, block_k=16))

  got = dense((q, jnp.asarray(prob["power"], jnp.float32),
               jnp.asarray(prob["scale"], jnp.float32)))
  for g, want in zip(got, (grads[0], grads[5], grads[6])):
    assert rel_err(g, want) < 1e-5


def test_bf16_distances_near_coincident_points():
  """q = k + 2% noise in bf16: the distance trap of the notes (norms from rounded operands,
  float32 accumulation, clamp at 0) keeps the output close to the float64 answer."""
  rng = np.random.default_rng(16)
  k = rng.normal(size=(1, 32, 2, 64))
  q = k + 0.02 * rng.normal(size=k.shape)
  v = rng.normal(size=k.shape)
  qb, kb, vb = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
  mass = jnp.asarray([1.0, 2.0])
  got = G.gravity_attention(qb, kb, vb, mass, implementation="xla", block_q=8, block_k=8)
  with jax.enable_x64(True):
    up = lambda x: jnp.asarray(x.astype(jnp.float32), jnp.float64)
    want = G.gravity_attention(up(qb), up(kb), up(vb), jnp.asarray(mass, jnp.float64),
                               implementation="reference")
  assert np.all(np.isfinite(np.asarray(got.astype(jnp.float32))))
  assert rel_err(got.astype(jnp.float32), want) < 2e-2
