"""Test setup: 8 fake CPU devices (set before jax is imported anywhere), no hub access."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download, here or in CI
