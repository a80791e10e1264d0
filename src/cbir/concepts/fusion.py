"""Learning the fusion weights a1..a4 of SSIR (paper section 2.6, eqs. 14-18).

For each (query Q, image i) pair with label ``y`` (1 when the image holds every concept of
Q) the model says ``p(y = 1) = r_i`` with ``r_i`` the fused relevance of eqs. 7-9
(:func:`cbir.concepts.relevance.fuse`, which renormalises the visual weights for untagged
images). The objective is the imbalance-weighted log-likelihood of eqs. 17-18,

    L(a) = 1/G sum_Q [ 1/N+_Q sum_{y=1} log r_i + 1/N-_Q sum_{y=0} log(1 - r_i) ],

averaged over the G queries (groups); the average over queries only rescales the step.
``r`` is clipped to ``[eps, 1 - eps]`` inside the logarithms.

It is maximised by projected gradient ascent on the simplex ``{a >= 0, sum a = 1}`` (exact
Euclidean projection, Duchi et al. 2008) with an Armijo backtracking step, from the uniform
weights. With every image tagged, ``L`` is concave in ``a`` (log of an affine function), so
this reaches the global maximum; it is deterministic (no sampling). Fit on a validation
split, never on the test images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cbir.concepts.relevance import check_weights, fuse
from cbir.errors import InvalidRequest

EPS = 1e-12

__all__ = [
    "FusionResult",
    "fit_fusion_weights",
    "log_likelihood",
    "log_likelihood_and_grad",
    "project_simplex",
    "sample_weights",
]


@dataclass(frozen=True)
class FusionResult:
    """Learned weights ``(4,)`` float64 and the objective after each iteration.

    curve: ``(n_iter + 1,)`` float64, ``curve[0]`` at the initial weights, non-decreasing.
    """

    weights: np.ndarray
    curve: np.ndarray
    n_iter: int
    converged: bool


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``(d,)`` onto ``{x >= 0, sum x = 1}`` -> ``(d,)`` float64."""
    v = np.asarray(v, dtype=np.float64)
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, v.size + 1)
    rho = np.flatnonzero(u - css / k > 0)[-1]
    tau = css[rho] / (rho + 1)
    return np.maximum(v - tau, 0.0)


