"""The platform gravity attention is traced for.

Normally JAX's default backend. When a program is compiled ahead of time for devices that are
not the default backend's (a TPU slice described by libtpu on a CPU host, `ban_jax.aot`), the
choice of implementation ("auto") and the kernel's lowering must follow the target, not the
host: `compiling_for("tpu")` says so for the traces inside it.
"""

import contextlib
import contextvars

import jax

_TARGET = contextvars.ContextVar("ban_jax_gravity_target_platform", default=None)


def current() -> str:
  """"cpu", "gpu" or "tpu": the target of the trace in progress."""
  return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(platform: str):
  """Traces inside this context are for `platform` ("cpu", "gpu", "tpu")."""
  token = _TARGET.set(platform)
  try:
    yield
  finally:
    _TARGET.reset(token)
