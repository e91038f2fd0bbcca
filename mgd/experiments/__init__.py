"""Experiments: a typed config, ``run(config, out, resume) -> result`` and the files it writes.

One module per application (:mod:`mgd.experiments.select`, :mod:`mgd.experiments.lr`,
:mod:`mgd.experiments.poison`); the data, training and replay sections and
:func:`setup_from_config` are shared. The ``mgd`` command, the scripts, the notebooks and the
tests all run experiments through these.
"""

from mgd.experiments._common import DataConfig as DataConfig
from mgd.experiments._common import InputError as InputError
from mgd.experiments._common import OptimizerConfig as OptimizerConfig
from mgd.experiments._common import ReplayConfig as ReplayConfig
from mgd.experiments._common import TrainConfig as TrainConfig
from mgd.experiments._common import load_data as load_data
from mgd.experiments._common import read_config as read_config
from mgd.experiments._common import setup_from_config as setup_from_config
