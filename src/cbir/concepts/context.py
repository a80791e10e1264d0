"""Semantic query context R_rc(Q) of SSIR (paper section 2.4, eqs. 5-6).

Counts are taken on the training images (the multi-modal training set L):

* ``N(S)``: images holding every concept of the concept set ``S``;
* ``N(Q, C) = N(Q ∪ C)``: images holding every concept of both ``Q`` and ``C``;
* eq. 5: ``p(Q|C) = 2 N(Q, C) / (N(Q) + N(C))`` (a Dice coefficient, symmetric; it is 1
  when ``C = Q`` and ``N(Q) > 0``), for every ``C`` in V*.

How R_rc(Q) is read from the paper (its text is terse, these are the choices made):

* "query parts" are the entries ``C`` of V* with ``C ⊆ Q`` (the query's single concepts
  and its sub-scenes, and ``Q`` itself when ``Q ∈ V*``). All of them are included.
* The paper says R_rc(Q) then holds ``K_rc`` elements, so ``r = K_rc - |parts|`` more are
  taken: the remaining V* entries with the largest ``p(Q|C) > 0`` (the neighbour set R(Q)
  holds only ``p > 0``), ties broken by lower V* index. If the query has more than
  ``K_rc`` parts, all parts are kept and none is added (R_rc is then larger than K_rc).
* Eq. 6 normalises ``p(Q|C)`` over R_rc(Q); entries outside get weight 0.
* Back-off (not in the paper): when ``N(Q) = 0`` (the scene never occurs in training, so
  every ``p(Q|C) = 0`` and eq. 6 is 0/0) the parts share the weight uniformly. A query
  with no part in V* gets an empty context, and r_m = 0 for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cbir.concepts.vocabulary import (
    ConceptSets,
    ConceptVocabulary,
    Itemset,
    column_bits,
    itemset_bits,
    popcount,
    to_concept_matrix,
)
from cbir.errors import InvalidRequest

K_RC = 8  # the paper's best K_rc (cross-validated over 2..20)

__all__ = ["K_RC", "ConceptContext", "QueryContext"]


@dataclass(frozen=True)
class QueryContext:
    """R_rc(Q): V* indices with their eq.-6 weights, parts first then by relatedness.

    indices: ``(K,)`` int64 into V*; weights: ``(K,)`` float64 summing to 1 (or empty);
    relatedness: ``(K,)`` float64, eq.-5 ``p(Q|C)`` before normalisation;
    is_part: ``(K,)`` bool, ``C ⊆ Q``.
    """

    query: Itemset
    indices: np.ndarray
    weights: np.ndarray
    relatedness: np.ndarray
    is_part: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.size)


class ConceptContext:
    """Co-occurrence counts over training images for eqs. 5-6.

    vocabulary: gives V and V*; train: the training images' concept sets (list of sets of
    concept indices, or an ``(n, C)`` 0/1 matrix). Memory: ``(|V| + |V*|) * n / 8`` bytes.
    """

    def __init__(self, vocabulary: ConceptVocabulary, train: ConceptSets):
        self.vocabulary = vocabulary
        matrix = to_concept_matrix(train, vocabulary.n_concepts)
        self.n_images = int(matrix.shape[0])
        self._concept_bits = column_bits(matrix)  # (C, nbytes)
        self._itemset_bits = itemset_bits(self._concept_bits, vocabulary.itemsets)  # (M, nbytes)
        self.itemset_counts = popcount(self._itemset_bits)  # (M,) int64, N(C) for C in V*
        sizes = np.array([len(s) for s in vocabulary.itemsets], dtype=np.int64)
        width = int(sizes.max()) if sizes.size else 0
        pad = vocabulary.n_concepts  # sentinel column, always "in the query"
        self._padded = np.full((len(sizes), width), pad, dtype=np.int64)  # (M, t)
        for j, s in enumerate(vocabulary.itemsets):
            self._padded[j, : len(s)] = s

    def _query_bits(self, query: Itemset) -> np.ndarray:
        if not query:
            raise InvalidRequest("a query needs at least one concept")
        if min(query) < 0 or max(query) >= self.vocabulary.n_concepts:
            raise InvalidRequest(f"query concept out of range [0, {self.vocabulary.n_concepts})")
        return np.bitwise_and.reduce(self._concept_bits[list(query)], axis=0)

    def count(self, concepts: Itemset) -> int:
        """``N(S)``: training images holding every concept of ``S`` (all images for ``S = ()``)."""
        if not concepts:
            return self.n_images
        return int(popcount(self._query_bits(tuple(concepts))))

    def cooccurrence(self, query: Itemset) -> np.ndarray:
        """``N(Q, C)`` for every ``C`` in V*: ``(M,)`` int64."""
        return popcount(self._itemset_bits & self._query_bits(tuple(query))[None, :])

    def relatedness(self, query: Itemset) -> np.ndarray:
        """Eq. 5, ``p(Q|C) = 2 N(Q,C) / (N(Q) + N(C))`` for every ``C`` in V*: ``(M,)`` float64.

        0 where ``N(Q) + N(C) = 0``.
        """
        n_q = self.count(query)
        n_qc = self.cooccurrence(query)
        denom = (n_q + self.itemset_counts).astype(np.float64)
        return np.divide(2.0 * n_qc, denom, out=np.zeros(denom.shape), where=denom > 0)

    def parts(self, query: Itemset) -> np.ndarray:
        """``(M,)`` bool: V* entries that are subsets of the query."""
        in_query = np.zeros(self.vocabulary.n_concepts + 1, dtype=bool)
        in_query[list(query)] = True
        in_query[-1] = True
        return in_query[self._padded].all(axis=1)

    def query_context(self, query: Itemset, k_rc: int = K_RC) -> QueryContext:
        """R_rc(Q) with eq.-6 weights (see the module docstring for the reading of the paper)."""
        if k_rc < 1:
            raise InvalidRequest(f"k_rc must be >= 1, got {k_rc}")
        query = tuple(sorted(set(int(c) for c in query)))
        p = self.relatedness(query)
        part = self.parts(query)
        part_idx = np.flatnonzero(part)
        n_more = max(k_rc - part_idx.size, 0)
        cand = np.flatnonzero(~part & (p > 0))
        order = np.lexsort((cand, -p[cand]))  # by p descending, then V* index
        more_idx = cand[order[:n_more]]
        indices = np.concatenate([part_idx, more_idx]).astype(np.int64)
        raw = p[indices]
        total = raw.sum()
        if total > 0:
            weights = raw / total
        elif indices.size:  # N(Q) = 0: uniform over the parts (the only entries left)
            weights = np.full(indices.size, 1.0 / indices.size)
        else:
            weights = np.zeros(0)
        return QueryContext(
            query=query,
            indices=indices,
            weights=weights,
            relatedness=raw,
            is_part=part[indices],
        )
