"""Concept vocabularies of SSIR: single concepts V and multi-concepts V* (paper eqs. 1-2).

V is the list of single concepts (labels seen in at least ``min_count`` training images).
V* holds every concept set ``C`` with ``1 <= |C| <= t`` (eq. 1) whose concepts co-occur in
at least ``s`` training images (eq. 2). It contains the frequent single concepts too: the
paper's multi-concept head treats ``|C| = 1`` as an ordinary concept and ``|C| > 1`` as a
scene learned as a whole.

V* is mined level-wise (Apriori): size-``k+1`` candidates join two frequent size-``k`` sets
that share their first ``k-1`` concepts, are dropped unless every size-``k`` subset is
frequent, and are counted on bit-packed image sets (one bit per training image). The
vocabulary is never enumerated.

Concept sets are sorted tuples of concept indices into V. Per-image concept sets are given
either as a list of iterables of concept indices or as an ``(n, C)`` 0/1 matrix.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbir.errors import InvalidRequest

FORMAT = "cbir.concept_vocabulary"
VERSION = 1

Itemset = tuple[int, ...]
ConceptSets = np.ndarray | Sequence[Iterable[int]]

__all__ = [
    "ConceptVocabulary",
    "ConceptSets",
    "column_bits",
    "Itemset",
    "frequent_itemsets",
    "itemset_bits",
    "popcount",
    "to_concept_matrix",
]

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(bits: np.ndarray) -> np.ndarray:
    """Set bits per row of a packed ``(..., nbytes)`` uint8 array -> ``(...)`` int64."""
    counts = np.bitwise_count(bits) if hasattr(np, "bitwise_count") else _POPCOUNT8[bits]
    return counts.sum(axis=-1, dtype=np.int64)


def to_concept_matrix(sets: ConceptSets, n_concepts: int) -> np.ndarray:
    """Per-image concept sets -> ``(n, n_concepts)`` bool matrix.

    sets: an ``(n, n_concepts)`` 0/1 (or bool) array, or a list of ``n`` iterables of
    concept indices in ``[0, n_concepts)``.
    """
    if isinstance(sets, np.ndarray):
        if sets.ndim != 2 or sets.shape[1] != n_concepts:
            raise InvalidRequest(f"concept matrix has shape {sets.shape}; expected (n, {n_concepts})")
        if sets.dtype != bool and not np.isin(sets, (0, 1)).all():
            raise InvalidRequest("concept matrix must hold only 0 and 1")
        return sets.astype(bool, copy=False)
    out = np.zeros((len(sets), n_concepts), dtype=bool)
    for i, items in enumerate(sets):
        idx = np.fromiter((int(c) for c in items), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n_concepts):
            raise InvalidRequest(f"image {i}: concept index out of range [0, {n_concepts})")
        out[i, idx] = True
    return out


def column_bits(matrix: np.ndarray) -> np.ndarray:
    """``(n, C)`` bool -> ``(C, ceil(n / 8))`` uint8: bit ``i`` of row ``c`` = image ``i`` has ``c``."""
    return np.packbits(np.ascontiguousarray(matrix.T), axis=1)


def itemset_bits(concept_bits: np.ndarray, itemsets: Sequence[Itemset], chunk: int = 4096) -> np.ndarray:
    """Images containing each itemset, bit-packed.

    concept_bits: ``(C, nbytes)`` uint8 from ``np.packbits(matrix.T, axis=1)``.
    Returns ``(len(itemsets), nbytes)`` uint8, the AND of the itemset's concept rows.
    """
    nbytes = concept_bits.shape[1]
    out = np.empty((len(itemsets), nbytes), dtype=np.uint8)
    by_size: dict[int, list[int]] = {}
    for j, s in enumerate(itemsets):
        by_size.setdefault(len(s), []).append(j)
    for size, rows in by_size.items():
        rows_arr = np.asarray(rows, dtype=np.int64)
        if size == 0:
            out[rows_arr] = 0xFF  # padding bits beyond n are irrelevant: callers AND with real sets
            continue
        items = np.asarray([itemsets[j] for j in rows], dtype=np.int64)
        for lo in range(0, len(rows), chunk):
            part = concept_bits[items[lo : lo + chunk]]  # (m, size, nbytes)
            out[rows_arr[lo : lo + chunk]] = np.bitwise_and.reduce(part, axis=1)
    return out


def frequent_itemsets(
    matrix: np.ndarray, min_support: int, max_size: int | None = None
) -> tuple[list[Itemset], np.ndarray]:
    """All concept sets of size ``1..max_size`` in at least ``min_support`` images (Apriori).

    matrix: ``(n, C)`` bool. Returns the itemsets (sorted tuples, ordered by size then
    lexicographically) and their supports, ``(len,)`` int64.
    """
    if min_support < 1:
        raise InvalidRequest(f"min_support must be >= 1, got {min_support}")
    if max_size is not None and max_size < 1:
        raise InvalidRequest(f"max_size must be >= 1 or None, got {max_size}")
    bits = column_bits(matrix)
    single = popcount(bits)
    level = [(int(c),) for c in np.flatnonzero(single >= min_support)]
    level_bits = bits[[s[0] for s in level]] if level else np.zeros((0, bits.shape[1]), np.uint8)
    itemsets: list[Itemset] = list(level)
    supports: list[int] = [int(single[s[0]]) for s in level]
    size = 1
    while level and (max_size is None or size < max_size):
        frequent = set(level)
        nxt: list[Itemset] = []
        nxt_bits: list[np.ndarray] = []
        nxt_support: list[int] = []
        start = 0
        while start < len(level):  # groups of sets sharing their first size-1 concepts
            stop = start + 1
            while stop < len(level) and level[stop][:-1] == level[start][:-1]:
                stop += 1
            for a in range(start, stop - 1):
                base = level[a]
                lasts = [
                    level[b][-1]
                    for b in range(a + 1, stop)
                    if all(base[:i] + base[i + 1 :] + (level[b][-1],) in frequent for i in range(size - 1))
                ]
                if not lasts:
                    continue
                cand_bits = level_bits[a][None, :] & bits[lasts]  # (m, nbytes)
                counts = popcount(cand_bits)
                for last, cb, n in zip(lasts, cand_bits, counts, strict=True):
                    if n >= min_support:
                        nxt.append(base + (last,))
                        nxt_bits.append(cb)
                        nxt_support.append(int(n))
            start = stop
        level = nxt
        level_bits = np.stack(nxt_bits) if nxt_bits else np.zeros((0, bits.shape[1]), np.uint8)
        itemsets.extend(level)
        supports.extend(nxt_support)
        size += 1
    return itemsets, np.asarray(supports, dtype=np.int64)


@dataclass
class ConceptVocabulary:
    """Single concepts V (names, image counts) and multi-concepts V* (itemsets, supports).

    Build with :meth:`from_labels` or :meth:`from_matrix`; indices are positions in
    ``concepts`` (for V) and in ``itemsets`` (for V*).
    """

    concepts: list[str]
    concept_counts: np.ndarray  # (C,) int64, training images per concept
    itemsets: list[Itemset]  # V*, sorted tuples of concept indices
    supports: np.ndarray  # (M,) int64, N_r(C) on the training images (eq. 2)
    n_images: int
    min_count: int = 1
    max_size: int | None = None
    min_support: int = 1
    _concept_index: dict[str, int] = field(init=False, repr=False)
    _itemset_index: dict[Itemset, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.concept_counts = np.asarray(self.concept_counts, dtype=np.int64)
        self.supports = np.asarray(self.supports, dtype=np.int64)
        self.itemsets = [tuple(int(c) for c in s) for s in self.itemsets]
        self._concept_index = {name: i for i, name in enumerate(self.concepts)}
        self._itemset_index = {s: j for j, s in enumerate(self.itemsets)}
        if len(self._concept_index) != len(self.concepts):
            raise InvalidRequest("concept names must be unique")
        if len(self.concept_counts) != len(self.concepts) or len(self.supports) != len(self.itemsets):
            raise InvalidRequest("counts and supports must match concepts and itemsets in length")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_labels(
        cls,
        labels: Sequence[Iterable[str]],
        *,
        min_count: int = 1,
        max_size: int | None = 4,
        min_support: int = 2,
        concepts: Sequence[str] | None = None,
    ) -> ConceptVocabulary:
        """Build V and V* from per-image label lists (duplicates within an image count once).

        V: labels in at least ``min_count`` images, sorted by name (or ``concepts``, kept in
        the given order). V*: eqs. 1-2 with ``t = max_size`` (None: no bound) and
        ``s = min_support``. The paper uses t = 11, s = 200 on 8,000 MIR Flickr images.
        """
        label_sets = [set(x) for x in labels]
        counts = Counter(c for s in label_sets for c in s)
        if concepts is None:
            names = sorted(c for c, k in counts.items() if k >= min_count)
        else:
            names = [c for c in concepts if counts.get(c, 0) >= min_count]
        index = {c: i for i, c in enumerate(names)}
        matrix = np.zeros((len(label_sets), len(names)), dtype=bool)
        for i, s in enumerate(label_sets):
            matrix[i, [index[c] for c in s if c in index]] = True
        return cls.from_matrix(matrix, names, max_size=max_size, min_support=min_support, min_count=min_count)

    @classmethod
    def from_matrix(
        cls,
        matrix: np.ndarray,
        concepts: Sequence[str],
        *,
        max_size: int | None = 4,
        min_support: int = 2,
        min_count: int = 1,
    ) -> ConceptVocabulary:
        """Build from an ``(n, C)`` 0/1 training matrix whose columns are ``concepts``."""
        matrix = to_concept_matrix(matrix, len(concepts))
        itemsets, supports = frequent_itemsets(matrix, min_support, max_size)
        return cls(
            concepts=list(concepts),
            concept_counts=matrix.sum(axis=0, dtype=np.int64),
            itemsets=itemsets,
            supports=supports,
            n_images=int(matrix.shape[0]),
            min_count=min_count,
            max_size=max_size,
            min_support=min_support,
        )

    # -- lookups --------------------------------------------------------------------------
    @property
    def n_concepts(self) -> int:
        """|V|, the width C of single-concept posteriors."""
        return len(self.concepts)

    @property
    def n_itemsets(self) -> int:
        """|V*|, the width M of multi-concept posteriors."""
        return len(self.itemsets)

    def concept_index(self, name: str) -> int:
        """Index of a concept name in V; unknown names raise InvalidRequest."""
        try:
            return self._concept_index[name]
        except KeyError:
            raise InvalidRequest(f"unknown concept {name!r} (not among the {len(self.concepts)})") from None

    def query(self, concepts: Iterable[str | int]) -> Itemset:
        """A query (names or indices into V) as a sorted tuple of unique concept indices."""
        out: set[int] = set()
        for c in concepts:
            if isinstance(c, str):
                out.add(self.concept_index(c))
            else:
                i = int(c)
                if not 0 <= i < self.n_concepts:
                    raise InvalidRequest(f"concept index {i} out of range [0, {self.n_concepts})")
                out.add(i)
        if not out:
            raise InvalidRequest("a query needs at least one concept")
        return tuple(sorted(out))

    def itemset_index(self, itemset: Iterable[int]) -> int | None:
        """Index of a concept set in V*, or None when it is not in V*."""
        return self._itemset_index.get(tuple(sorted(int(c) for c in itemset)))

    def names(self, itemset: Iterable[int]) -> list[str]:
        """Concept names of a concept set."""
        return [self.concepts[c] for c in itemset]

    def encode(self, labels: Sequence[Iterable[str]]) -> np.ndarray:
        """Per-image label lists -> ``(n, C)`` bool; labels outside V are ignored."""
        out = np.zeros((len(labels), self.n_concepts), dtype=bool)
        for i, s in enumerate(labels):
            out[i, [self._concept_index[c] for c in s if c in self._concept_index]] = True
        return out

    def itemset_targets(self, sets: ConceptSets) -> np.ndarray:
        """``(n, M)`` uint8: 1 where the image holds every concept of the V* entry.

        The 0/1 targets ``p_ij`` of the multi-concept head (eq. 4).
        """
        matrix = to_concept_matrix(sets, self.n_concepts)
        bits = itemset_bits(column_bits(matrix), self.itemsets)
        return np.unpackbits(bits, axis=1, count=matrix.shape[0]).T.copy()

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready description (format name and version included)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "concepts": list(self.concepts),
            "concept_counts": self.concept_counts.tolist(),
            "itemsets": [list(s) for s in self.itemsets],
            "supports": self.supports.tolist(),
            "n_images": self.n_images,
            "min_count": self.min_count,
            "max_size": self.max_size,
            "min_support": self.min_support,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ConceptVocabulary:
        """Inverse of :meth:`to_dict`; refuses other formats and newer versions."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InvalidRequest(f"not a concept vocabulary (expected format {FORMAT!r})")
        if data.get("version") != VERSION:
            found = data.get("version")
            raise InvalidRequest(f"concept vocabulary version {found!r}; this cbir reads version {VERSION}")
        try:
            return cls(
                concepts=[str(c) for c in data["concepts"]],
                concept_counts=np.asarray(data["concept_counts"], dtype=np.int64),
                itemsets=[tuple(s) for s in data["itemsets"]],
                supports=np.asarray(data["supports"], dtype=np.int64),
                n_images=int(data["n_images"]),
                min_count=int(data["min_count"]),
                max_size=None if data["max_size"] is None else int(data["max_size"]),
                min_support=int(data["min_support"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidRequest(f"malformed concept vocabulary: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (temporary file, then rename)."""
        from cbir.atomic import atomic_open

        with atomic_open(Path(path), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConceptVocabulary:
        """Read a file written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise InvalidRequest(f"{path}: cannot read concept vocabulary: {e}") from None
        return cls.from_dict(data)
