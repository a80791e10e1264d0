"""Re-ranking (cbir.rerank): alpha-QE by hand, k-reciprocal on a hub, the search wiring."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.errors import InvalidRequest
from cbir.rerank import RerankParams, alpha_qe, database_augmentation, k_reciprocal, rerank


def _u(*v):
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def test_alpha_qe_by_hand():
    q = _u(1, 0, 0)
    c = _u([0.8, 0.6, 0], [0.6, 0, 0.8], [0, 1, 0])
    # n=1: the best candidate (cos .8) joins with weight .8^3 = .512
    got = alpha_qe(q, c, n=1, alpha=3.0)
    q2 = np.array([1 + 0.512 * 0.8, 0.512 * 0.6, 0.0])
    q2 /= np.linalg.norm(q2)
    np.testing.assert_allclose(got, c @ q2, rtol=1e-6)
    assert got[2] > 0.0  # the expanded query now sees the third candidate's direction
    # n=0 is the plain cosine; candidates with negative similarity never pull the query
    np.testing.assert_allclose(alpha_qe(q, c, n=0), c @ q, rtol=1e-6)
    np.testing.assert_allclose(alpha_qe(q, -c[:1], n=1), [-0.8], rtol=1e-6)


def _at(deg: float) -> np.ndarray:
    r = np.deg2rad(deg)
    return np.array([np.cos(r), np.sin(r), 0.0], dtype=np.float32)


def test_k_reciprocal_demotes_a_hub_that_is_no_ones_neighbour():
    """The query at 0 degrees, its own cluster spread over -26..26, a tight cluster at 37..43
    and a "hub" at 21: by cosine the hub beats the query's farthest cluster members, but its
    own nearest neighbours are the other cluster, so it is no k-reciprocal neighbour."""
    q = _at(0)
    own = [_at(d) for d in (-26, -19.5, -13, -6.5, 6.5, 13, 19.5, 26)]
    other = [_at(40 + d) for d in np.linspace(-3, 3, 8)]
    hub = len(own)
    cands = np.stack(own + [_at(21)] + other)
    plain = np.argsort(-(cands @ q), kind="stable").tolist()
    kr = np.argsort(-k_reciprocal(q, cands, k1=6, k2=3, lam=0.3), kind="stable").tolist()
    assert plain.index(hub) < plain.index(0)  # cosine: the hub above the query's own -26 photo
    assert kr.index(0) < kr.index(hub) and kr.index(hub) > plain.index(hub)  # demoted
    assert set(kr[-len(other):]) == set(range(hub + 1, len(cands)))  # the other cluster last


def test_rerank_dispatch_and_bad_input():
    q = _u(1, 0)
    c = _u([1, 0.1], [0.1, 1])
    np.testing.assert_allclose(rerank("none", q, c), c @ q, rtol=1e-6)
    assert rerank("qe", q, c).shape == (2,) and rerank("kr", q, c).shape == (2,)
    assert rerank("qe", q, np.zeros((0, 2))).shape == (0,)
    with pytest.raises(InvalidRequest):
        rerank("bogus", q, c)
    assert RerankParams().depth == 100


def test_database_augmentation_pulls_neighbours_together():
    x = _u([1, 0.2], [1, -0.2], [0, 1])
    d = database_augmentation(x, k=2, alpha=1.0)
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-6)
    assert float(d[0] @ d[1]) > float(x[0] @ x[1])  # the two close vectors moved closer
