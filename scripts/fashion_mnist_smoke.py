"""Smoke check of the three shipped Fashion-MNIST configs at full data scale: each builds its
setup on the real data and runs ONE meta-step with a minimal evaluation (not the experiment).

Needs `apt-get install dataset-fashion-mnist` (or $MGD_FASHION_MNIST_DIR). Prints, per config,
the data shapes, the wall time of the smoke and the run's own timing figures.

    python scripts/fashion_mnist_smoke.py [select] [lr] [poison]
"""

import dataclasses
import sys
import time

from mgd.experiments import lr, poison, read_config, select


def _select():
    c = read_config("select", "fashion_mnist_noisy", select.SelectConfig)
    c = dataclasses.replace(
        c,
        outer=dataclasses.replace(c.outer, meta_steps=1),
        eval=dataclasses.replace(c.eval, num_seeds=1, num_random=1),
    )
    done = select.run(c, progress=False)
    print(done.table())
    return done.setup


def _lr():
    c = read_config("lr", "fashion_mnist", lr.LRConfig)
    c = dataclasses.replace(
        c,
        search=dataclasses.replace(
            c.search, init_lr=(0.01,), start_factors=(), meta_steps=1, test_seeds=1
        ),
        grid=dataclasses.replace(c.grid, enabled=False),
    )
    done = lr.run(c, progress=False)
    print(done.table())
    return done.setup


def _poison():
    c = read_config("poison", "fashion_mnist", poison.PoisonConfig)
    c = dataclasses.replace(
        c,
        # One seed for the choice of images (the config's 4 cost 4 metagradients of the whole pool).
        attack=dataclasses.replace(c.attack, meta_steps=1, craft_seeds=(0,), choose_seeds=(6,)),
        gradient_canceling=dataclasses.replace(c.gradient_canceling, steps=2, target_steps=2),
        victim_seeds=(100,),
    )
    done = poison.run(c, progress=False)
    print(done.table())
    return done.setup


def main(names):
    for name in names or ["select", "lr", "poison"]:
        started = time.perf_counter()
        setup = {"select": _select, "lr": _lr, "poison": _poison}[name]()
        d = setup.data
        print(
            f"== {name}: pool {d.x_train.shape}, target {d.x_val.shape}, test {d.x_test.shape}; "
            f"smoke {time.perf_counter() - started:.0f} s (shared 2-core CPU)\n",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
