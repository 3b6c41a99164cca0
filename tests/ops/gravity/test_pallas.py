"""Tests for ban_jax/ops/gravity/pallas.py (triton.py and mosaic.py) in Pallas interpret mode.

Both lowerings (the Triton-shaped GPU kernels and the Mosaic-TPU-shaped kernels) run on the CPU
through `interpret=True` and are compared, forward and every gradient, with the float64
reference of `xla.py` on fresh random inputs. Tiles are made small (16/32 rows for the GPU
kernels, 128 for the TPU kernels, their smallest) so that every path runs at tiny lengths:
several key and query blocks, fully visible blocks without a mask, diagonal blocks with one,
blocks skipped by causality, and padded blocks from lengths that are not multiples of a block.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ban_jax.ops import gravity as G
from ban_jax.ops.gravity import canonical
from ban_jax.ops.gravity import pallas as GP

# Triton-shaped kernels with small tiles; both backward kernels use other tiles than the forward.
GPU_SMALL = GP.Options(backend="triton", interpret=True, block_q=16, block_k=32, block_q_dkv=32,
                       block_k_dkv=16, block_q_dq=16, block_k_dq=16, approx_recip=False)
# The same with the fused backward (one kernel; dQ added with atomics).
GPU_FUSED = GPU_SMALL._replace(fused_backward=True)
TPU_SMALL = GP.Options(backend="mosaic_tpu", interpret=True, block_q=128, block_k=128,
                       block_q_dkv=128, block_k_dkv=128, block_q_dq=128, block_k_dq=128,
                       approx_recip=False)
DIFF_ARGS = ("query", "key", "value", "mass", "key_mass", "power", "scale", "alibi")


def rel_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return np.linalg.norm(x - ref) / np.linalg.norm(ref)


def make_problem(seed, *, batch=2, q_len=37, k_len=None, heads=4, kv_heads=2, head_dim=16):
  """Random inputs: two packed documents per row then padding, distances O(1)."""
  rng = np.random.default_rng(seed)
  k_len = k_len or q_len
  lengths = (k_len // 2, k_len - k_len // 2 - 3, 3)
  seg = np.concatenate([np.full(n, s) for n, s in zip(lengths, (1, 2, 0))]).astype(np.int32)
  pos = np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)
  return dict(
      query=rng.normal(size=(batch, q_len, heads, head_dim)) * 0.3,
      key=rng.normal(size=(batch, k_len, kv_heads, head_dim)) * 0.3,
      value=rng.normal(size=(batch, k_len, kv_heads, head_dim)),
      mass=rng.uniform(1.0, 2.5, size=heads),
      key_mass=rng.uniform(0.5, 2.0, size=(batch, k_len)),
      power=rng.uniform(0.2, 1.5, size=heads),
      scale=rng.uniform(0.2, 1.0, size=heads),
      alibi=rng.uniform(0.01, 0.2, size=heads),
      segment_ids=np.broadcast_to(seg, (batch, k_len)).copy(),
      positions=np.broadcast_to(pos, (batch, k_len)).copy(),
      cotangent=rng.normal(size=(batch, q_len, heads, head_dim)))


def attend(prob, args, impl, options, *, score, features, causal=True, q_offset=None):
  """gravity_attention on `args` (the DIFF_ARGS arrays) with the chosen features."""
  a = dict(zip(DIFF_ARGS, args))
  kw = dict(causal=causal, score=score, q_offset=q_offset)
  q_len, k_len = a["query"].shape[1], a["key"].shape[1]
  if "segments" in features:
    kw["segment_ids"] = (prob["segment_ids"][:, -q_len:], prob["segment_ids"])
  if "positions" in features:
    kw["positions"] = (prob["positions"][:, -q_len:], prob["positions"])
  if "key_mass" in features:
    kw["key_mass"] = a["key_mass"]
  if "power_law" in features:
    kw["power_law"] = (a["power"], a["scale"])
  if "alibi" in features:
    kw["alibi_slopes"] = a["alibi"]
  mass = None if score == "inverse_square" else a["mass"]
  if impl == "pallas" and options is not None:
    cfg, diff, aux = canonical.prepare(a["query"], a["key"], a["value"], mass, **kw)
    return GP.gravity_attention_pallas(cfg, diff, aux, options=options)
  del k_len
  return G.gravity_attention(a["query"], a["key"], a["value"], mass, implementation=impl, **kw)


def out_and_grads(prob, impl, dtype, options=None, args=None, **kw):
  """Output and the gradients of sum(out * cotangent) w.r.t. every differentiable input.

  `args` (the DIFF_ARGS arrays) replaces the arrays of `prob`, e.g. with traced ones.
  """
  fdt = jnp.float64 if dtype == jnp.float64 else jnp.float32
  if args is None:
    args = [jnp.asarray(prob[n], dtype if n in ("query", "key", "value") else fdt)
            for n in DIFF_ARGS]
  out, vjp = jax.vjp(lambda *a: attend(prob, a, impl, options, **kw), *args)
  grads = vjp(jnp.asarray(prob["cotangent"][:, :out.shape[1]], out.dtype))
  return out, dict(zip(DIFF_ARGS, grads))


def assert_matches_reference(prob, dtype, options, bound, **kw):
  out, grads = out_and_grads(prob, "pallas", dtype, options, **kw)
  with jax.enable_x64(True):
    ref_out, ref_grads = out_and_grads(prob, "reference", jnp.float64, **kw)
  assert out.dtype == dtype
  errs = {"out": rel_err(out, ref_out)}
  for name, g in grads.items():
    g, r = np.asarray(g, np.float64), np.asarray(ref_grads[name])
    assert np.isfinite(g).all(), name
    if np.linalg.norm(r) == 0:          # an unused input (its feature is off): exactly zero
      assert np.linalg.norm(g) == 0, name
    else:
      errs[name] = rel_err(g, r)
  bad = {k: f"{v:.2e}" for k, v in errs.items() if not v < bound}
  assert not bad, f"errors over {bound}: {bad}; all: {errs}"
  return errs


ALL = ("segments", "positions", "key_mass", "power_law")


GPU_BOTH = pytest.mark.parametrize("options", [GPU_SMALL, GPU_FUSED],
                                   ids=["two_kernel", "fused"])


@GPU_BOTH
@pytest.mark.parametrize("score", ["gravity", "inverse_square", "dot"])
def test_gpu_kernels_every_score_with_all_features(score, options):
  # GQA, two documents and padding ids, key masses, the power law, odd length (37 with 16/32
  # tiles: padded query and key blocks), causal.
  prob = make_problem(0)
  assert_matches_reference(prob, jnp.float32, options, 2e-5, score=score, features=ALL)


@GPU_BOTH
def test_gpu_kernels_alibi_cross_lengths_and_q_offset(options):
  # Queries are the last 21 of 70 keys (q_len != k_len, causal offset 49), ALiBi field.
  prob = make_problem(1, q_len=21, k_len=70)
  assert_matches_reference(prob, jnp.float32, options, 2e-5, score="gravity",
                           features=("alibi", "key_mass", "positions"))


@GPU_BOTH
def test_gpu_kernels_not_causal_and_group_of_three(options):
  prob = make_problem(2, q_len=29, heads=6, kv_heads=2)
  assert_matches_reference(prob, jnp.float32, options, 2e-5, score="gravity",
                           features=ALL, causal=False)


@GPU_BOTH
def test_gpu_kernels_bfloat16(options):
  prob = make_problem(3, q_len=45)
  errs = assert_matches_reference(prob, jnp.bfloat16, options, 3e-2, score="gravity",
                                  features=ALL)
  assert errs["out"] > 1e-5            # really computed in bf16 (not silently upcast)


def test_fused_and_two_kernel_backward_agree_to_rounding():
  # Same forward; the backward differs only in summation order (atomics vs one program per
  # query block), so every gradient agrees to float32 summation-order rounding (1e-5; the
  # per-head sums over ~10^4 terms cancel), closer than either is to the float64 reference.
  prob = make_problem(4, q_len=53)
  _, two = out_and_grads(prob, "pallas", jnp.float32, GPU_SMALL, score="gravity", features=ALL)
  _, fused = out_and_grads(prob, "pallas", jnp.float32, GPU_FUSED, score="gravity",
                           features=ALL)
  for name in DIFF_ARGS:
    a, b = np.asarray(two[name], np.float64), np.asarray(fused[name], np.float64)
    if np.linalg.norm(a) == 0:
      assert np.linalg.norm(b) == 0, name
    else:
      assert rel_err(b, a) < 1e-5, name


def test_tpu_kernels_without_segments():
  # 300 rows with 128-row tiles: three query and key blocks (one fully visible, unmasked; the
  # diagonal ones masked; the last one padded), positions restarting mid-row, both fields.
  # (Segments on the TPU kernels: the slow sweep.)
  prob = make_problem(4, batch=1, q_len=300, heads=2, kv_heads=1, head_dim=8)
  assert_matches_reference(prob, jnp.float32, TPU_SMALL, 2e-5, score="gravity",
                           features=("positions", "key_mass", "power_law", "alibi"))


def test_public_api_default_options_and_rows_that_see_nothing():
  # implementation="pallas" through gravity_attention; a negative q_offset leaves the first
  # queries with no visible key: zeros out, finite gradients.
  prob = make_problem(5, q_len=24, k_len=20)
  q_offset = -4
  out, grads = out_and_grads(prob, "pallas", jnp.float32, score="gravity",
                             features=("key_mass",), q_offset=q_offset)
  with jax.enable_x64(True):
    ref_out, ref_grads = out_and_grads(prob, "reference", jnp.float64, score="gravity",
                                       features=("key_mass",), q_offset=q_offset)
  assert np.all(np.asarray(out)[:, :4] == 0.0)
  assert rel_err(out, ref_out) < 2e-5
  for name in ("query", "key", "value", "mass", "key_mass"):
    assert rel_err(grads[name], ref_grads[name]) < 2e-5, name


def test_materialised_bias_falls_back_to_xla():
  prob = make_problem(6, q_len=20)
  rng = np.random.default_rng(0)
  bias = jnp.asarray(rng.normal(size=(1, 4, 20, 20)), jnp.float32)
  q, k, v = (jnp.asarray(prob[n], jnp.float32) for n in ("query", "key", "value"))
  mass = jnp.asarray(prob["mass"], jnp.float32)
  got = G.gravity_attention(q, k, v, mass, bias=bias, implementation="pallas")
  want = G.gravity_attention(q, k, v, mass, bias=bias, implementation="xla")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_materialised_bias_is_refused_by_the_kernel_entry():
  prob = make_problem(6, q_len=20)
  q, k, v = (jnp.asarray(prob[n], jnp.float32) for n in ("query", "key", "value"))
  cfg, diff, aux = canonical.prepare(q, k, v, jnp.asarray(prob["mass"], jnp.float32),
                                     bias=jnp.zeros((1, 4, 20, 20)))
  with pytest.raises(ValueError, match="implementation='xla'"):
    GP.gravity_attention_pallas(cfg, diff, aux, options=GPU_SMALL)


def test_bad_options_raise_value_error():
  prob = make_problem(7, q_len=8)
  args = [jnp.asarray(prob[n], jnp.float32) for n in DIFF_ARGS]
  with pytest.raises(ValueError, match="backend"):
    attend(prob, args, "pallas", GPU_SMALL._replace(backend="cuda"), score="gravity",
           features=())


def test_a_jax_without_pallas_triton_gets_one_clear_error(monkeypatch):
  # JAX 0.11 deprecated Pallas's Triton backend; once a JAX drops it, the GPU kernel must say so.
  monkeypatch.setitem(sys.modules, "jax.experimental.pallas.triton", None)
  monkeypatch.delattr(jax.experimental.pallas, "triton", raising=False)
  prob = make_problem(8, q_len=8)
  args = [jnp.asarray(prob[n], jnp.float32) for n in DIFF_ARGS]
  with pytest.raises(ImportError, match="no Pallas Triton backend.*implementation='xla'"):
    attend(prob, args, "pallas", GPU_SMALL, score="gravity", features=())


def lower_for(platform, options, dtype, score):
  """Lowers value-and-grad of a call with every fused feature for `platform` (no device)."""
  b, t, h, kvh, d = 2, 300, 8, 2, 64
  q = jax.ShapeDtypeStruct((b, t, h, d), dtype)
  kv = jax.ShapeDtypeStruct((b, t, kvh, d), dtype)
  per_head = jax.ShapeDtypeStruct((h,), jnp.float32)
  seg = jnp.concatenate([jnp.ones((b, 150), jnp.int32), jnp.full((b, t - 150), 2, jnp.int32)], 1)
  pos = jnp.concatenate([jnp.arange(150), jnp.arange(t - 150)]).astype(jnp.int32)
  pos = jnp.broadcast_to(pos, (b, t))

  def loss(q, k, v, mass, key_mass, power, scale):
    out = G.gravity_attention(q, k, v, None if score == "inverse_square" else mass,
                              score=score, causal=True, segment_ids=seg, positions=pos,
                              key_mass=key_mass, power_law=(power, scale),
                              implementation="pallas", pallas_options=options)
    return jnp.sum(out.astype(jnp.float32))
  fn = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(7))))
  return fn.trace(q, kv, kv, per_head, jax.ShapeDtypeStruct((b, t), jnp.float32), per_head,
                  per_head).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("fused", [False, True], ids=["two_kernel", "fused"])
@pytest.mark.parametrize("score", ["gravity", "dot"])
def test_gpu_kernels_lower_to_triton_with_default_tiles(score, fused):
  # The interpret-mode tests never run the Triton lowering; this does (for CUDA, on the CPU):
  # every kernel, every fused feature, the default (non-interpret) options and tiles.
  options = GP.default_options(backend="triton", interpret=False)._replace(fused_backward=fused)
  text = lower_for("cuda", options, jnp.bfloat16, score)
  kernels = sorted(set(re.findall(r'name = "(gravity_[a-z_]+)"', text)))
  if fused:
    assert kernels == ["gravity_bwd_fused", "gravity_fwd"]
    assert "atomic" in text
  else:
    assert kernels == ["gravity_bwd_dkdv", "gravity_bwd_dq", "gravity_fwd"]


def test_tpu_kernels_lower_to_mosaic_with_default_tiles():
  # Pallas -> Mosaic lowering for a TPU target on the CPU (libtpu's own passes do not run).
  text = lower_for("tpu", GP.default_options(backend="mosaic_tpu", interpret=False),
                   jnp.bfloat16, "gravity")
  assert text.count("tpu_custom_call") == 3


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))

# The TPU kernels per batch shard (sharding.py) on a (data=4, fsdp=2) mesh of 8 fake CPU
# devices, against one device: JAX takes the device count once, so in a process of its own.
SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    sys.path.insert(0, "tests/ops/gravity")
    import test_pallas as T

    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    features = ("segments", "positions", "key_mass", "power_law", "alibi")
    results = {}
    # batch 8 splits over (data, fsdp); batch 2 over fsdp only (data's 4 does not divide it).
    for batch, spec in ((8, ("data", "fsdp")), (2, "fsdp")):
      prob = T.make_problem(9, batch=batch, q_len=150, heads=2, kv_heads=1, head_dim=8)
      args = [jnp.asarray(prob[n], jnp.float32) for n in T.DIFF_ARGS]

      def f(*a):
        return T.out_and_grads(prob, "pallas", jnp.float32, T.TPU_SMALL, score="gravity",
                               features=features, args=a)
      want = jax.jit(f)(*args)
      shardings = [NamedSharding(mesh, P(spec) if a.ndim > 1 else P()) for a in args]
      with jax.set_mesh(mesh):
        fn = jax.jit(f, in_shardings=shardings)
        shard_maps = str(jax.make_jaxpr(f)(*args)).count("shard_map[")
        got = fn(*args)
      errs = {"out": T.rel_err(got[0], want[0])}
      errs.update({n: T.rel_err(got[1][n], want[1][n]) for n in T.DIFF_ARGS})
      results[batch] = dict(errs=errs, shard_maps=shard_maps,
                            out_spec=str(got[0].sharding.spec))
    print(json.dumps(results))
""")


