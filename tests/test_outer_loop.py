"""The shared meta-descent loop: resume, fingerprints, history, validation, engine options."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mgd
from mgd.outer import MetaStep, meta_descent


def _quadratic(step, x):
    # A stand-in for a metagradient: value and exact gradient of |x - 1|^2.
    return jnp.sum((x - 1.0) ** 2), 2 * (x - 1.0), None


class _Killed(Exception):
    pass


def _run(save_dir=None, *, resume=False, fingerprint="a", callback=None, meta_steps=5):
    return meta_descent(
        _quadratic,
        jnp.zeros(3),
        optax.adam(0.1),
        meta_steps=meta_steps,
        record=lambda k, x, value, grad, state: {"x0": float(x[0])},
        fingerprint=fingerprint,
        save_dir=save_dir,
        resume=resume,
        callback=callback,
        progress=False,
    )


def test_history_records_each_meta_step_before_its_update():
    loop = _run()
    assert [h.step for h in loop.history] == list(range(5))
    assert all(isinstance(h, MetaStep) for h in loop.history)
    assert loop.history[0].info == {"x0": 0.0} and loop.history[0].objective == 3.0
    objectives = [h.objective for h in loop.history]
    assert objectives == sorted(objectives, reverse=True)  # Adam descends the quadratic.


@pytest.mark.parametrize("kill_after", [0, 1, 4])
def test_killed_at_any_meta_step_resumes_to_the_same_result(tmp_path, kill_after):
    full = _run()

    def kill(history):
        if len(history) == kill_after:
            raise _Killed

    if kill_after:
        with pytest.raises(_Killed):
            _run(tmp_path, callback=kill)
    resumed = _run(tmp_path, resume=True)  # kill_after=0: no checkpoint yet, starts over.
    np.testing.assert_array_equal(resumed.params, full.params)
    assert [(h.step, h.objective, h.info) for h in resumed.history] == [
        (h.step, h.objective, h.info) for h in full.history
    ]


def test_resume_refuses_another_run_and_overwriting(tmp_path):
    _run(tmp_path, meta_steps=2)
    with pytest.raises(ValueError, match="different run"):
        _run(tmp_path, resume=True, fingerprint="b")
    with pytest.raises(ValueError, match="pass resume=True"):
        _run(tmp_path)
    with pytest.raises(ValueError, match="more than meta_steps=1"):
        _run(tmp_path, resume=True, meta_steps=1)
    with pytest.raises(ValueError, match="needs save_dir"):
        _run(None, resume=True)


@pytest.mark.parametrize("meta_steps", [0, 2.5, True, "3"])
@pytest.mark.parametrize("search", ["select", "lr", "poison", "loop"])
def test_meta_steps_must_be_an_int(search, meta_steps):
    # Validated before anything trains: the setup is never touched.
    with pytest.raises(ValueError, match="meta_steps must be an int >= 1"):
        if search == "loop":
            _run(meta_steps=meta_steps)
        else:
            data = mgd.make_synthetic(num_train=16, num_val=8, num_test=8)
            model = mgd.train.models.MLP(mgd.train.models.MLPConfig(num_classes=3, hidden=(4,)))
            spec = {
                "select": mgd.MetaSpec(data_weights=True),
                "lr": mgd.MetaSpec(lr_knots=(0, 4)),
                "poison": mgd.MetaSpec(),
            }[search]
            setup = mgd.TrainingSetup(
                model, optax.sgd(0.1), data, batch_size=8, num_steps=4, meta_spec=spec
            )
            if search == "select":
                mgd.select_data(setup, size=8, meta_steps=meta_steps, progress=False)
            elif search == "lr":
                mgd.search_lr_schedule(setup, init_schedule=0.1, meta_steps=meta_steps)
            else:
                mgd.poison_attack(setup, fraction=0.25, meta_steps=meta_steps, progress=False)


def test_replay_options():
    replay = mgd.Replay(checkpoint=mgd.KAryTree(3), store="host", memory_budget=10**6)
    assert replay.options() == {
        "checkpoint": mgd.KAryTree(3),
        "store": "host",
        "memory_budget": 10**6,
    }
    assert mgd.Replay().options() == {"checkpoint": None}
    with pytest.raises(ValueError, match="Replay: checkpoint must be a checkpoint policy"):
        mgd.Replay(checkpoint=3)
    with pytest.raises(ValueError, match="Replay: memory_budget must be a positive"):
        mgd.Replay(memory_budget=-1)


def test_replay_reaches_the_engine():
    # Every application passes its replay options to the engine: a store records its use.
    data = mgd.make_synthetic(num_train=16, num_val=8, num_test=8)
    model = mgd.train.models.MLP(mgd.train.models.MLPConfig(num_classes=3, hidden=(4,)))
    setup = mgd.TrainingSetup(
        model,
        optax.sgd(0.1),
        data,
        batch_size=8,
        num_steps=4,
        meta_spec=mgd.MetaSpec(data_weights=True),
    )
    used = []

    class Recording(mgd.DeviceStore):
        def put(self, slot, step, state):
            used.append(step)
            super().put(slot, step, state)

    res = mgd.select_data(
        setup,
        size=8,
        meta_steps=1,
        replay=mgd.Replay(checkpoint=mgd.StoreAll(), store=Recording()),
        progress=False,
    )
    assert used and res.history[0].forward_steps == setup.num_steps
