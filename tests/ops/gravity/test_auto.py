"""What implementation="auto" picks (ban_jax/ops/gravity/__init__.py, `_auto_implementation`).

The choice depends on the backend, so these tests tell the module it runs on a GPU and check
which path each call takes: "pallas" only where the H200 timings say it wins (bf16/f16, head
dims <= 128, no materialised bias or mask, not decoding), "xla" elsewhere.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ban_jax.ops.gravity as G
from ban_jax.ops.gravity import canonical
from ban_jax.ops.gravity import pallas_common


def call_form(dtype=jnp.bfloat16, head_dim=32, v_dim=None, bias=False):
  rng = np.random.default_rng(0)
  b, t, h = 2, 24, 4
  q = jnp.asarray(rng.normal(size=(b, t, h, head_dim)), dtype)
  v = jnp.asarray(rng.normal(size=(b, t, h, v_dim or head_dim)), dtype)
  extra = dict(bias=jnp.zeros((1, 1, t, t), jnp.float32)) if bias else {}
  return canonical.prepare(q, q, v, jnp.ones((h,)), causal=True, **extra)


@pytest.fixture
def on_gpu(monkeypatch):
  monkeypatch.setattr(G.jax, "default_backend", lambda: "gpu")


def test_cpu_and_tpu_take_xla(monkeypatch):
  for backend in ("cpu", "tpu"):
    monkeypatch.setattr(G.jax, "default_backend", lambda b=backend: b)
    assert G._auto_implementation(*call_form()) == "xla"


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
