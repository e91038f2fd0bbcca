"""Data poisoning: metagradient ascent on training-input perturbations, its baselines, evaluation.

The update rule (``poison_ascent``: projected signed ascent, an optax transformation), the
attack :func:`poison_attack` on the shared meta-descent loop, the baselines (random noise, label
flipping, Gradient Canceling) on the same examples and budget, and the evaluation on victims
trained from scratch with unseen seeds.
"""

from mgd.outer.poison._attack import PoisonResult as PoisonResult
from mgd.outer.poison._attack import apply_perturbations as apply_perturbations
from mgd.outer.poison._attack import choose_poison_indices as choose_poison_indices
from mgd.outer.poison._attack import influential_poison_indices as influential_poison_indices
from mgd.outer.poison._attack import other_class_start as other_class_start
from mgd.outer.poison._attack import poison_attack as poison_attack
from mgd.outer.poison._baselines import label_flip_poison as label_flip_poison
from mgd.outer.poison._baselines import random_noise_poison as random_noise_poison
from mgd.outer.poison._evaluate import AttackAccuracy as AttackAccuracy
from mgd.outer.poison._evaluate import PoisonReport as PoisonReport
from mgd.outer.poison._evaluate import evaluate_poisons as evaluate_poisons
from mgd.outer.poison._evaluate import plot_poison_report as plot_poison_report
from mgd.outer.poison._evaluate import plot_poisoned_examples as plot_poisoned_examples
from mgd.outer.poison._gc import gradient_canceling_poison as gradient_canceling_poison
from mgd.outer.poison._update import PoisonAscentState as PoisonAscentState
from mgd.outer.poison._update import poison_ascent as poison_ascent
from mgd.outer.poison._update import project_perturbations as project_perturbations
