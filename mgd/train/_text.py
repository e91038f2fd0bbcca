"""Text: document collections, byte-level token windows and language-model datasets.

A document collection (:class:`Documents`) is raw bytes with a domain per document, read from
files of ``%``-separated entries (the fortune-cookie format) or one document per file
(:func:`load_documents`, :func:`load_fortunes`). :func:`token_windows` cuts documents into
fixed-length windows of byte tokens, each knowing its document; :func:`text_dataset` builds a
candidate pool of several domains and a target domain's held-out documents as an
``mgd.Dataset`` whose groups are the pool's documents, so data weights are one per document.
Bytes are never decoded: text in any encoding, or none, is read as it is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mgd.train._data import Dataset

__all__ = [
    "BOS",
    "Documents",
    "load_documents",
    "load_fortunes",
    "token_windows",
    "TextData",
    "text_dataset",
]

BOS = 256
"""The beginning-of-document token: the input before a document's first byte (ids 0-255 are
bytes), so every byte of a document is predicted, the first one from this token alone."""

FORTUNES_ROOT = "/usr/share/games/fortunes"
# Where Debian's fortune packages put each language, and the package to install.
_FORTUNE_LANGUAGES = {
    "en": ("", "fortunes"),
    "de": ("de", "fortunes-de"),
    "es": ("es", "fortunes-es"),
    "it": ("it", "fortunes-it"),
    "pl": ("pl", "fortunes-pl"),
    "cs": ("cs", "fortunes-cs"),
    "ru": ("ru", "fortunes-ru"),
}
# Index files next to the fortune files, and the offensive-content collections left out.
_SKIP_SUFFIXES = (".dat", ".u8")
_SKIP_DIRS = ("off",)


@dataclasses.dataclass(frozen=True, eq=False)
class Documents:
    """Documents as raw bytes, each with a domain such as ``"en/computers"`` or ``"es/ciencia"``.

    Attributes:
      texts: the documents' bytes, none empty.
      domains: the domain of each document, same length as ``texts``.
    """

    texts: tuple[bytes, ...]
    domains: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "texts", tuple(bytes(t) for t in self.texts))
        object.__setattr__(self, "domains", tuple(str(d) for d in self.domains))
        if len(self.texts) != len(self.domains):
            raise ValueError(
                f"Documents: {len(self.texts)} texts but {len(self.domains)} domains; give one "
                "domain per document"
            )
        empty = [i for i, t in enumerate(self.texts) if not t]
        if empty:
            raise ValueError(
                f"Documents: document {empty[0]} is empty ({len(empty)} in all); drop empty "
                "documents (the loaders do)"
            )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_bytes(self) -> np.ndarray:
        """int64 ``(n,)``: the length of each document in bytes (= byte tokens)."""
        return np.array([len(t) for t in self.texts], np.int64)

    @property
    def domain_names(self) -> tuple[str, ...]:
        """The distinct domains, sorted."""
        return tuple(sorted(set(self.domains)))

    def in_domain(self, domain: str) -> np.ndarray:
        """bool ``(n,)``: documents of ``domain`` or a subdomain (``"es"`` holds ``"es/arte"``)."""
        return np.array([d == domain or d.startswith(domain + "/") for d in self.domains], bool)

    def subset(self, indices) -> Documents:
        """The documents at ``indices`` (int array ``(k,)``), in that order."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        return Documents(tuple(self.texts[i] for i in idx), tuple(self.domains[i] for i in idx))


def _split_entries(raw: bytes, separator: str | None) -> list[bytes]:
    # Entries are separated by lines holding only the separator; surrounding blank lines and
    # spaces are not part of a document, and entries left empty are dropped.
    if separator is None:
        entries = [raw]
    else:
        sep = separator.encode()
        entries, current = [], []
        for line in raw.split(b"\n"):
            if line.rstrip(b"\r") == sep:
                entries.append(b"\n".join(current))
                current = []
            else:
                current.append(line)
        entries.append(b"\n".join(current))
    return [e.strip() for e in entries if e.strip()]


def _files(root: Path, recursive: bool) -> list[Path]:
    # Regular files of a folder (sorted), without symlinks, index files, hidden files and
    # the off/ collections; subfolders only with recursive.
    found = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or path.is_symlink():
            continue
        if path.is_dir():
            if recursive and path.name not in _SKIP_DIRS:
                found.extend(_files(path, recursive))
        elif path.is_file() and not path.name.endswith(_SKIP_SUFFIXES):
            found.append(path)
    return found


