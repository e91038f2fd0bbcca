"""Smooth training: a training recipe as pure, differentiable functions of its metaparameters.

``TrainingSetup`` turns model + optimizer + data + batch order + per-example loss into the
``step_fn`` / ``objective_fn`` / ``init_state`` that ``mgd.metagradient`` differentiates;
``MetaSpec`` switches metaparameters on; ``models`` holds ready networks (``loop_friendly_conv``
keeps their convolutions fast inside compiled loops on the CPU); the loaders build validated
``Dataset``s (class labels, regression targets, or byte-token windows of documents grouped by
document: ``load_fortunes``, ``load_documents``, ``token_windows``, ``text_dataset``);
``softmax_cross_entropy``, ``next_token_loss``, ``squared_error``, ``accuracy`` and
``absolute_error`` are the built-in losses and metrics.
"""

from mgd.train import models as models
from mgd.train._adam import adam as adam
from mgd.train._adam import scale_by_adam as scale_by_adam
from mgd.train._augment import Augment as Augment
from mgd.train._conv import loop_friendly_conv as loop_friendly_conv
from mgd.train._data import Dataset as Dataset
from mgd.train._data import load_cifar10 as load_cifar10
from mgd.train._data import load_digits as load_digits
from mgd.train._data import load_fashion_mnist as load_fashion_mnist
from mgd.train._data import load_npz as load_npz
from mgd.train._data import make_synthetic as make_synthetic
from mgd.train._losses import absolute_error as absolute_error
from mgd.train._losses import accuracy as accuracy
from mgd.train._losses import next_token_loss as next_token_loss
from mgd.train._losses import softmax_cross_entropy as softmax_cross_entropy
from mgd.train._losses import squared_error as squared_error
from mgd.train._meta import MetaSpec as MetaSpec
from mgd.train._metasmooth import MetasmoothnessResult as MetasmoothnessResult
from mgd.train._metasmooth import metasmoothness as metasmoothness
from mgd.train._metasmooth import sign_agreement as sign_agreement
from mgd.train._model_fns import ModelFns as ModelFns
from mgd.train._model_fns import model_fns as model_fns
from mgd.train._optim import make_optimizer as make_optimizer
from mgd.train._retrain import retrain_and_evaluate as retrain_and_evaluate
from mgd.train._setup import TrainingSetup as TrainingSetup
from mgd.train._setup import TrainState as TrainState
from mgd.train._sharding import make_mesh as make_mesh
from mgd.train._text import BOS as BOS
from mgd.train._text import Documents as Documents
from mgd.train._text import TextData as TextData
from mgd.train._text import load_documents as load_documents
from mgd.train._text import load_fortunes as load_fortunes
from mgd.train._text import text_dataset as text_dataset
from mgd.train._text import token_windows as token_windows
