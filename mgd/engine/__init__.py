"""The replay engine: `metagradient` and its checkpoint policies."""

from mgd.engine.policies import AbstractCheckpointPolicy as AbstractCheckpointPolicy
from mgd.engine.policies import Binomial as Binomial
from mgd.engine.policies import KAryTree as KAryTree
from mgd.engine.policies import StoreAll as StoreAll
from mgd.engine.replay import MetagradientResult as MetagradientResult
from mgd.engine.replay import MetagradientStats as MetagradientStats
from mgd.engine.replay import NonFiniteCotangentError as NonFiniteCotangentError
from mgd.engine.replay import metagradient as metagradient
