"""The first TPU use of the fused kernel checks one batch against XLA (training/kernel_check.py).

No TPU here: `uses_kernel` is tested by tracing "for" a TPU, and the comparison itself runs on
the CPU with the kernel in Pallas interpret mode (agreement) or with a model that really
computes something else (disagreement: the run falls back to XLA with a warning).
"""

import jax
import pytest

from ban_jax import config_validation
from ban_jax.ops.gravity import platform
from ban_jax.parallel import mesh as mesh_lib
from ban_jax.training import kernel_check
from ban_jax.training import setup
from configs import wiki


def test_uses_kernel_only_for_the_gravity_op_on_a_tpu_with_auto():
  default, transformer = wiki.get_config("default"), wiki.get_config("transformer")
  assert not kernel_check.uses_kernel(default)            # this CPU
  with platform.compiling_for("tpu"):
    assert kernel_check.uses_kernel(default)
    assert not kernel_check.uses_kernel(transformer)      # dot + RoPE: not the gravity op
    assert not kernel_check.uses_kernel(kernel_check.with_xla(default))


def _plans(config):
  data = setup.build_data(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  plans = []
  for c in (config, kernel_check.with_xla(config)):
    plans.append(setup.build(c, data.tokenizer.vocab_size, mesh,
                             token_bytes=jax.numpy.asarray(data.tokenizer.token_bytes, "float32"),
                             model_config=config_validation.validate(c)))
  return data, plans


def _config(tiny_config, **overrides):
  return tiny_config(model__attention="inverse_square", model__positional="power_law",
                     model__tagging=True, model__dtype="float32", eval__batch_size=4,
                     **overrides)


def test_an_agreeing_kernel_is_kept(tiny_config):
  config = _config(tiny_config)
  config.model.attention_options.implementation = "pallas"     # interpret mode on the CPU
  data, (plan, xla_plan) = _plans(config)
  params = plan.init(jax.random.PRNGKey(0)).params
  kept, kept_plan = kernel_check.check_or_fall_back(config, plan, xla_plan, params,
                                                    data.validation, 4)
  assert kept is config and kept_plan is plan


def test_a_disagreeing_kernel_falls_back_to_xla_with_a_warning(tiny_config, caplog):
  # A "kernel" that computes another function: the softening eps of its score differs.
  config = _config(tiny_config)
  config.model.attention_options.eps = 2.0
  data, (plan, _) = _plans(config)
  _, (xla_plan, _) = _plans(_config(tiny_config))
  params = plan.init(jax.random.PRNGKey(0)).params
  with caplog.at_level("WARNING"):
    kept, kept_plan = kernel_check.check_or_fall_back(config, plan, xla_plan, params,
                                                      data.validation, 4)
  assert kept_plan is xla_plan
  assert kept.model.attention_options.implementation == "xla"
  assert kept.model.attention_options.eps == 2.0          # only the implementation changed
  assert "disagrees with the XLA path" in caplog.text