def load_documents(
    sources: Mapping[str, str | Path],
    *,
    separator: str | None = "%",
    recursive: bool = False,
    missing_hint: Mapping[str, str] | None = None,
) -> Documents:
    """Reads document collections: files of separated entries, or one document per file.

    Each source is a file or a folder. A folder contributes its regular files, sorted by name;
    symlinks, hidden files, ``.dat``/``.u8`` index files and ``off/`` folders (Debian's
    offensive-content collections) are skipped, and subfolders are read only with
    ``recursive``. A file is cut into documents at lines holding only ``separator`` (``None``:
    the whole file is one document); blank space around a document is trimmed and empty ones
    are dropped. Bytes are kept as they are (no decoding, so non-UTF-8 text is read, not
    refused). A document's domain is ``"<source name>/<file name up to its first dot>"``, with
    the subfolder path for recursive reads: ``"en/computers"``, ``"es/ciencia"``.

    Args:
      sources: ``{name: file or folder}``, e.g. ``{"en": "/usr/share/games/fortunes"}``.
      separator: the line between entries; ``None`` for one document per file.
      recursive: read subfolders too (``off/`` never).
      missing_hint: ``{name: how to get it}``, appended to the error for a missing source.

    Returns:
      :class:`Documents` in source, file and entry order.

    Raises:
      ValueError: a source that does not exist, or a collection without any document.

    Example:
      >>> docs = load_documents({"notes": "my_notes/"}, separator=None)  # doctest: +SKIP
    """
    if not sources:
        raise ValueError("load_documents: sources is empty; give {name: file or folder}")
    texts: list[bytes] = []
    domains: list[str] = []
    for name, location in sources.items():
        root = Path(location)
        if not root.exists():
            hint = (missing_hint or {}).get(name, "")
            raise ValueError(
                f"document source {name!r} not found: {str(root)!r} does not exist"
                + (f"; {hint}" if hint else "; pass an existing file or folder")
            )
        files = [root] if root.is_file() else _files(root, recursive)
        for file in files:
            stem = file.name.split(".")[0]
            category = stem if file == root else file.relative_to(root).with_name(stem).as_posix()
            for entry in _split_entries(file.read_bytes(), separator):
                texts.append(entry)
                domains.append(f"{name}/{category}")
    if not texts:
        raise ValueError(
            f"load_documents: no document in {', '.join(map(str, sources.values()))}; check the "
            "paths and the separator"
        )
    return Documents(tuple(texts), tuple(domains))


def load_fortunes(
    languages: Sequence[str] = ("en", "de", "es"), *, root=FORTUNES_ROOT
) -> Documents:
    """Debian's fortune-cookie databases: one document per fortune, domain ``"<lang>/<file>"``.

    ``apt-get install fortunes fortunes-de fortunes-es`` (also ``fortunes-it``, ``-pl``,
    ``-cs``, ``-ru``) puts them under ``/usr/share/games/fortunes/`` (English) and its
    language subfolders. The offensive collections (``off/``) are left out.

    Args:
      languages: language codes among ``en, de, es, it, pl, cs, ru``.
      root: the fortunes folder.

    Returns:
      :class:`Documents`, e.g. domains ``"en/computers"``, ``"de/computer"``, ``"es/ciencia"``.

    Raises:
      ValueError: an unknown language, or a language whose files are missing (naming the Debian
        package to install).
    """
    unknown = [lang for lang in languages if lang not in _FORTUNE_LANGUAGES]
    if unknown or not languages:
        raise ValueError(
            f"load_fortunes: unknown language(s) {unknown or languages}; choose from "
            f"{', '.join(_FORTUNE_LANGUAGES)}"
        )
    sources, hints = {}, {}
    for lang in languages:
        sub, package = _FORTUNE_LANGUAGES[lang]
        sources[lang] = Path(root) / sub
        hints[lang] = f"install it with `apt-get install {package}`"
        if Path(root, sub).is_dir() and not _files(Path(root, sub), False):
            raise ValueError(
                f"document source {lang!r} has no fortune files in {str(Path(root, sub))!r}; "
                f"install them with `apt-get install {package}`"
            )
    return load_documents(sources, missing_hint=hints)


def token_windows(
    texts: Sequence[bytes], context: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cuts documents into windows of ``context`` byte tokens for next-token prediction.

    A document of ``m`` bytes is the input sequence ``[BOS, b_0, ..., b_{m-2}]`` with targets
    ``[b_0, ..., b_{m-1}]``, cut into ``ceil(m / context)`` consecutive windows; the last one is
    padded (inputs with 0, targets with ``-1``). Every byte is a target exactly once, so the
    mean cross-entropy per real target is the document's bits (or nats) per byte.

    Args:
      texts: the documents, non-empty byte strings.
      context: tokens per window, >= 1.

    Returns:
      ``(inputs, targets, doc)``: int32 ``(w, context)`` token ids in ``[0, 256]``, int32
      ``(w, context)`` targets in ``[0, 256)`` or ``-1``, and int32 ``(w,)``, the index of
      each window's document.

    Raises:
      ValueError: ``context < 1`` or an empty document.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"token_windows: context must be an int >= 1, got {context!r}")
    xs, ys, docs = [], [], []
    for i, text in enumerate(texts):
        if not text:
            raise ValueError(f"token_windows: document {i} is empty; drop empty documents")
        m = len(text)
        k = math.ceil(m / context)
        target = np.full(k * context, -1, np.int32)
        target[:m] = np.frombuffer(text, np.uint8)
        source = np.zeros(k * context, np.int32)
        source[0] = BOS
        source[1:m] = target[: m - 1]
        xs.append(source.reshape(k, context))
        ys.append(target.reshape(k, context))
        docs.append(np.full(k, i, np.int32))
    if not xs:
        empty = np.zeros((0, context), np.int32)
        return empty, empty.copy(), np.zeros(0, np.int32)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(docs)


