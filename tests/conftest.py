"""Shared test setup: CPU only, deterministic, quiet."""

import os

# Tests run on the CPU (CI has no accelerator); a GPU box can opt in with BAN_JAX_TEST_PLATFORM.
os.environ.setdefault("JAX_PLATFORMS", os.environ.get("BAN_JAX_TEST_PLATFORM", "cpu"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
