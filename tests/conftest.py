"""Test configuration: several CPU devices for sharding tests, x64 on request."""

import os

# Must be set before JAX initializes its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled (finite differences, tight tolerances)."""
    with jax.enable_x64(True):
        yield
