"""The platform gravity attention is traced for.

Normally JAX's default backend and its first device. When a program is compiled ahead of time
for devices that are not the default backend's (a TPU slice described by libtpu on a CPU host,
`ban_jax.aot`), the choice of implementation ("auto") and the kernel's lowering must follow the
target, not the host: `compiling_for("tpu", "TPU v5 lite")` says so for the traces inside it.
"""

import contextlib
import contextvars

import jax

_TARGET = contextvars.ContextVar("ban_jax_gravity_target_platform", default=None)


def current() -> str:
  """"cpu", "gpu" or "tpu": the target of the trace in progress."""
  target = _TARGET.get()
  return target[0] if target else jax.default_backend()


def device_kind() -> str:
  """The target's device kind (e.g. "TPU v5 lite"), "" when unknown."""
  target = _TARGET.get()
  if target:
    return target[1]
  try:
    return jax.devices()[0].device_kind
  except RuntimeError:
    return ""


@contextlib.contextmanager
def compiling_for(platform: str, kind: str = ""):
  """Traces inside this context are for `platform` ("cpu", "gpu", "tpu") devices of `kind`."""
  token = _TARGET.set((platform, kind))
  try:
    yield
  finally:
    _TARGET.reset(token)
