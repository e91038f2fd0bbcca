"""The replay engine: `metagradient`, `replay_loop` and their checkpoint policies."""

from mgd.engine.compiled import meta_step as meta_step
from mgd.engine.compiled import replay_loop as replay_loop
from mgd.engine.leaf import GradientStep as GradientStep
from mgd.engine.memory import MemoryEstimate as MemoryEstimate
from mgd.engine.memory import estimate_memory as estimate_memory
from mgd.engine.policies import AbstractCheckpointPolicy as AbstractCheckpointPolicy
from mgd.engine.policies import Binomial as Binomial
from mgd.engine.policies import BudgetChoice as BudgetChoice
from mgd.engine.policies import KAryTree as KAryTree
from mgd.engine.policies import PlanChoice as PlanChoice
from mgd.engine.policies import StoreAll as StoreAll
from mgd.engine.policies import choose_for_budget as choose_for_budget
from mgd.engine.policies import choose_plan as choose_plan
from mgd.engine.policies import policy_for_budget as policy_for_budget
from mgd.engine.replay import MetagradientResult as MetagradientResult
from mgd.engine.replay import MetagradientStats as MetagradientStats
from mgd.engine.replay import NonFiniteCotangentError as NonFiniteCotangentError
from mgd.engine.replay import metagradient as metagradient
from mgd.engine.storage import AbstractStateStore as AbstractStateStore
from mgd.engine.storage import DeviceStore as DeviceStore
from mgd.engine.storage import DiskStore as DiskStore
from mgd.engine.storage import HostStore as HostStore
