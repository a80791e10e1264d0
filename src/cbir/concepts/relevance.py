"""Relevance of images to a multi-concept query (SSIR eqs. 7-13), vectorised over images.

Per image ``(I, T)`` (visual content I, tags T) and query ``Q = {c_1..c_t}``:

* eqs. 10 / 12: ``r_s(Q, X) = prod_i p(c_i | X)``, single-concept posteriors ``(n, C)``;
* eqs. 11 / 13: ``r_m(Q, X) = sum_{C_r in R_rc(Q)} p^(Q|C_r) p(C_r | X)``, multi-concept
  posteriors ``(n, M)`` over V*, weights from :mod:`cbir.concepts.context` (eq. 6);
* eqs. 7-9: ``r = a1 r_s(Q,I) + a2 r_m(Q,I) + a3 r_s(Q,T) + a4 r_m(Q,T)``, ``a >= 0``,
  ``sum a = 1``.

The four terms are the columns of a ``components`` array ``(n, 4)`` in that order.

Images without tags (not in the paper): their text terms are undefined, so the visual
weights are renormalised, ``r = (a1 r_s(Q,I) + a2 r_m(Q,I)) / (a1 + a2)``, and
``(r_s + r_m) / 2`` when ``a1 + a2 = 0``. This keeps ``r`` a convex combination of
posteriors, on the same scale as tagged images' scores, instead of silently scoring the
missing text as 0 (which would push every untagged image down the ranking).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from cbir.concepts.context import K_RC, ConceptContext, QueryContext
from cbir.errors import InvalidRequest

COMPONENTS = ("visual_single", "visual_multi", "text_single", "text_multi")
UNIFORM_WEIGHTS = (0.25, 0.25, 0.25, 0.25)
_SIMPLEX_TOL = 1e-6

__all__ = [
    "COMPONENTS",
    "UNIFORM_WEIGHTS",
    "SceneScorer",
    "check_weights",
    "fuse",
    "multi_relevance",
    "relevance_components",
    "single_relevance",
]


def _posteriors(x: np.ndarray, width: int | None, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or (width is not None and x.shape[1] != width):
        raise InvalidRequest(f"{what} posteriors have shape {x.shape}; expected (n, {width})")
    return x


def check_weights(weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Validate fusion weights: ``(4,)``, non-negative, summing to 1 -> float64 array."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (4,) or not np.isfinite(w).all() or (w < 0).any() or abs(w.sum() - 1.0) > _SIMPLEX_TOL:
        raise InvalidRequest(f"fusion weights must be 4 non-negative numbers summing to 1, got {w.tolist()}")
    return w


def single_relevance(query: Sequence[int], posteriors: np.ndarray) -> np.ndarray:
    """Eqs. 10 / 12: product of the query concepts' posteriors.

    query: concept indices into V; posteriors: ``(n, C)`` float. Returns ``(n,)`` float64.
    """
    posteriors = _posteriors(posteriors, None, "single-concept")
    idx = np.asarray(list(query), dtype=np.int64)
    if idx.size == 0:
        raise InvalidRequest("a query needs at least one concept")
    if idx.min() < 0 or idx.max() >= posteriors.shape[1]:
        raise InvalidRequest(f"query concept out of range [0, {posteriors.shape[1]})")
    return np.prod(posteriors[:, idx].astype(np.float64), axis=1)


def multi_relevance(context: QueryContext, posteriors: np.ndarray) -> np.ndarray:
    """Eqs. 11 / 13: R_rc-weighted sum of multi-concept posteriors.

    posteriors: ``(n, M)`` float over V*. Returns ``(n,)`` float64 (zeros for an empty context).
    """
    posteriors = _posteriors(posteriors, None, "multi-concept")
    if context.indices.size and context.indices.max() >= posteriors.shape[1]:
        raise InvalidRequest(f"context index out of range for multi-concept posteriors {posteriors.shape}")
    return posteriors[:, context.indices].astype(np.float64) @ context.weights


def relevance_components(
    context: QueryContext,
    visual_single: np.ndarray,
    visual_multi: np.ndarray,
    text_single: np.ndarray | None = None,
    text_multi: np.ndarray | None = None,
    has_text: np.ndarray | None = None,
) -> np.ndarray:
    """The four terms of eqs. 8-9 per image: ``(n, 4)`` float64, columns :data:`COMPONENTS`.

    Text posteriors are optional (both or neither); text columns are 0 where ``has_text``
    (``(n,)`` bool, default: all True when text posteriors are given) is False, so rows of
    untagged images may hold anything (NaN included) in the text posteriors.
    """
    visual_single = _posteriors(visual_single, None, "visual single-concept")
    n = visual_single.shape[0]
    visual_multi = _posteriors(visual_multi, None, "visual multi-concept")
    if visual_multi.shape[0] != n:
        raise InvalidRequest(f"visual posteriors have {n} and {visual_multi.shape[0]} rows")
    out = np.zeros((n, 4), dtype=np.float64)
    out[:, 0] = single_relevance(context.query, visual_single)
    out[:, 1] = multi_relevance(context, visual_multi)
    if (text_single is None) != (text_multi is None):
        raise InvalidRequest("give both text posteriors (single and multi-concept) or neither")
    if text_single is None:
        return out
    mask = _has_text(has_text, n)
    for col, post, fn in ((2, text_single, "single"), (3, text_multi, "multi")):
        post = _posteriors(post, None, f"text {fn}-concept")
        if post.shape[0] != n:
            raise InvalidRequest(f"text posteriors have {post.shape[0]} rows, visual ones {n}")
        val = single_relevance(context.query, post) if col == 2 else multi_relevance(context, post)
        out[:, col] = np.where(mask, val, 0.0)
    return out


def _has_text(has_text: np.ndarray | None, n: int) -> np.ndarray:
    if has_text is None:
        return np.ones(n, dtype=bool)
    mask = np.asarray(has_text, dtype=bool)
    if mask.shape != (n,):
        raise InvalidRequest(f"has_text has shape {mask.shape}; expected ({n},)")
    return mask


def fuse(
    components: np.ndarray, weights: Sequence[float] | np.ndarray, has_text: np.ndarray | None = None
) -> np.ndarray:
    """Eqs. 7-9: ``r = components @ a``; untagged images renormalise the visual weights.

    components: ``(n, 4)``; weights: ``(4,)`` on the simplex; has_text: ``(n,)`` bool or
    None (all tagged). Returns ``(n,)`` float64.
    """
    comp = np.asarray(components, dtype=np.float64)
    if comp.ndim != 2 or comp.shape[1] != 4:
        raise InvalidRequest(f"components have shape {comp.shape}; expected (n, 4)")
    w = check_weights(weights)
    mask = _has_text(has_text, comp.shape[0])
    full = comp @ w
    if mask.all():
        return full
    wv = w[0] + w[1]
    visual = comp[:, :2] @ (w[:2] / wv) if wv > 0 else comp[:, :2].mean(axis=1)
    return np.where(mask, full, visual)


class SceneScorer:
    """Scores images for concept queries: R_rc from ``context``, fusion ``weights``.

    The place where the vocabulary, the co-occurrence context and the learned weights
    meet the posteriors of the visual and text classifiers.
    """

    def __init__(
        self,
        context: ConceptContext,
        weights: Sequence[float] | np.ndarray = UNIFORM_WEIGHTS,
        k_rc: int = K_RC,
    ):
        self.context = context
        self.weights = check_weights(weights)
        self.k_rc = k_rc

    def query_context(self, query: Iterable[str | int]) -> QueryContext:
        """R_rc(Q) for a query given as concept names or indices."""
        return self.context.query_context(self.context.vocabulary.query(query), self.k_rc)

    def components(
        self,
        query: Iterable[str | int],
        visual_single: np.ndarray,
        visual_multi: np.ndarray,
        text_single: np.ndarray | None = None,
        text_multi: np.ndarray | None = None,
        has_text: np.ndarray | None = None,
    ) -> np.ndarray:
        """``(n, 4)`` float64 terms of eqs. 8-9 (see :func:`relevance_components`)."""
        vocab = self.context.vocabulary
        _posteriors(visual_single, vocab.n_concepts, "visual single-concept")
        _posteriors(visual_multi, vocab.n_itemsets, "visual multi-concept")
        if text_single is not None:
            _posteriors(text_single, vocab.n_concepts, "text single-concept")
        if text_multi is not None:
            _posteriors(text_multi, vocab.n_itemsets, "text multi-concept")
        ctx = self.query_context(query)
        return relevance_components(ctx, visual_single, visual_multi, text_single, text_multi, has_text)

    def score(
        self,
        query: Iterable[str | int],
        visual_single: np.ndarray,
        visual_multi: np.ndarray,
        text_single: np.ndarray | None = None,
        text_multi: np.ndarray | None = None,
        has_text: np.ndarray | None = None,
    ) -> np.ndarray:
        """``(n,)`` float64 relevance ``r(Q, (I, T))``; without text posteriors, visual only."""
        comp = self.components(query, visual_single, visual_multi, text_single, text_multi, has_text)
        n = comp.shape[0]
        mask = np.zeros(n, dtype=bool) if text_single is None else _has_text(has_text, n)
        return fuse(comp, self.weights, mask)
