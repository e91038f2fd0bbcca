"""mgd: metagradient descent in JAX.

Exact reverse-mode metagradients through whole training runs (the replay engine), a smooth
training wrapper that turns a training recipe into a differentiable function of its
metaparameters, and outer optimizers built on them (dataset selection, learning-rate schedule
search, data poisoning).
"""

# Replay engine.
from mgd.engine import AbstractCheckpointPolicy as AbstractCheckpointPolicy
from mgd.engine import Binomial as Binomial
from mgd.engine import KAryTree as KAryTree
from mgd.engine import MetagradientResult as MetagradientResult
from mgd.engine import MetagradientStats as MetagradientStats
from mgd.engine import NonFiniteCotangentError as NonFiniteCotangentError
from mgd.engine import StoreAll as StoreAll
from mgd.engine import metagradient as metagradient

# Smooth training.
from mgd.train import Dataset as Dataset
from mgd.train import MetaSpec as MetaSpec
from mgd.train import TrainingSetup as TrainingSetup
from mgd.train import TrainState as TrainState
from mgd.train import load_cifar10 as load_cifar10
from mgd.train import load_digits as load_digits
from mgd.train import load_npz as load_npz
from mgd.train import make_synthetic as make_synthetic

__version__ = "0.1.0"
