"""mgd: metagradient descent in JAX.

Exact reverse-mode metagradients through whole training runs (the replay engine), a smooth
training wrapper that turns a training recipe into a differentiable function of its
metaparameters, and outer optimizers built on them (dataset selection, learning-rate schedule
search, data poisoning).
"""

# Several processes (hosts) on one run: mgd.distributed.initialize, check_same, is_primary.
from mgd import distributed as distributed

# Replay engine.
from mgd.engine import AbstractCheckpointPolicy as AbstractCheckpointPolicy
from mgd.engine import AbstractStateStore as AbstractStateStore
from mgd.engine import Binomial as Binomial
from mgd.engine import BudgetChoice as BudgetChoice
from mgd.engine import DeviceStore as DeviceStore
from mgd.engine import DiskStore as DiskStore
from mgd.engine import GradientStep as GradientStep
from mgd.engine import HostStore as HostStore
from mgd.engine import KAryTree as KAryTree
from mgd.engine import MemoryEstimate as MemoryEstimate
from mgd.engine import MetagradientResult as MetagradientResult
from mgd.engine import MetagradientStats as MetagradientStats
from mgd.engine import NonFiniteCotangentError as NonFiniteCotangentError
from mgd.engine import StoreAll as StoreAll
from mgd.engine import choose_for_budget as choose_for_budget
from mgd.engine import estimate_memory as estimate_memory
from mgd.engine import meta_step as meta_step
from mgd.engine import metagradient as metagradient
from mgd.engine import policy_for_budget as policy_for_budget
from mgd.engine import replay_loop as replay_loop

# Outer optimizers on one meta-descent loop: dataset selection, learning-rate schedule search,
# data poisoning (update rules, baselines and the loop itself live in mgd.outer.*).
from mgd.outer import LRSearchResult as LRSearchResult
from mgd.outer import MetaStep as MetaStep
from mgd.outer import PoisonReport as PoisonReport
from mgd.outer import PoisonResult as PoisonResult
from mgd.outer import Replay as Replay
from mgd.outer import SelectionReport as SelectionReport
from mgd.outer import SelectionResult as SelectionResult
from mgd.outer import evaluate_poisons as evaluate_poisons
from mgd.outer import evaluate_selection as evaluate_selection
from mgd.outer import poison_attack as poison_attack
from mgd.outer import search_lr_schedule as search_lr_schedule
from mgd.outer import select_data as select_data
from mgd.outer.lr import PiecewiseLinearSchedule as PiecewiseLinearSchedule

# Smooth training.
from mgd.train import Dataset as Dataset
from mgd.train import MetaSpec as MetaSpec
from mgd.train import TrainingSetup as TrainingSetup
from mgd.train import TrainState as TrainState
from mgd.train import load_cifar10 as load_cifar10
from mgd.train import load_digits as load_digits
from mgd.train import load_fashion_mnist as load_fashion_mnist
from mgd.train import load_npz as load_npz
from mgd.train import make_mesh as make_mesh
from mgd.train import make_synthetic as make_synthetic

__version__ = "0.1.0"