class TextData(NamedTuple):
    """A language-model selection problem made by :func:`text_dataset`.

    Attributes:
      data: the ``Dataset``: training pool = windows of the pool's documents, ``groups`` = the
        document of each window (one data weight per pool document); validation (target) and
        test splits = windows of the target domain's held-out documents.
      pool: the candidate documents (group ``i`` is ``pool.texts[i]``).
      target: the target domain's documents of the validation split.
      test: the target domain's held-out test documents (reporting only).
      target_domain: the target domain.
    """

    data: Dataset
    pool: Documents
    target: Documents
    test: Documents
    target_domain: str


def text_dataset(
    docs: Documents,
    *,
    target_domain: str,
    context: int,
    pool_size: int,
    target_in_pool: int,
    num_target: int,
    num_test: int,
    max_bytes: int | None = None,
    seed: int = 0,
) -> TextData:
    """A candidate pool of many domains and held-out documents of one target domain.

    The target domain's documents (those :meth:`Documents.in_domain` finds) are shuffled with
    ``seed``: the first ``num_target`` form the validation (target) split, the next ``num_test``
    the test split, the next ``target_in_pool`` join the pool, which the other domains' documents
    (shuffled) fill up to ``pool_size``; the target domain is under-represented there when
    ``target_in_pool`` is small. Each split is cut into windows by :func:`token_windows`.

    Args:
      docs: the collection.
      target_domain: a domain or domain prefix, e.g. ``"es"`` or ``"en/computers"``.
      context: tokens per window.
      pool_size: documents in the candidate pool.
      target_in_pool: of those, documents of the target domain (at most ``pool_size``).
      num_target: target documents of the validation split (the selection's objective), >= 1.
      num_test: target documents of the held-out test split, >= 1.
      max_bytes: documents longer than this are cut to their first ``max_bytes`` bytes (bounds
        the windows one long document contributes); ``None``: kept whole.
      seed: seed of the shuffles.

    Returns:
      A :class:`TextData`.

    Raises:
      ValueError: a target domain without documents (the domains are listed), too few
        documents for the requested sizes, or a size out of range.
    """
    for name, value in (
        ("pool_size", pool_size),
        ("num_target", num_target),
        ("num_test", num_test),
    ):
        if value < 1:
            raise ValueError(f"text_dataset: {name} must be >= 1, got {value}")
    if not 0 <= target_in_pool <= pool_size:
        raise ValueError(
            f"text_dataset: target_in_pool must lie in [0, pool_size={pool_size}], got "
            f"{target_in_pool}"
        )
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"text_dataset: max_bytes must be >= 1 or None, got {max_bytes}")
    inside = docs.in_domain(target_domain)
    if not inside.any():
        names = sorted({d.split("/")[0] for d in docs.domains})
        raise ValueError(
            f"target domain {target_domain!r} has no documents; choose a language "
            f"({', '.join(names)}) or one of its categories such as {docs.domain_names[0]!r}"
        )
    rng = np.random.default_rng(seed)
    ours = rng.permutation(np.flatnonzero(inside))
    others = rng.permutation(np.flatnonzero(~inside))
    need = num_target + num_test + target_in_pool
    if need > ours.size or pool_size - target_in_pool > others.size:
        raise ValueError(
            f"text_dataset: target domain {target_domain!r} has {ours.size} documents and the "
            f"others {others.size}; the split needs {need} and {pool_size - target_in_pool}: "
            "lower num_target, num_test, target_in_pool or pool_size"
        )
    val_idx = ours[:num_target]
    test_idx = ours[num_target : num_target + num_test]
    pool_idx = rng.permutation(
        np.concatenate([ours[num_target + num_test : need], others[: pool_size - target_in_pool]])
    )

    def part(idx):
        sub = docs.subset(idx)
        if max_bytes is None:
            return sub
        return Documents(tuple(t[:max_bytes] for t in sub.texts), sub.domains)

    pool, target, test = part(pool_idx), part(val_idx), part(test_idx)
    x, y, group = token_windows(pool.texts, context)
    xv, yv, _ = token_windows(target.texts, context)
    xt, yt, _ = token_windows(test.texts, context)
    data = Dataset(x, y, xv, yv, xt, yt, num_classes=256, x_range=(0.0, float(BOS)), groups=group)
    return TextData(data, pool, target, test, target_domain)
