"""Baselines for choosing documents for a target domain: DSIR and the domain-label oracle.

Both pick whole documents of a candidate pool, the selection unit of a language-model
``mgd.train.text_dataset`` (one data weight per document), so their indices compare directly
with :func:`mgd.select_data`'s.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

from mgd.outer.selection._baselines import BaselineSelection

__all__ = ["hashed_ngram_features", "dsir_selection", "domain_oracle_selection"]

_WORD = re.compile(r"\w+")


def _check_size(where: str, size: int, n: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not 1 <= size <= n:
        raise ValueError(f"{where}: size must be an int in [1, {n}] (the pool), got {size!r}")


def _take(where: str, ranked: np.ndarray, size, budget_bytes, num_bytes) -> np.ndarray:
    # The first `size` candidates of a ranking, or the first ones whose bytes fill
    # `budget_bytes` (the last one may cross it, so the budget is never left unfilled).
    if (size is None) == (budget_bytes is None):
        raise ValueError(f"{where}: pass exactly one of size= and budget_bytes=")
    if size is not None:
        _check_size(where, size, ranked.size)
        return np.sort(ranked[:size]).astype(np.int64)
    sizes = np.asarray(num_bytes, np.int64)
    if sizes.shape != ranked.shape:
        raise ValueError(f"{where}: num_bytes must give one length per candidate")
    if not 0 < budget_bytes <= sizes.sum():
        raise ValueError(
            f"{where}: budget_bytes must lie in (0, {sizes.sum()}] (the pool's bytes), got "
            f"{budget_bytes}"
        )
    filled = np.cumsum(sizes[ranked])
    count = int(np.searchsorted(filled, budget_bytes)) + 1
    return np.sort(ranked[:count]).astype(np.int64)


def hashed_ngram_features(texts: Sequence[bytes], num_buckets: int = 10_000) -> np.ndarray:
    """Counts of hashed word unigrams and bigrams per document (DSIR's feature space).

    Text is decoded as UTF-8 (undecodable bytes become U+FFFD, so any bytes are accepted),
    lower-cased and split into words (``\\w+``); each word and each pair of consecutive words
    is hashed (CRC-32, the same in every process) into one of ``num_buckets`` buckets.

    Args:
      texts: the documents' bytes, ``n`` of them.
      num_buckets: number of hash buckets, >= 1.

    Returns:
      float64 ``(n, num_buckets)`` counts.

    Raises:
      ValueError: ``num_buckets < 1``.
    """
    if num_buckets < 1:
        raise ValueError(f"hashed_ngram_features: num_buckets must be >= 1, got {num_buckets}")
    features = np.zeros((len(texts), num_buckets))
    for i, text in enumerate(texts):
        words = _WORD.findall(bytes(text).decode("utf-8", "replace").lower())
        grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
        buckets = [zlib.crc32(g.encode()) % num_buckets for g in grams]
        np.add.at(features[i], buckets, 1.0)
    return features


def dsir_selection(
    pool: Sequence[bytes],
    target: Sequence[bytes],
    size: int | None = None,
    *,
    budget_bytes: int | None = None,
    num_buckets: int = 10_000,
    smoothing: float = 1.0,
    seed: int = 0,
) -> BaselineSelection:
    """DSIR: importance resampling of the pool towards the target in hashed n-gram space.

    Two bag-of-n-grams models over :func:`hashed_ngram_features` are fitted, one on the target
    documents and one on the raw pool (bucket frequencies with ``smoothing`` added to every
    count). A document's log importance weight is ``sum_j c_j (log p_target[j] - log p_raw[j])``
    over its n-gram counts ``c``; documents are resampled without replacement with
    probabilities proportional to the weights, by the Gumbel top-k trick (in decreasing order
    of ``log w_i + G_i``, ``G_i`` standard Gumbel), until ``size`` documents or
    ``budget_bytes`` bytes are taken (DSIR's token budget; the last document may cross it).

    Args:
      pool: the candidate documents' bytes, ``n`` of them.
      target: documents of the target domain (e.g. the validation split's).
      size: documents to select, in ``[1, n]``; or
      budget_bytes: bytes to select, in ``(0, total bytes of the pool]`` (give exactly one).
      num_buckets: hash buckets of the features.
      smoothing: pseudo-count of every bucket, > 0.
      seed: seed of the Gumbel noise.

    Returns:
      A :class:`BaselineSelection` named ``"dsir"``, ``scores`` = the log importance weights
      (float64 ``(n,)``; larger is more target-like).

    Raises:
      ValueError: ``size`` or ``budget_bytes`` out of range or both given, no target documents,
        or ``smoothing <= 0``.

    References:
      Xie, Santurkar, Ma, Liang. "Data Selection for Language Models via Importance
      Resampling", NeurIPS 2023.
    """
    if not len(target):
        raise ValueError("dsir_selection: target is empty; give documents of the target domain")
    if not smoothing > 0:
        raise ValueError(f"dsir_selection: smoothing must be > 0, got {smoothing}")
    raw = hashed_ngram_features(pool, num_buckets)
    tgt = hashed_ngram_features(target, num_buckets)

    def log_probs(counts):
        totals = counts.sum(axis=0) + smoothing
        return np.log(totals / totals.sum())

    log_weights = raw @ (log_probs(tgt) - log_probs(raw))
    gumbel = np.random.default_rng(seed).gumbel(size=len(pool))
    ranked = np.argsort(-(log_weights + gumbel), kind="stable")
    sizes = [len(t) for t in pool]
    chosen = _take("dsir_selection", ranked, size, budget_bytes, sizes)
    return BaselineSelection("dsir", chosen, log_weights)


def domain_oracle_selection(
    in_domain,
    size: int | None = None,
    *,
    budget_bytes: int | None = None,
    num_bytes=None,
    seed: int = 0,
) -> BaselineSelection:
    """The domain-label oracle: the pool's documents of the target domain first.

    What a user with domain labels would do: take the candidates labelled with the target
    domain (in random order), then random others, until ``size`` documents or
    ``budget_bytes`` bytes are taken.

    Args:
      in_domain: bool ``(n,)``, whether each candidate is of the target domain (e.g.
        ``pool.in_domain("es")`` of a ``mgd.train.TextData``).
      size: documents to select, in ``[1, n]``; or
      budget_bytes: bytes to select (give exactly one), with
      num_bytes: int ``(n,)``, each candidate's length in bytes (``Documents.num_bytes``).
      seed: seed of the random order within each group.

    Returns:
      A :class:`BaselineSelection` named ``"domain_oracle"``, ``scores`` = 0 for in-domain
      candidates and 1 for the others.

    Raises:
      ValueError: ``size`` or ``budget_bytes`` out of range or both given, or ``in_domain``
        not a 1-D bool array.
    """
    mask = np.asarray(in_domain)
    if mask.ndim != 1 or mask.dtype != bool:
        raise ValueError(
            f"domain_oracle_selection: in_domain must be a 1-D bool array, got {mask.shape} "
            f"{mask.dtype}"
        )
    order = np.random.default_rng(seed).permutation(mask.size)
    ranked = np.concatenate([order[mask[order]], order[~mask[order]]])
    chosen = _take("domain_oracle_selection", ranked, size, budget_bytes, num_bytes)
    return BaselineSelection("domain_oracle", chosen, (~mask).astype(np.float64))
