"""SSIR fusion weights (eqs. 14-18): objective by hand, gradient, simplex, recovery."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cbir.concepts import (
    fit_fusion_weights,
    log_likelihood,
    log_likelihood_and_grad,
    project_simplex,
    sample_weights,
)
from cbir.errors import InvalidRequest


def test_project_simplex() -> None:
    np.testing.assert_allclose(project_simplex([0.5, 0.5, 0.5, 0.5]), [0.25] * 4)  # shift by 0.25
    np.testing.assert_allclose(project_simplex([2.0, 0, 0, 0]), [1, 0, 0, 0])  # tau = 1
    # tau = 0.1: [0.6-0.1, 0.6-0.1, max(-1.1, 0), max(-0.1, 0)] = [0.5, 0.5, 0, 0]
    np.testing.assert_allclose(project_simplex([0.6, 0.6, -1.0, 0.0]), [0.5, 0.5, 0, 0])
    rng = np.random.default_rng(0)
    for _ in range(100):
        p = project_simplex(rng.normal(size=4) * 3)
        assert p.min() >= 0 and p.sum() == pytest.approx(1.0)
        assert project_simplex(p) == pytest.approx(p)  # points on the simplex are fixed


def test_sample_weights_eq17() -> None:
    # group 0: 1 positive, 2 negatives; group 1: 3 positives, 1 negative; G = 2.
    # n_Qi / G: g0 [1/(2*1), 1/(2*2), 1/(2*2)], g1 [1/(2*3)]*3 + [1/(2*1)]
    y = np.array([1, 0, 0, 1, 1, 1, 0])
    g = np.array([0, 0, 0, 7, 7, 7, 7])
    np.testing.assert_allclose(sample_weights(y, g), [1 / 2, 1 / 4, 1 / 4, 1 / 6, 1 / 6, 1 / 6, 1 / 2])


def test_log_likelihood_by_hand() -> None:
    # a = (1, 0, 0, 0) so r = first column: positives 0.8, 0.5; negatives 0.2, 0.5, 0.1.
    # L = 1/2 (ln 0.8 + ln 0.5) + 1/3 (ln(1-0.2) + ln(1-0.5) + ln(1-0.1))
    #   = 1/2 (-0.22314 - 0.69315) + 1/3 (-0.22314 - 0.69315 - 0.10536) = -0.45815 - 0.34055 = -0.79870
    comp = np.zeros((5, 4))
    comp[:, 0] = [0.8, 0.5, 0.2, 0.5, 0.1]
    y = np.array([1, 1, 0, 0, 0])
    expected = (math.log(0.8) + math.log(0.5)) / 2 + (math.log(0.8) + math.log(0.5) + math.log(0.9)) / 3
    assert log_likelihood((1, 0, 0, 0), comp, y) == pytest.approx(expected)
    assert expected == pytest.approx(-0.79870, abs=1e-5)
    # Second column 0.5 everywhere, a = (0.5, 0.5, 0, 0): r = [0.65, 0.5, 0.35, 0.5, 0.3]
    comp[:, 1] = 0.5
    r = np.array([0.65, 0.5, 0.35, 0.5, 0.3])
    expected = np.log(r[:2]).sum() / 2 + np.log(1 - r[2:]).sum() / 3
    assert log_likelihood((0.5, 0.5, 0, 0), comp, y) == pytest.approx(expected)


def test_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    comp = rng.uniform(0.05, 0.95, size=(40, 4))
    y = rng.random(40) < 0.3
    groups = rng.integers(0, 3, size=40)
    has_text = rng.random(40) < 0.7
    w = np.array([0.1, 0.4, 0.3, 0.2])
    _, grad = log_likelihood_and_grad(w, comp, y, groups, has_text)
    h = 1e-6
    for i, j in [(0, 1), (1, 2), (2, 3), (0, 3)]:  # directions along the simplex
        d = np.zeros(4)
        d[i], d[j] = 1.0, -1.0
        up = log_likelihood(w + h * d, comp, y, groups, has_text)
        down = log_likelihood(w - h * d, comp, y, groups, has_text)
        assert (up - down) / (2 * h) == pytest.approx(grad @ d, rel=1e-5, abs=1e-8)


def _synthetic(informative: int, seed: int = 0, n: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(int)  # imbalanced: 10 % positives
    groups = rng.integers(0, 5, size=n)
    comp = rng.random((n, 4))  # noise components in [0, 1]
    comp[:, informative] = np.clip(0.15 + 0.7 * y + 0.1 * rng.normal(size=n), 0, 1)
    return comp, y, groups


@pytest.mark.parametrize("informative", [0, 1, 2, 3])
def test_weight_concentrates_on_informative_component(informative: int) -> None:
    comp, y, groups = _synthetic(informative)
    fit = fit_fusion_weights(comp, y, groups)
    assert fit.weights.min() >= 0 and fit.weights.sum() == pytest.approx(1.0)
    assert fit.weights[informative] > 0.9
    assert np.all(np.diff(fit.curve) >= -1e-12)  # monotone ascent
    assert fit.curve[-1] > fit.curve[0]
    assert fit.converged and fit.n_iter == len(fit.curve) - 1


def test_fit_is_deterministic_and_handles_untagged_images() -> None:
    comp, y, groups = _synthetic(2, seed=5)
    has_text = np.random.default_rng(9).random(len(y)) < 0.7
    a = fit_fusion_weights(comp, y, groups, has_text)
    b = fit_fusion_weights(comp, y, groups, has_text)
    assert np.array_equal(a.weights, b.weights) and np.array_equal(a.curve, b.curve)
    assert a.weights.min() >= 0 and a.weights.sum() == pytest.approx(1.0)
    assert a.weights[2] > 0.5  # text single-concept term still dominates
    assert np.all(np.diff(a.curve) >= -1e-12)


def test_fit_rejects_bad_input() -> None:
    comp = np.full((3, 4), 0.5)
    with pytest.raises(InvalidRequest):
        fit_fusion_weights(comp * 3, np.array([1, 0, 0]))  # not probabilities
    with pytest.raises(InvalidRequest):
        fit_fusion_weights(comp, np.array([1, 2, 0]))
    with pytest.raises(InvalidRequest):
        fit_fusion_weights(comp[:, :3], np.array([1, 0, 0]))


def test_interior_optimum_satisfies_kkt() -> None:
    # Two equally informative components: the maximum mixes them. On the simplex the optimum
    # has equal gradients on its support and no larger gradient off it (L is concave).
    rng = np.random.default_rng(0)
    n = 4000
    y = (rng.random(n) < 0.2).astype(int)
    comp = rng.random((n, 4))
    for k in (0, 1):
        comp[:, k] = np.clip(0.3 + 0.3 * y + 0.25 * rng.normal(size=n), 0, 1)
    fit = fit_fusion_weights(comp, y)
    _, grad = log_likelihood_and_grad(fit.weights, comp, y)
    support = fit.weights > 1e-9
    assert support[:2].all() and not support[2:].any()
    assert np.ptp(grad[support]) < 1e-4
    assert grad[~support].max() < grad[support].min()
    assert len(fit.curve) > 2 and np.all(np.diff(fit.curve) >= -1e-12)
