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

__version__ = "0.1.0"
