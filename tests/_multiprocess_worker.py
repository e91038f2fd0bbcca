"""One process of the multi-process tests (tests/test_multiprocess.py), started by
``python -m mgd.launch`` with the environment `mgd.distributed.initialize` reads.

    python tests/_multiprocess_worker.py engine OUT   # metagradients with every store
    python tests/_multiprocess_worker.py outer OUT    # selection, LR search, poisoning
    python tests/_multiprocess_worker.py engine+outer OUT   # both, in one launch
    python tests/_multiprocess_worker.py cli ARGS...  # `mgd ARGS` with {pid} -> process id

Each process writes what it found to ``OUT/<mode>-<process id>.{npz,json}``.
"""

import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
import optax

import mgd

T, BATCH, HIDDEN = 6, 32, 8
STORES = ("device", "host", "disk")


def setup(meta_spec, optimizer=None, mesh=None, param_axis=None):
    """The small digits MLP every test compares (the test process builds it without a mesh)."""
    return mgd.TrainingSetup(
        mgd.train.models.MLP(mgd.train.models.MLPConfig(hidden=(HIDDEN,))),
        optax.adam(0.01, eps_root=1e-8) if optimizer is None else optimizer,
        mgd.load_digits(),
        batch_size=BATCH,
        num_steps=T,
        meta_spec=meta_spec,
        mesh=mesh,
        param_axis=param_axis,
    )


ENGINE_META = mgd.MetaSpec(data_weights=True, lr_knots=(0, T))
OUTER_META = mgd.MetaSpec(data_weights=True, lr_knots=(0, 3, T))


def engine(out: Path) -> None:
    # Batches over the data axis and the state over the same axis: both span the processes.
    mesh = mgd.make_mesh({"data": 2, "model": 2})
    s = setup(ENGINE_META, mesh=mesh, param_axis="data")
    found = {}
    for store in STORES:
        res = s.metagradient(s.init_meta(), checkpoint=mgd.StoreAll(), store=store)
        found[f"{store}/value"] = np.asarray(res.value)
        for key, grad in res.grad.items():
            found[f"{store}/{key}"] = np.asarray(grad)
    # A disk store holds this process's shards only, and gives them back bit for bit.
    state = s.init_state()
    disk = mgd.DiskStore()
    disk.put(0, 0, state)
    _, back = disk.get(0)
    local = global_ = 0
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back), strict=True):
        assert a.sharding == b.sharding
        shards = {str(s.index): s for s in a.addressable_shards}
        local += sum(s.data.nbytes for s in shards.values())
        global_ += a.nbytes
        for sa, sb in zip(a.addressable_shards, b.addressable_shards, strict=True):
            np.testing.assert_array_equal(np.asarray(sa.data), np.asarray(sb.data))
    found["disk_file_bytes"] = np.asarray((disk.path / "slot0.bin").stat().st_size)
    found["local_state_bytes"] = np.asarray(local)
    found["global_state_bytes"] = np.asarray(global_)
    disk.clear()
    np.savez(out / f"engine-{jax.process_index()}.npz", **found)


def outer(out: Path) -> None:
    # One setup for selection and LR search (the same compiled programs; the selection keeps
    # the rate factor at 1), its poisoning variant for the attack.
    s = setup(OUTER_META, mesh=mgd.make_mesh({"data": -1}))
    replay = mgd.Replay(checkpoint=mgd.StoreAll())
    selection = mgd.select_data(
        s,
        size=540,
        meta_steps=2,
        replay=replay,
        save_dir=out / "select-checkpoints",
        progress=False,
    )
    lr = mgd.search_lr_schedule(
        s, init_schedule=1.0, meta_steps=2, replay=replay, test_seeds=1, progress=False
    )
    poison = mgd.poison_attack(s, fraction=0.01, meta_steps=2, replay=replay, progress=False)
    decisions = {
        "selection": selection.indices.tolist(),
        "selection_history": [h.info for h in selection.history],
        "schedule": np.asarray(lr.schedule.rates()).tolist(),
        "poison_indices": poison.indices.tolist(),
        "perturbations": np.asarray(poison.perturbations).tolist(),
    }
    (out / f"outer-{jax.process_index()}.json").write_text(json.dumps(decisions))


def cli(args: list[str]) -> int:
    from mgd.cli import main

    pid = os.environ[mgd.distributed.ENV_PROCESS_ID]
    return main([a.replace("{pid}", pid) for a in args])


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "cli":  # The command line joins the other processes itself.
        sys.exit(cli(rest))
    mgd.distributed.initialize()  # Before anything else touches JAX's devices.
    for part in mode.split("+"):  # Several parts share one launch's startup and data.
        {"engine": engine, "outer": outer}[part](Path(rest[0]))
