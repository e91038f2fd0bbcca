"""Outer optimizers: metagradient descent on training metaparameters (data, schedules, inputs).

One meta-descent loop (:func:`meta_descent`: metagradient, optax-shaped update, history,
checkpoints, fingerprinted resume, progress, callback) and one subpackage per application:
:mod:`mgd.outer.selection`, :mod:`mgd.outer.lr`, :mod:`mgd.outer.poison`.
"""

from mgd.outer import lr as lr
from mgd.outer import poison as poison
from mgd.outer import selection as selection
from mgd.outer._loop import LoopResult as LoopResult
from mgd.outer._loop import MetaStep as MetaStep
from mgd.outer._loop import Replay as Replay
from mgd.outer._loop import ResumeError as ResumeError
from mgd.outer._loop import meta_descent as meta_descent
from mgd.outer._loop import setup_fingerprint as setup_fingerprint
from mgd.outer.checkpointing import OuterCheckpointer as OuterCheckpointer
from mgd.outer.lr import LRSearchResult as LRSearchResult
from mgd.outer.lr import search_lr_schedule as search_lr_schedule
from mgd.outer.poison import PoisonReport as PoisonReport
from mgd.outer.poison import PoisonResult as PoisonResult
from mgd.outer.poison import evaluate_poisons as evaluate_poisons
from mgd.outer.poison import poison_attack as poison_attack
from mgd.outer.selection import SelectionReport as SelectionReport
from mgd.outer.selection import SelectionResult as SelectionResult
from mgd.outer.selection import evaluate_selection as evaluate_selection
from mgd.outer.selection import select_data as select_data