def test_tpu_kernels_per_batch_shard_on_a_cpu_mesh_match_one_device(cpu_devices_env):
  # Interpret mode on fake CPU devices: the same shard_map wrapping as on a TPU mesh. Every
  # input has gradients (the per-head ones psum-ed across shards: without the psum they would
  # be one shard's share, far from the single-device value).
  out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=REPO, env=cpu_devices_env(8),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout.strip().splitlines()[-1])
  for batch, spec in (("8", "('data', 'fsdp')"), ("2", "'fsdp'")):
    r = results[batch]
    assert r["shard_maps"] == 2, r          # the forward and the backward, each per shard
    assert r["out_spec"] == f"P({spec},)", r
    bad = {k: v for k, v in r["errs"].items() if not v < 1e-5}   # float32 summation order
    assert not bad, (batch, r["errs"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_tpu_kernels_compile_per_batch_shard_for_a_4_device_v5e(dtype):
  # libtpu's compiler on a v5e:2x2 topology (4 devices, no TPU needed), Mosaic passes included:
  # without the per-shard wrapping this fails ("Mosaic kernels cannot be automatically
  # partitioned"). Needs libtpu, which CI does not install (pip install -e ".[tpu]").
  pytest.importorskip("libtpu")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top,g-multiple-import
  # libtpu's machine-wide lock file would stop a second compiling process; there is no TPU.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  devices = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices
  mesh = Mesh(np.array(devices).reshape(2, 2), ("data", "fsdp"))
  b, t, h, kvh, d = 4, 256, 4, 2, 64
  options = GP.default_options(backend="mosaic_tpu", interpret=False)
  seg = jnp.concatenate([jnp.ones((b, 100), jnp.int32), jnp.full((b, t - 100), 2, jnp.int32)], 1)

  def loss(q, k, v, mass, key_mass, power, scale, alibi):
    out = G.gravity_attention(q, k, v, mass, causal=True, segment_ids=seg, positions=seg,
                              key_mass=key_mass, power_law=(power, scale), alibi_slopes=alibi,
                              implementation="pallas", pallas_options=options)
    return jnp.sum(out.astype(jnp.float32))

  batch, rep = NamedSharding(mesh, P(("data", "fsdp"))), NamedSharding(mesh, P())
  S = jax.ShapeDtypeStruct
  per_head = S((h,), jnp.float32)
  args = (S((b, t, h, d), dtype), S((b, t, kvh, d), dtype), S((b, t, kvh, d), dtype), per_head,
          S((b, t), jnp.float32), per_head, per_head, per_head)
  fn = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(8))),
               in_shardings=(batch,) * 3 + (rep, batch) + (rep,) * 3)
  with jax.set_mesh(mesh):
    lowered = fn.lower(*args)
  assert lowered.as_text().count("sdy.manual_computation") == 2
  compiled = lowered.compile()
  text = compiled.as_text()
  assert len(re.findall(r"custom_call_target=\"tpu_custom_call\"", text)) == 3
  # One batch row per device: the forward kernel's q operand is [1, heads, t, d].
  assert re.search(rf"\[1,{h},{t},{d}\]", text)


@pytest.mark.slow
@pytest.mark.parametrize("options", [GPU_SMALL, TPU_SMALL], ids=["gpu", "tpu"])
@pytest.mark.parametrize("score", ["gravity", "inverse_square", "dot"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_sweep(options, score, dtype, causal):
  prob = make_problem(8, batch=1, q_len=140, heads=4, kv_heads=1)
  bound = 2e-5 if dtype == jnp.float32 else 3e-2
  assert_matches_reference(prob, dtype, options, bound, score=score, causal=causal,
                           features=ALL + ("alibi",))
