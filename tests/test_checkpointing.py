"""OuterCheckpointer: round trip, only the latest kept, partial writes ignored."""

from typing import NamedTuple

import jax
import numpy as np
import pytest

from mgd.outer.checkpointing import OuterCheckpointer


class State(NamedTuple):
    weights: np.ndarray
    key: np.ndarray
    step: np.ndarray


def _state(step):
    return State(
        np.arange(6, dtype=np.float32) * step, np.asarray(jax.random.PRNGKey(step)), np.int32(step)
    )


def test_round_trip_keeps_latest_only(tmp_path):
    ckpt = OuterCheckpointer(tmp_path / "ck")
    assert ckpt.latest_step() is None
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"history": list(range(step)), "echo": {"a": "b"}})
    ckpt.close()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["3"]

    with OuterCheckpointer(tmp_path / "ck") as again:
        step, state, meta = again.restore(_state(0))
    assert step == 3
    assert isinstance(state, State)
    for got, want in zip(state, _state(3), strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.asarray(want).dtype
    assert meta == {"history": [0, 1, 2], "echo": {"a": "b"}}


def test_partial_write_is_ignored(tmp_path):
    with OuterCheckpointer(tmp_path / "ck") as ckpt:
        ckpt.save(1, _state(1), {})
    # What a process killed mid-save leaves behind: orbax's temporary directory, never renamed.
    (tmp_path / "ck" / "2.orbax-checkpoint-tmp-123").mkdir()
    with OuterCheckpointer(tmp_path / "ck") as ckpt:
        assert ckpt.latest_step() == 1
        step, state, _ = ckpt.restore(_state(0))
    assert step == 1
    np.testing.assert_array_equal(state.weights, _state(1).weights)


def test_restore_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        OuterCheckpointer(tmp_path / "none").restore(_state(0))


def test_bad_max_to_keep(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep"):
        OuterCheckpointer(tmp_path, max_to_keep=0)
