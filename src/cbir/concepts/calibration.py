"""Calibrating the four SSIR relevance terms before they are fused (our addition to the paper).

The terms of eqs. 8-9 live on very different scales: ``r_s`` is a product of ``t``
posteriors (about ``p^t``), ``r_m`` a context-weighted sum of softmax outputs over the
thousands of concept sets in V*. A convex combination of such raw numbers (eq. 7) is
decided by the largest one alone, so the learned weights collapse onto one term and the
fusion adds nothing. Measured on Corel-5K (visual only, 2-/3-/4-concept MAP): the
product baseline .445/.452/.431, raw linear fusion .449/.455/.436, the same fusion of
calibrated terms .447/.483/.514.

So each term is first mapped to a probability that the image is relevant, by Platt
scaling on its logarithm, ``p_k = sigmoid(alpha_k log(c_k + eps) + beta_k)``, fit on the
validation split with the imbalance weights of eq. 17 (every query weighs the same, and
its positives as much as its negatives). The two product terms (``r_s`` of the image and of
the tags: eq. 10's product of one posterior per query concept) are calibrated per concept,
on ``log(c) / |Q|`` (the geometric mean), when the query lengths are given: one slope for
products of 1 to 4 posteriors was a compromise that squashed single-concept evidence (a
posterior of 0.01 read 0.82, one of 0.5 read 0.935: docs/scene-fusion.md). Such columns
store ``[alpha, beta, 1]``; ``[alpha, beta]`` (models calibrated before) are applied as
fitted. The map is monotone (``alpha_k >= 0`` is enforced), so each term ranks images as
before (within one query length); only the fusion sees the change. Eqs. 7-9 and 14-18 then
apply unchanged to the calibrated terms.
"""

from __future__ import annotations

import numpy as np

from cbir.errors import InvalidRequest

EPS = 1e-12
IDENTITY = None

__all__ = ["apply_calibration", "fit_calibration", "fit_platt"]


def fit_platt(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, *, ridge: float = 1e-4,
              max_iter: int = 100, tol: float = 1e-10) -> tuple[float, float]:
    """Weighted logistic regression of ``y`` on one feature: ``(alpha, beta)``.

    x: ``(n,)`` float; y: ``(n,)`` 0/1; weights: ``(n,)`` non-negative (None: all 1). Newton's
    method with a small ridge on alpha (finite even for separable data); alpha is clipped
    at 0 so the map never reverses an order.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    if x.shape != y.shape or w.shape != x.shape or x.ndim != 1 or x.size == 0:
        raise InvalidRequest("fit_platt needs x, y and weights of one length (n,)")
    w = w / w.sum()
    theta = np.zeros(2)
    design = np.column_stack([x, np.ones_like(x)])
    reg = np.diag([ridge, 0.0])
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        grad = design.T @ (w * (p - y)) + reg @ theta
        hess = (design * (w * p * (1 - p))[:, None]).T @ design + reg + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < tol:
            break
    alpha, beta = float(theta[0]), float(theta[1])
    if alpha < 0:  # the term is anti-informative here: make it a constant rather than reverse it
        pos = float((w * y).sum())
        alpha, beta = 0.0, float(np.log(max(pos, EPS) / max(1 - pos, EPS)))
    return alpha, beta


#: columns that are products of one posterior per query concept (r_s of the image, of the tags)
PRODUCT_COLUMNS = (0, 2)


def _log_term(values: np.ndarray, per_concept: bool, lengths: np.ndarray | float | None) -> np.ndarray:
    x = np.log(np.asarray(values, dtype=np.float64) + EPS)
    if per_concept:
        if lengths is None:
            raise InvalidRequest("this calibration is per concept: give the query lengths")
        x = x / np.maximum(np.asarray(lengths, dtype=np.float64), 1.0)
    return x


def fit_calibration(components: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                    usable: np.ndarray | None = None,
                    lengths: np.ndarray | None = None) -> list[list[float] | None]:
    """One ``[alpha, beta]`` per column of ``(n, 4)`` components (None for an unused column);
    ``[alpha, beta, 1]`` for a product column calibrated per concept (``lengths``: ``(n,)``
    the query length of each row; None: every column as one term).

    usable: ``(n, 4)`` bool, the rows that inform each column (e.g. the text terms only on
    tagged images); a column with no usable row, or with only one class among them, is None.
    """
    comp = np.asarray(components, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    ok = np.ones(comp.shape, dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    out: list[list[float] | None] = []
    for k in range(comp.shape[1]):
        rows = ok[:, k]
        if not rows.any() or y[rows].all() or not y[rows].any():
            out.append(None)
            continue
        per = lengths is not None and k in PRODUCT_COLUMNS
        x = _log_term(comp[rows, k], per, None if lengths is None else np.asarray(lengths)[rows])
        a, b = fit_platt(x, y[rows], weights[rows])
        out.append([a, b, 1] if per else [a, b])
    return out


def apply_calibration(components: np.ndarray, calibration: list[list[float] | None] | None,
                      lengths: np.ndarray | float | None = None) -> np.ndarray:
    """``(n, 4)`` calibrated terms; None (no calibration) or a None column leaves values as they
    are. lengths: the query length (a number, or ``(n,)`` per row), needed by columns
    calibrated per concept."""
    comp = np.asarray(components, dtype=np.float64)
    if calibration is None:
        return comp
    if len(calibration) != comp.shape[1]:
        raise InvalidRequest(f"{len(calibration)} calibrations for {comp.shape[1]} components")
    out = comp.copy()
    for k, ab in enumerate(calibration):
        if ab is not None:
            x = _log_term(comp[:, k], len(ab) > 2 and bool(ab[2]), lengths)
            out[:, k] = 1.0 / (1.0 + np.exp(-(ab[0] * x + ab[1])))
    return out
