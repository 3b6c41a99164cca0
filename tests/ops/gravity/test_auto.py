"""What implementation="auto" picks (ban_jax/ops/gravity/__init__.py, `_auto_implementation`).

The choice depends on the backend, so these tests tell the module it runs on a GPU or a TPU and
check which path each call takes. GPU: "pallas" only where the H200 timings say it wins
(bf16/f16, head dims <= 128, no materialised bias or mask, not decoding), "xla" elsewhere.
TPU: "pallas" wherever the Mosaic kernel takes the call and can be split over the devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ban_jax.ops.gravity as G
from ban_jax.ops.gravity import canonical
from ban_jax.ops.gravity import pallas_common


def call_form(dtype=jnp.bfloat16, head_dim=32, v_dim=None, bias=False, mask=False):
  rng = np.random.default_rng(0)
  b, t, h = 2, 24, 4
  q = jnp.asarray(rng.normal(size=(b, t, h, head_dim)), dtype)
  v = jnp.asarray(rng.normal(size=(b, t, h, v_dim or head_dim)), dtype)
  extra = dict(bias=jnp.zeros((1, 1, t, t), jnp.float32)) if bias else {}
  if mask:
    extra["mask"] = jnp.ones((1, 1, t, t), bool)
  return canonical.prepare(q, q, v, jnp.ones((h,)), causal=True, **extra)


@pytest.fixture
def on_gpu(monkeypatch):
  monkeypatch.setattr(G.jax, "default_backend", lambda: "gpu")


@pytest.fixture
def on_tpu(monkeypatch):
  monkeypatch.setattr(G.jax, "default_backend", lambda: "tpu")


def test_cpu_takes_xla(monkeypatch):
  monkeypatch.setattr(G.jax, "default_backend", lambda: "cpu")
  assert G._auto_implementation(*call_form()) == "xla"


def test_tpu_takes_the_kernel_for_float32_and_bfloat16_up_to_head_dim_256(on_tpu):
  del on_tpu
  assert jax.device_count() == 1
  assert G._auto_implementation(*call_form(jnp.bfloat16, 32)) == "pallas"
  assert G._auto_implementation(*call_form(jnp.float32, 256)) == "pallas"


@pytest.mark.parametrize("kwargs", [dict(dtype=jnp.float16), dict(head_dim=512),
                                    dict(v_dim=512), dict(bias=True), dict(mask=True)],
                         ids=["float16", "head_dim_512", "v_dim_512", "materialised_bias",
                              "materialised_mask"])
def test_tpu_keeps_xla_where_the_kernel_does_not_take_the_call(on_tpu, kwargs):
  del on_tpu
  assert G._auto_implementation(*call_form(**kwargs)) == "xla"


def test_tpu_with_several_devices_needs_a_mesh_to_split_the_kernel_over(on_tpu, monkeypatch):
  # With devices but no mesh in sight (jit with in_shardings only), XLA would have to
  # partition the Mosaic kernel itself, which it cannot; with a mesh, the kernel runs per shard.
  del on_tpu
  monkeypatch.setattr(G.jax, "device_count", lambda: 8)
  form = call_form()
  assert G._auto_implementation(*form) == "xla"
  mesh = jax.sharding.AbstractMesh((1, 2), ("data", "fsdp"))
  with jax.sharding.use_abstract_mesh(mesh):
    assert G._auto_implementation(*form) == "pallas"


def test_gpu_takes_the_kernel_for_16_bit_inputs_up_to_head_dim_128(on_gpu):
  del on_gpu
  assert G._auto_implementation(*call_form(jnp.bfloat16, 32)) == "pallas"
  assert G._auto_implementation(*call_form(jnp.float16, 128)) == "pallas"


@pytest.mark.parametrize("kwargs", [dict(dtype=jnp.float32), dict(head_dim=256),
                                    dict(v_dim=256), dict(bias=True)],
                         ids=["float32", "head_dim_256", "v_dim_256", "materialised_bias"])
def test_gpu_keeps_xla_where_the_kernel_was_not_measured_faster(on_gpu, kwargs):
  del on_gpu
  assert G._auto_implementation(*call_form(**kwargs)) == "xla"


def test_gpu_without_pallas_triton_takes_xla(on_gpu, monkeypatch):
  del on_gpu

  def missing():
    raise ImportError("no jax.experimental.pallas.triton")
  monkeypatch.setattr(pallas_common, "plgpu", missing)
  assert G._auto_implementation(*call_form()) == "xla"


def test_decoding_takes_xla_on_gpu(on_gpu):
  # Were the kernel picked, its (non-interpret) Triton call could not run on this CPU.
  del on_gpu
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(1, 1, 2, 16)), jnp.bfloat16)
  cache = jnp.asarray(rng.normal(size=(1, 8, 2, 16)), jnp.bfloat16)
  out = G.gravity_attention_decode(q, cache, cache, jnp.ones((2,)), index=5)
  ref = G.gravity_attention_decode(q, cache, cache, jnp.ones((2,)), index=5,
                                   implementation="reference")
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                             rtol=2e-2, atol=2e-2)


def test_auto_on_the_cpu_equals_xla():
  form = call_form(jnp.float32, 16)
  del form
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.normal(size=(1, 20, 2, 16)), jnp.float32)
  auto = G.gravity_attention(q, q, q, jnp.ones((2,)), implementation="auto")
  xla = G.gravity_attention(q, q, q, jnp.ones((2,)), implementation="xla")
  assert jax.default_backend() == "cpu"
  np.testing.assert_array_equal(np.asarray(auto), np.asarray(xla))


def test_several_gpus_keep_xla(on_gpu, monkeypatch):
  # The Triton kernel is not wrapped per shard: XLA could not partition it over a mesh.
  del on_gpu
  monkeypatch.setattr(G.jax, "device_count", lambda: 8)
  assert G._auto_implementation(*call_form(jnp.bfloat16, 32)) == "xla"


def test_tpu_v2_and_v3_keep_xla():
  # Mosaic rejects the kernel's bf16 matmuls on v2 (seen compiling the default preset for a
  # v2-8); the target's kind decides, also when compiling ahead of time from a CPU host.
  from ban_jax.ops.gravity import platform  # pylint: disable=g-import-not-at-top
  for kind, expected in (("TPU v2", "xla"), ("TPU v3", "xla"), ("TPU v5 lite", "pallas"),
                         ("TPU v4", "pallas")):
    with platform.compiling_for("tpu", kind):
      assert G._auto_implementation(*call_form(jnp.bfloat16, 32)) == expected, kind
