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
from typing import Any

import numpy as np

from cbir.concepts.relevance import check_weights, fuse
from cbir.errors import InvalidRequest

EPS = 1e-12

__all__ = [
    "MIN_VISUAL",
    "FusionResult",
    "LogOddsFusion",
    "fit_logistic",
    "fit_logodds_fusion",
    "logit",
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


# -- per-branch log-odds fusion (issue 11) -----------------------------------------------------
#
# The linear fusion above fits one weight vector for tagged and untagged images alike; on a
# library where most images are tagged it puts all the weight on the text terms, the fused
# score of a tagged image then no longer depends on what the image shows, and untagged
# images (scored by the renormalised visual weights, which may be 0/0) land on another
# scale. The model below instead estimates, with one logistic model per kind of evidence,
#
#     P(Q | I)    = sigmoid(b_v + w1 l1 + w2 l2)                       (untagged images)
#     P(Q | I, T) = sigmoid(b_t + u_v z_v + u3 l3 + u4 l4)              (tagged images)
#
# where ``l_k = logit(p_k)`` are the calibrated SSIR terms (eqs. 8-9 through
# :mod:`cbir.concepts.calibration`) and ``z_v = b_v + w1 l1 + w2 l2`` is the visual model's
# log-odds. Both are fitted with the eq. 17-18 weighted log-likelihood, ``P(Q | I)`` on every
# validation image, ``P(Q | I, T)`` on the tagged ones, so both estimate the same quantity,
# the probability that the image holds every concept of the query given the evidence it
# has: one scale. ``w1, w2, u3, u4 >= 0`` and ``u_v >= MIN_VISUAL``: the visual evidence
# always counts, so no weight setting makes a tagged image's score independent of it.

#: smallest coefficient of the visual log-odds in the tagged images' model
MIN_VISUAL = 0.5
_LOGIT_CLIP = 30.0


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped away from 0 and 1 -> float64, within +-30."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-13, 1 - 1e-13)
    return np.clip(np.log(p) - np.log1p(-p), -_LOGIT_CLIP, _LOGIT_CLIP)


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray, lower: np.ndarray,
                 *, ridge: float = 1e-4, max_iter: int = 500) -> tuple[float, np.ndarray]:
    """Weighted logistic regression with lower bounds on the coefficients -> (bias, coef (d,)).

    x: ``(n, d)``; y: ``(n,)`` 0/1; weights: ``(n,)`` non-negative; lower: ``(d,)`` (``-inf``
    for none). L-BFGS-B from a fixed start (deterministic); a small ridge keeps the
    solution finite on separable data.
    """
    from scipy.optimize import minimize

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    d = x.shape[1]
    lo = np.asarray(lower, dtype=np.float64)

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] + x @ theta[1:]
        # weighted negative log-likelihood, stable: log(1 + e^z) - y z
        nll = np.sum(w * (np.logaddexp(0.0, z) - y * z))
        g = w * (1.0 / (1.0 + np.exp(-z)) - y)
        grad = np.concatenate([[g.sum()], x.T @ g])
        coef = theta[1:]
        return float(nll + 0.5 * ridge * coef @ coef), grad + np.concatenate([[0.0], ridge * coef])

    start = np.concatenate([[0.0], np.maximum(np.full(d, 0.5), np.where(np.isfinite(lo), lo, 0.5))])
    bounds = [(None, None)] + [(None if not np.isfinite(b) else float(b), None) for b in lo]
    res = minimize(f, start, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": max_iter, "ftol": 1e-12, "gtol": 1e-9})
    return float(res.x[0]), np.asarray(res.x[1:], dtype=np.float64)


@dataclass(frozen=True)
class LogOddsFusion:
    """The two calibrated models above: ``visual = [b_v, w1, w2]``, ``joint = [b_t, u_v, u3,
    u4, u_m]``; ``u_m <= 0`` is the log-odds each query concept missing from a tagged image's
    tags costs (0 in models fitted before it existed, which stored four numbers).

    joint is None without a text branch (every image is scored by the visual model).
    """

    visual: tuple[float, float, float]
    joint: tuple[float, float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.joint is not None and len(self.joint) == 4:
            object.__setattr__(self, "joint", (*self.joint, 0.0))

    def to_dict(self) -> dict[str, list[float] | None]:
        return {"visual": [float(v) for v in self.visual],
                "joint": None if self.joint is None else [float(v) for v in self.joint]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogOddsFusion:
        v = d.get("visual")
        j = d.get("joint")
        if v is None or len(v) != 3 or (j is not None and len(j) not in (4, 5)):
            raise InvalidRequest(f"a log-odds fusion needs visual [b, w1, w2] and joint "
                                 f"[b, u_v, u3, u4, u_m]; got {d}")
        return cls(tuple(float(x) for x in v), None if j is None else tuple(float(x) for x in j))

    def visual_logodds(self, calibrated: np.ndarray) -> np.ndarray:
        lg = logit(np.asarray(calibrated)[:, :2])
        return self.visual[0] + lg @ np.asarray(self.visual[1:])

    def logodds(self, calibrated: np.ndarray, has_text: np.ndarray | None = None,
                missing: np.ndarray | None = None) -> np.ndarray:
        """``(n,)`` fused log-odds from ``(n, 4)`` calibrated terms; has_text ``(n,)`` bool or
        None; missing ``(n,)``: query concepts absent from each image's tags (None: not known)."""
        comp = np.asarray(calibrated, dtype=np.float64)
        zv = self.visual_logodds(comp)
        if self.joint is None or has_text is None or not np.asarray(has_text).any():
            return zv
        mask = np.asarray(has_text, dtype=bool)
        b, uv, u3, u4, um = self.joint
        lt = logit(comp[:, 2:])
        zt = b + uv * zv + lt @ np.array([u3, u4])
        if missing is not None and um:
            zt = zt + um * np.asarray(missing, dtype=np.float64)
        return np.where(mask, zt, zv)

    def score(self, calibrated: np.ndarray, has_text: np.ndarray | None = None,
              missing: np.ndarray | None = None, offset: float = 0.0) -> np.ndarray:
        """``(n,)`` P(image holds every concept of the query | its evidence); ``offset`` is
        added to the log-odds (the query's prior log-odds: ``SceneModel.prior_logodds``)."""
        return 1.0 / (1.0 + np.exp(-(self.logodds(calibrated, has_text, missing) + offset)))


def fit_logodds_fusion(calibrated: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None,
                       has_text: np.ndarray | None = None, *, active: np.ndarray | None = None,
                       min_visual: float = MIN_VISUAL, missing: np.ndarray | None = None) -> LogOddsFusion:
    """Fit :class:`LogOddsFusion` on ``(n, 4)`` calibrated terms with eq. 17's weights.

    active: ``(4,)`` bool, the terms that may be used (an inactive one gets coefficient 0).
    With the visual terms inactive ("tags only") the visual model is a constant (the base
    rate) and ``u_v = 0``; with the text terms inactive, or no tagged row, joint is None.
    missing: ``(n,)`` the query concepts each row's tags lack; with the text terms active its
    coefficient ``u_m <= 0`` is fitted too, so the validation data say how much a concept
    absent from the tags counts against an image (a lot when tags are complete, little when
    users tag sparsely); the learnt text head alone gives co-occurring concepts (a "nest"
    photo's "leaf") enough probability to lift a tagged image that lacks them above untagged
    photos that show them.
    """
    comp = np.asarray(calibrated, dtype=np.float64)
    y = np.asarray(labels).astype(np.float64)
    sw = sample_weights(y.astype(bool), groups)
    act = np.ones(4, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    mask = np.zeros(len(y), dtype=bool) if has_text is None else np.asarray(has_text, dtype=bool)
    lg = logit(comp)
    cols_v = [k for k in (0, 1) if act[k]]
    if cols_v == [0, 1]:
        # w1 >= w2, fitted as w2 (l1 + l2) + (w1 - w2) l1 with both >= 0: SSIR's context term
        # (concept sets related to the query) never weighs more than the image's own evidence
        # for the query, so fewer images with ~0 evidence but a strong context (water, for
        # "sky") outrank images that show it; it also fitted better (docs/scene-fusion.md)
        bv, cv = fit_logistic(np.column_stack([lg[:, 0] + lg[:, 1], lg[:, 0]]), y, sw, np.zeros(2))
        cv = np.array([cv[0] + cv[1], cv[0]])
    elif cols_v:
        bv, cv = fit_logistic(lg[:, cols_v], y, sw, np.zeros(len(cols_v)))
    else:
        bv, cv = fit_logistic(np.zeros((len(y), 0)), y, sw, np.zeros(0))
    wv = np.zeros(2)
    wv[[k for k in cols_v]] = cv
    visual = (bv, float(wv[0]), float(wv[1]))
    cols_t = [k for k in (2, 3) if act[k]]
    if not cols_t or not mask.any() or y[mask].all() or not y[mask].any():
        return LogOddsFusion(visual, None)
    zv = visual[0] + lg[:, :2] @ wv
    feats = [lg[mask][:, cols_t]]
    lower = [0.0] * len(cols_t)
    if cols_v:
        feats.insert(0, zv[mask, None])
        lower.insert(0, float(min_visual))
    use_miss = missing is not None and np.ptp(np.asarray(missing, dtype=np.float64)[mask]) > 0
    if use_miss:  # fitted as -missing with a coefficient >= 0
        feats.append(-np.asarray(missing, dtype=np.float64)[mask, None])
        lower.append(0.0)
    g = None if groups is None else np.asarray(groups)[mask]
    bt, ct = fit_logistic(np.column_stack(feats), y[mask], sample_weights(y[mask].astype(bool), g),
                          np.array(lower))
    um = -float(ct[-1]) if use_miss else 0.0
    ct = ct[:-1] if use_miss else ct
    uv = float(ct[0]) if cols_v else 0.0
    ut = ct[1:] if cols_v else ct
    u = np.zeros(2)
    u[[k - 2 for k in cols_t]] = ut
    return LogOddsFusion(visual, (bt, uv, float(u[0]), float(u[1]), um))
