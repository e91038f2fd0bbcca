"""Dataset selection: metagradient descent on per-example data weights.

Update rules (optax-shaped ``(init, update)`` pairs), the search :func:`select_data` on the
shared meta-descent loop, the baselines against noisy labels (:func:`small_loss_selection`,
:func:`el2n_selection`), the baselines for a target domain of documents
(:func:`dsir_selection`, :func:`domain_oracle_selection`) and the honest evaluation
:func:`evaluate_selection`.
"""

from mgd.outer.selection._baselines import BaselineSelection as BaselineSelection
from mgd.outer.selection._baselines import el2n_selection as el2n_selection
from mgd.outer.selection._baselines import small_loss_selection as small_loss_selection
from mgd.outer.selection._evaluate import SelectionReport as SelectionReport
from mgd.outer.selection._evaluate import SubsetAccuracy as SubsetAccuracy
from mgd.outer.selection._evaluate import evaluate_selection as evaluate_selection
from mgd.outer.selection._search import SelectionResult as SelectionResult
from mgd.outer.selection._search import retrained_loss as retrained_loss
from mgd.outer.selection._search import select_data as select_data
from mgd.outer.selection._text_baselines import domain_oracle_selection as domain_oracle_selection
from mgd.outer.selection._text_baselines import dsir_selection as dsir_selection
from mgd.outer.selection._text_baselines import hashed_ngram_features as hashed_ngram_features
from mgd.outer.selection._update import BudgetExchangeState as BudgetExchangeState
from mgd.outer.selection._update import CountDescentState as CountDescentState
from mgd.outer.selection._update import SelectionOptimizer as SelectionOptimizer
from mgd.outer.selection._update import budget_exchange as budget_exchange
from mgd.outer.selection._update import count_descent as count_descent
from mgd.outer.selection._update import subset_weights as subset_weights
from mgd.outer.selection._update import top_k_subset as top_k_subset
