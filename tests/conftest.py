"""Shared test setup: CPU only, deterministic, quiet; the bundled dataset built once."""

import os
import sys

# Tests run on the CPU (CI has no accelerator); a GPU box can opt in with BAN_JAX_TEST_PLATFORM.
os.environ.setdefault("JAX_PLATFORMS", os.environ.get("BAN_JAX_TEST_PLATFORM", "cpu"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # for `import configs.wiki`


def _shared_tmp(tmp_path_factory):
  # Under pytest-xdist each worker has its own basetemp; their parent is shared by the run.
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A TFDS data dir holding ban_wikipedia/sample (built once; workers wait on a lock)."""
  from ban_jax.data import wikipedia  # pylint: disable=g-import-not-at-top
  path = str(_shared_tmp(tmp_path_factory) / "tfds")
  wikipedia.prepare("sample", path)
  return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  return str(_shared_tmp(tmp_path_factory) / "ban_jax_cache")


@pytest.fixture(scope="session")
def cpu_devices_env():
  """`env(n)`: the environment for a subprocess that sees n CPU devices."""
  def env(n):
    # On a loaded 2-core machine one device thread can miss an in-process collective's
    # rendezvous for XLA's default 40 s, and XLA then aborts the whole process; a real
    # deadlock still fails within the test's time.
    flags = (f"--xla_force_host_platform_device_count={n} "
             "--xla_cpu_collective_call_terminate_timeout_seconds=180")
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return env


PRESET = "tiny"  # what `tiny_config` starts from (and what CLI tests pass as the preset)


@pytest.fixture
def tiny_config(tfds_dir, cache_dir):
  """configs/wiki.py's `tiny` preset (the transformer baseline shrunk to seconds per run),
  reading the session's dataset; `tiny_config(train__steps=30, ...)` overrides fields.

  Tests of the training system use the transformer (fast to compile); the BAN's own tests and
  the smoke run cover the default model.
  """
  from configs import wiki  # pylint: disable=g-import-not-at-top

  def make(**overrides):
    c = wiki.get_config(PRESET)
    c.data.tfds_data_dir = tfds_dir
    c.data.cache_dir = cache_dir
    for dotted, value in overrides.items():
      node = c
      *parents, leaf = dotted.split("__")
      for p in parents:
        node = node[p]
      node[leaf] = value
    return c

  return make
