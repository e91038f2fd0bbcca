"""Learning-rate schedule search: metagradient descent on the log rate at a few knots.

The schedule parametrization, its update rule (``log_lr_adam``, an optax transformation), the
search :func:`search_lr_schedule` on the shared meta-descent loop, the grid of hand-designed
schedules it is compared with and their evaluation.
"""

from mgd.outer.lr._evaluate import evaluate_schedules as evaluate_schedules
from mgd.outer.lr._grid import GridSchedule as GridSchedule
from mgd.outer.lr._grid import lr_schedule_grid as lr_schedule_grid
from mgd.outer.lr._schedule import PiecewiseLinearSchedule as PiecewiseLinearSchedule
from mgd.outer.lr._search import LRSearchResult as LRSearchResult
from mgd.outer.lr._search import search_lr_schedule as search_lr_schedule
from mgd.outer.lr._update import LogLRAdamState as LogLRAdamState
from mgd.outer.lr._update import log_lr_adam as log_lr_adam
