"""Platt calibration of the SSIR relevance terms before fusion."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.concepts.calibration import EPS, apply_calibration, fit_calibration, fit_platt


def test_platt_recovers_the_logistic_that_made_the_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-(2.0 * x - 1.0)))
    a, b = fit_platt(x, y)
    assert a == pytest.approx(2.0, abs=0.1) and b == pytest.approx(-1.0, abs=0.1)


def test_platt_by_hand_on_balanced_uninformative_data_is_one_half():
    # x says nothing and the classes weigh the same: alpha 0, beta 0 -> every p = 0.5
    a, b = fit_platt(np.array([1.0, 1.0, 2.0, 2.0]), np.array([1, 0, 1, 0]))
    assert a == pytest.approx(0.0, abs=1e-6) and b == pytest.approx(0.0, abs=1e-6)


def test_an_anti_informative_term_becomes_a_constant_never_a_reversal():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([1, 1, 0, 0])
    w = np.array([1.0, 1.0, 1.0, 3.0])
    a, b = fit_platt(x, y, w)
    assert a == 0.0
    assert 1 / (1 + np.exp(-b)) == pytest.approx(2 / 6)  # the weighted share of positives


def test_calibration_is_monotone_per_column_and_skips_unusable_columns():
    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.3
    comp = np.column_stack([np.where(y, 0.01, 0.001) * rng.uniform(0.5, 2, 500),
                            np.where(y, 0.5, 0.2) * rng.uniform(0.5, 1.5, 500),
                            rng.random(500), np.zeros(500)])
    usable = np.ones((500, 4), dtype=bool)
    usable[:, 2] = False
    cal = fit_calibration(comp, y, np.ones(500), usable)
    assert cal[0] is not None and cal[1] is not None and cal[2] is None
    assert cal[3] is not None and cal[3][0] >= 0  # a constant column cannot be reversed
    out = apply_calibration(comp, cal)
    for k in (0, 1):
        order = np.argsort(comp[:, k])
        assert (np.diff(out[order, k]) >= -1e-12).all()
        assert out[y, k].mean() > out[~y, k].mean()
    assert np.array_equal(out[:, 2], comp[:, 2])  # None: left as it is
    assert np.array_equal(apply_calibration(comp, None), comp)
    a, b = cal[0]
    assert out[0, 0] == pytest.approx(1 / (1 + np.exp(-(a * np.log(comp[0, 0] + EPS) + b))))


def test_product_terms_are_calibrated_per_concept():
    """r_s is a product of one posterior per query concept (about p**|Q|): calibrated on
    log(r_s) / |Q|, a posterior p means the same for a 1- and a 4-concept query, instead of
    one slope for all lengths squashing single-concept evidence."""
    rng = np.random.default_rng(1)
    n = 8000
    lengths = rng.integers(1, 5, size=n)
    y = rng.random(n) < 0.3
    p = np.clip(np.where(y, 0.7, 0.1) + 0.1 * rng.normal(size=n), 0.001, 0.999)  # per concept
    comp = np.column_stack([p ** lengths, np.full(n, 0.5), p ** lengths, np.full(n, 0.5)])
    w = np.ones(n)
    per = fit_calibration(comp, y, w, lengths=lengths)
    assert len(per[0]) == 3 and per[0][2] == 1 and len(per[2]) == 3 and len(per[1]) == 2
    one = fit_calibration(comp, y, w)  # as models calibrated before: one slope for every length
    assert len(one[0]) == 2
    # a single concept at 0.01 and at 0.5: per concept they lie much further apart
    single = np.array([[0.01, 0.5, 0.01, 0.5], [0.5, 0.5, 0.5, 0.5]])
    a, b = apply_calibration(single, per, 1), apply_calibration(single, one)
    gap = lambda c: np.diff(np.log(c[:, 0] / (1 - c[:, 0])))[0]  # noqa: E731
    assert gap(a) > 2 * gap(b) > 0
    # the same posterior per concept reads the same at any length
    np.testing.assert_allclose(apply_calibration(np.array([[0.5 ** 3, 0.5, 0.5 ** 3, 0.5]]), per, 3),
                               apply_calibration(np.array([[0.5, 0.5, 0.5, 0.5]]), per, 1))
    with pytest.raises(Exception, match="query lengths"):
        apply_calibration(single, per)