def sample_weights(labels: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """``n_Qi`` of eq. 17 divided by the number of groups: ``(n,)`` float64.

    ``1 / (G N+_g)`` for positives and ``1 / (G N-_g)`` for negatives of group ``g``.
    """
    y = np.asarray(labels).astype(bool)
    g = np.zeros(y.size, dtype=np.int64) if groups is None else np.asarray(groups)
    if g.shape != y.shape:
        raise InvalidRequest(f"groups have shape {g.shape}; labels {y.shape}")
    _, inv = np.unique(g, return_inverse=True)
    n_groups = int(inv.max()) + 1 if inv.size else 0
    pos = np.bincount(inv, weights=y, minlength=n_groups)
    neg = np.bincount(inv, weights=~y, minlength=n_groups)
    per = np.where(y, pos[inv], neg[inv])
    return 1.0 / (n_groups * per)


def _prepare(
    components: np.ndarray, labels: np.ndarray, has_text: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    comp = np.asarray(components, dtype=np.float64)
    if comp.ndim != 2 or comp.shape[1] != 4:
        raise InvalidRequest(f"components have shape {comp.shape}; expected (n, 4)")
    if not np.isfinite(comp).all() or comp.min(initial=0) < -1e-9 or comp.max(initial=0) > 1 + 1e-9:
        raise InvalidRequest("components must be probabilities in [0, 1]")
    y = np.asarray(labels)
    if y.shape != (comp.shape[0],) or not np.isin(y, (0, 1)).all():
        raise InvalidRequest(f"labels must be ({comp.shape[0]},) 0/1")
    mask = np.ones(comp.shape[0], bool) if has_text is None else np.asarray(has_text, dtype=bool)
    if mask.shape != y.shape:
        raise InvalidRequest(f"has_text has shape {mask.shape}; expected {y.shape}")
    return comp, y.astype(bool), mask


def _value_grad(
    w: np.ndarray, comp: np.ndarray, y: np.ndarray, mask: np.ndarray, sw: np.ndarray, eps: float
) -> tuple[float, np.ndarray]:
    r = fuse(comp, w, mask)
    rc = np.clip(r, eps, 1.0 - eps)
    value = float(np.sum(sw * np.where(y, np.log(rc), np.log1p(-rc))))
    dr = sw * np.where(y, 1.0 / rc, -1.0 / (1.0 - rc))  # dL/dr_i, (n,)
    # dr_i/da: the components for tagged images; for untagged ones the derivative of
    # (a1 b1 + a2 b2) / (a1 + a2), i.e. (b_k - r_i) / (a1 + a2) for k = 1, 2.
    jac = np.where(mask[:, None], comp, 0.0)
    wv = w[0] + w[1]
    if not mask.all() and wv > 0:
        jac[~mask, :2] = (comp[~mask, :2] - r[~mask, None]) / wv
    return value, jac.T @ dr


def log_likelihood_and_grad(
    weights: np.ndarray,
    components: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    has_text: np.ndarray | None = None,
    eps: float = EPS,
) -> tuple[float, np.ndarray]:
    """Eq. 18 objective (group-averaged) and its gradient ``(4,)`` at ``weights``."""
    comp, y, mask = _prepare(components, labels, has_text)
    return _value_grad(check_weights(weights), comp, y, mask, sample_weights(y, groups), eps)


def log_likelihood(
    weights: np.ndarray,
    components: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    has_text: np.ndarray | None = None,
    eps: float = EPS,
) -> float:
    """Eq. 18 objective, averaged over groups (queries); see the module docstring."""
    return log_likelihood_and_grad(weights, components, labels, groups, has_text, eps)[0]


def fit_fusion_weights(
    components: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    has_text: np.ndarray | None = None,
    *,
    init: np.ndarray | None = None,
    max_iter: int = 500,
    tol: float = 1e-10,
    step: float = 1.0,
    eps: float = EPS,
    active: np.ndarray | None = None,
) -> FusionResult:
    """Maximise eq. 18 over the simplex by projected gradient ascent with backtracking.

    components: ``(n, 4)`` float in [0, 1] (rows of :func:`relevance_components` for every
    (query, image) pair); labels: ``(n,)`` 0/1; groups: ``(n,)`` query ids (None: one
    query); has_text: ``(n,)`` bool (None: all tagged). Stops when an accepted step moves
    the weights by less than ``tol`` (L1) or raises the objective by less than ``tol``.
    active: ``(4,)`` bool, the weights that may be non-zero (None: all). The others stay 0,
    e.g. ``[True, False, True, False]`` fits a model without the multi-concept heads, and
    ``[True, True, False, False]`` a visual-only one. The default start is then uniform
    over the active weights.
    """
    comp, y, mask = _prepare(components, labels, has_text)
    sw = sample_weights(y, groups)
    act = np.ones(4, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    if act.shape != (4,) or not act.any():
        raise InvalidRequest("active must be 4 booleans with at least one True")
    if init is None:
        init = act / act.sum()
    w = check_weights(init)
    if (w[~act] != 0).any():
        raise InvalidRequest("init gives weight to a component that is not active")
    value, grad = _value_grad(w, comp, y, mask, sw, eps)
    curve = [value]
    t = step
    converged = False
    for _ in range(max_iter):
        while True:
            cand = np.zeros(4)
            cand[act] = project_simplex((w + t * grad)[act])
            move = cand - w
            if np.abs(move).sum() < tol:
                break
            cand_value, cand_grad = _value_grad(cand, comp, y, mask, sw, eps)
            if cand_value >= value + 1e-4 * float(grad @ move):  # Armijo condition
                break
            t *= 0.5
        if np.abs(move).sum() < tol:
            converged = True
            break
        gain = cand_value - value
        w, value, grad = cand, cand_value, cand_grad
        curve.append(value)
        t = min(t * 2.0, 1e6)
        if gain < tol:
            converged = True
            break
    return FusionResult(weights=w, curve=np.asarray(curve), n_iter=len(curve) - 1, converged=converged)
