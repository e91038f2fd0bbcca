"""Outer optimizers: metagradient descent on training metaparameters (data, schedules, inputs)."""

from mgd.outer.checkpointing import OuterCheckpointer as OuterCheckpointer
from mgd.outer.lr_evaluate import evaluate_schedules as evaluate_schedules
from mgd.outer.lr_grid import GridSchedule as GridSchedule
from mgd.outer.lr_grid import lr_schedule_grid as lr_schedule_grid
from mgd.outer.lr_optimizer import LogLRAdamState as LogLRAdamState
from mgd.outer.lr_optimizer import log_lr_adam as log_lr_adam
from mgd.outer.lr_schedule import PiecewiseLinearSchedule as PiecewiseLinearSchedule
from mgd.outer.lr_search import LRSearchResult as LRSearchResult
from mgd.outer.lr_search import MetaStepRecord as MetaStepRecord
from mgd.outer.lr_search import search_lr_schedule as search_lr_schedule
from mgd.outer.poison import PoisonResult as PoisonResult
from mgd.outer.poison import poison_attack as poison_attack
from mgd.outer.poison_baselines import label_flip_poison as label_flip_poison
from mgd.outer.poison_baselines import random_noise_poison as random_noise_poison
from mgd.outer.poison_eval import PoisonReport as PoisonReport
from mgd.outer.poison_eval import evaluate_poisons as evaluate_poisons
from mgd.outer.poison_eval import plot_poison_report as plot_poison_report
from mgd.outer.poison_eval import plot_poisoned_examples as plot_poisoned_examples
from mgd.outer.poison_experiment import PoisonConfig as PoisonConfig
from mgd.outer.poison_experiment import run_poison_experiment as run_poison_experiment
from mgd.outer.poison_gc import gradient_canceling_poison as gradient_canceling_poison
from mgd.outer.poison_update import poison_ascent as poison_ascent
from mgd.outer.poison_update import project_perturbations as project_perturbations
