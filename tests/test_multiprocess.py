"""Several processes on one machine, as several hosts run: two processes of two CPU devices
each (`python -m mgd.launch`, gloo collectives over loopback) give the single-process
metagradient with every store, take identical outer decisions, write --out from process 0 only,
resume after all are killed, and fail in one line (no hang) when they cannot meet or were
started differently. Each launch is bounded by a subprocess timeout."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mgd
from mgd.launch import free_port

ROOT = Path(__file__).parent.parent
WORKER = str(Path(__file__).parent / "_multiprocess_worker.py")
# Seconds a launch may take on a 2-core machine shared with other jobs before it counts as hung
# (each takes 20 s to 3 min there, most of it compiling).
LIMIT = 600


def _env(**extra):
    # The worktree's mgd, whatever is installed; the worker's own device count, not conftest's.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env | extra


def _launch(*command, processes=2, timeout=30, **popen):
    # A session of its own: the launcher and its processes are killed together on a timeout.
    argv = [sys.executable, "-m", "mgd.launch", "--processes", str(processes)]
    argv += ["--devices-per-process", "2", "--timeout", str(timeout), "--", *command]
    return subprocess.Popen(argv, env=_env(), cwd=ROOT, text=True, start_new_session=True, **popen)


def _finish(proc):
    try:
        out, err = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, out, err


def _run(*command, **kwargs):
    return _finish(_launch(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs))


def test_processes_give_one_process_metagradient_and_take_the_same_decisions(tmp_path):
    # One launch for both checks: most of a launch is starting the processes and compiling.
    code, _, err = _run(sys.executable, WORKER, "engine+outer", str(tmp_path))
    assert code == 0, err[-3000:]
    _check_metagradient_equals_one_process(tmp_path)
    _check_outer_loops_take_the_same_decisions(tmp_path)


def _check_metagradient_equals_one_process(tmp_path):
    sys.path.insert(0, str(Path(WORKER).parent))
    try:
        import _multiprocess_worker as worker
    finally:
        sys.path.pop(0)
    single = worker.setup(worker.ENGINE_META)
    expected = single.metagradient(single.init_meta(), checkpoint=mgd.StoreAll())
    found = [np.load(tmp_path / f"engine-{i}.npz") for i in range(2)]
    for store in worker.STORES:
        for f in found:
            # As in test_sharding: float32 sums over shards run in another order; ~5e-6 of each
            # gradient's scale is rounding (amplified by Adam), any real error is O(scale).
            np.testing.assert_allclose(f[f"{store}/value"], expected.value, rtol=1e-5)
            for key, grad in expected.grad.items():
                scale = np.max(np.abs(grad))
                np.testing.assert_allclose(f[f"{store}/{key}"], grad, atol=1e-4 * scale)
        for key in expected.grad:  # Both processes hold the same (replicated) result.
            np.testing.assert_array_equal(found[0][f"{store}/{key}"], found[1][f"{store}/{key}"])
    for f in found:  # Each process's disk file holds its own shards: half the sharded state.
        assert f["disk_file_bytes"] == f["local_state_bytes"] < f["global_state_bytes"]


def _check_outer_loops_take_the_same_decisions(tmp_path):
    first, second = (json.loads((tmp_path / f"outer-{i}.json").read_text()) for i in range(2))
    assert first == second
    assert len(first["selection"]) == 540 and len(first["schedule"]) == 6  # One per step.
    assert np.any(np.asarray(first["perturbations"]) != 0)
    # orbax's multi-process save: one checkpoint of the selection, written once.
    assert [p.name for p in (tmp_path / "select-checkpoints").iterdir()] == ["2"]


_SELECT = """\
fraction: 0.5
train: {model: {name: mlp, hidden: [8]}, batch_size: 32, num_steps: 6}
outer: {meta_steps: 4}
replay: {checkpoint: store_all}
eval: {num_seeds: 1, num_random: 1}
"""


def test_cli_writes_from_process_zero_and_resumes_after_all_are_killed(tmp_path):
    config = tmp_path / "select.yaml"
    config.write_text(_SELECT)
    out = tmp_path / "out"
    argv = ["mgd", "select", "--config", str(config), "--out", str(out), "--quiet"]
    proc = _launch(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Killed (launcher and processes alike) once the first meta-step's checkpoint is complete
    # and its history logged (the log is written just after the checkpoint).
    deadline = time.monotonic() + LIMIT
    while not (
        (out / "checkpoints" / "1" / "commit_success.txt").exists()
        and (out / "history.json").exists()
    ):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no checkpoint in time")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.loads((out / "history.json").read_text())
    assert len(before) in (1, 2)

    code, stdout, err = _run(*argv, "--resume")
    assert code == 0, err[-3000:]
    assert stdout.count("selected") == 1  # The table, printed by process 0 alone.
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 4 and history[: len(before)] == before  # Continued, not restarted.
    selection = json.loads((out / "selection.json").read_text())
    assert len(selection["indices"]) == selection["size"] == 540
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "history.json",
        "metrics.json",
        "objective.png",
        "selection.json",
    ]


def _alone(process_id, port, *args):
    # One process of two, started alone: the other never comes.
    env = _env(
        MGD_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        MGD_NUM_PROCESSES="2",
        MGD_PROCESS_ID=str(process_id),
        MGD_INIT_TIMEOUT="3",
    )
    argv = [sys.executable, "-m", "mgd.cli", "select", *args]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.Popen(argv, env=env, text=True, start_new_session=True, **pipes)


def test_processes_that_cannot_meet_fail_in_one_line(tmp_path):
    procs = {
        "did not connect to the coordinator": _alone(0, free_port(), "--out", str(tmp_path / "a")),
        "could not reach the coordinator": _alone(1, free_port(), "--out", str(tmp_path / "b")),
    }
    for message, proc in procs.items():
        code, _, err = _finish(proc)
        assert code == 2, err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_processes_started_with_different_seeds_are_refused(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, WORKER, "cli", "select", "--seed", "{pid}", "--out", str(out)]
    code, _, err = _run(*command)
    assert code == 2, err[-3000:]
    assert "processes [1] were started with a different config, data or seed" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_mesh_that_does_not_divide_the_devices_is_refused():
    with pytest.raises(ValueError, match=r"do not divide the 4 devices .* multiply to 4"):
        mgd.make_mesh({"data": 3})
    with pytest.raises(ValueError, match="at most one size may be -1"):
        mgd.make_mesh({"data": -1, "model": -1})
    assert dict(mgd.make_mesh({"data": -1, "model": 2}).shape) == {"data": 2, "model": 2}


def test_launcher_refuses_bad_flags_in_one_line(capsys, monkeypatch):
    from mgd.launch import environment, main

    for argv, message in [
        (["--processes", "0", "--", "mgd", "select"], "--processes must be >= 1, got 0"),
        (["--processes", "2", "--timeout", "0", "--", "mgd"], "--timeout must be > 0 seconds"),
        (["--processes", "2"], "no command; add -- and the command"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # The device count replaces one already in XLA_FLAGS, other flags stay.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1 --xla_force_host_platform_device_count=4")
    env = environment(1, 2, 1234, 5.0, 3)
    assert env["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=3"
    assert env["MGD_COORDINATOR_ADDRESS"] == "127.0.0.1:1234" and env["MGD_PROCESS_ID"] == "1"


def test_config_mesh_builds_the_setups_mesh(tmp_path):
    from mgd.experiments import load_data, read_config, setup_from_config
    from mgd.experiments.select import SelectConfig

    path = tmp_path / "c.yaml"
    path.write_text(
        _SELECT.replace("num_steps: 6}", "num_steps: 6, mesh: [2, -1], param_axis: model}")
    )
    config = read_config("select", str(path), SelectConfig)
    assert config.train.mesh == (2, -1)
    setup = setup_from_config(config.train, load_data(config.data)[0])
    assert dict(setup.mesh.shape) == {"data": 2, "model": 2} and setup.param_axis == "model"
    for text, match in [
        ("mesh: [1, 2, 2]", r"train.mesh must list 1 or 2 axis sizes"),
        ("param_axis: model", r"train.param_axis='model' is not an axis of train.mesh"),
    ]:
        path.write_text(_SELECT.replace("num_steps: 6}", f"num_steps: 6, {text}}}"))
        with pytest.raises(ValueError, match=match):
            read_config("select", str(path), SelectConfig)
