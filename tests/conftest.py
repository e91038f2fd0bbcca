"""Test configuration: several CPU devices for sharding tests, x64 on request."""

import contextlib
import gc
import os

# Must be set before JAX initializes its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# The suite's time is mostly XLA compiling thousands of small programs that then run for
# milliseconds: LLVM's expensive passes cost more than they save here. Read when JAX is
# imported; JAX_DISABLE_MOST_OPTIMIZATIONS=0 tests the optimized code path instead.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

# `jax.enable_x64` is new in JAX 0.8; the supported range starts at 0.7, which has only the
# experimental context manager.
_enable_x64 = getattr(jax, "enable_x64", None)
if _enable_x64 is None:
    from jax.experimental import enable_x64 as _enable_x64


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled (finite differences, tight tolerances)."""
    with _enable_x64(True):
        yield


class _Count:
    """How many XLA compilations ran inside a ``count_compilations()`` block."""

    def __init__(self):
        self.value = 0

    def __int__(self):
        return self.value

    def __bool__(self):
        return self.value > 0

    def __eq__(self, other):
        return self.value == int(other)

    def __repr__(self):
        return f"{self.value} compilations"


@contextlib.contextmanager
def count_compilations():
    """Counts XLA backend compilations in the block, through JAX's public monitoring events."""
    count = _Count()

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            count.value += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(autouse=True)
def _engine_measures_afresh():
    """Each test starts with no remembered engine choice (`mgd.engine.memory.resolve`), so a
    test that fakes the free memory does not hand its choice to the next."""
    from mgd.engine import memory

    memory.forget_choices()
    yield
    memory.forget_choices()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program after each test module. XLA's CPU executables hold their
    machine code in memory mappings, and a worker that keeps every program of the suite
    reaches the kernel's limit of 65,530 mappings per process (`vm.max_map_count`); XLA then
    crashes with a segmentation fault while compiling. Modules rarely share programs."""
    yield
    jax.clear_caches()
    gc.collect()


def unrolled_objective(setup):
    """The objective after ``setup.num_steps`` steps as one jitted function of the
    metaparameters: the reference that ``jax.grad`` differentiates directly (``fori_loop``: one
    compiled step, not T copies), against which the engine's metagradients are checked."""

    def objective(meta):
        state = jax.lax.fori_loop(
            0, setup.num_steps, lambda t, s: setup.step_fn(s, meta, t), setup.init_state()
        )
        return setup.objective_fn(state, meta)

    return jax.jit(objective)
