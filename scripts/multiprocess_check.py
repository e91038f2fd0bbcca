"""Two processes of two CPU devices each (``python -m mgd.launch``, loopback) against one
process: prints how far the metagradient of the test suite's digits MLP on a 2x2 mesh (state
sharded across the processes) is from the single-process one, for each store, and the bytes of
each process's disk-store file against the whole state's.

The figures the README quotes come from this script; ``tests/test_multiprocess.py`` asserts the
same comparison with a float32 rounding tolerance.

Usage:
  python scripts/multiprocess_check.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import _multiprocess_worker as worker  # noqa: E402

import mgd  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        launch = [sys.executable, "-m", "mgd.launch", "--processes", "2"]
        launch += ["--devices-per-process", "2", "--"]
        command = [sys.executable, str(ROOT / "tests" / "_multiprocess_worker.py"), "engine", out]
        subprocess.run(launch + command, env=env, check=True)
        found = [dict(np.load(Path(out) / f"engine-{i}.npz")) for i in range(2)]
    single = worker.setup(worker.ENGINE_META)
    expected = single.metagradient(single.init_meta(), checkpoint=mgd.StoreAll())
    value = float(expected.value)
    for i, f in enumerate(found):
        for store in worker.STORES:
            rel = {
                key: float(np.max(np.abs(f[f"{store}/{key}"] - grad)) / np.max(np.abs(grad)))
                for key, grad in expected.grad.items()
            }
            gap = abs(float(f[f"{store}/value"]) - value) / abs(value)
            grads = ", ".join(f"{k} {v:.1e}" for k, v in rel.items())
            print(f"process {i} {store:6s}: value rel. diff {gap:.1e}; grad diff / scale: {grads}")
        print(
            f"process {i} disk file {int(f['disk_file_bytes'])} bytes = its shards "
            f"{int(f['local_state_bytes'])} of the state's {int(f['global_state_bytes'])}"
        )


if __name__ == "__main__":
    main()
