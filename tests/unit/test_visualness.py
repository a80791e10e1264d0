"""Visualness filter (WDHT section 2.2): cohesion, separation, score; vectorised = brute force."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.concepts.visualness import (
    filter_visual_tags,
    tag_incidence,
    visualness_scores,
    visualness_stats,
)
from cbir.errors import InvalidRequest


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _synthetic(seed: int = 0) -> tuple[np.ndarray, list[list[str]]]:
    """600 random images; 'red' on a tight cluster of 80, 'nice' and 'photo' on random ones."""
    rng = np.random.default_rng(seed)
    n, d = 600, 32
    x = rng.standard_normal((n, d))
    red = rng.choice(n, 80, replace=False)
    x[red] = 4.0 * rng.standard_normal(d) + 0.5 * rng.standard_normal((80, d))
    tags: list[list[str]] = [[] for _ in range(n)]
    for i in red:
        tags[i].append("red")
    for i in rng.choice(n, 80, replace=False):
        tags[i].append("nice")
    for i in rng.choice(n, 300, replace=False):
        tags[i].append("photo")
    return _unit(x), tags


def test_clustered_tag_beats_random_tag() -> None:
    x, tags = _synthetic()
    s = visualness_scores(x, tags)
    assert s["red"] > 0.5  # members nearly parallel, unrelated to the rest
    assert abs(s["nice"]) < 0.05  # a random sample: as alike to each other as to the rest
    assert abs(s["photo"]) < 0.05
    assert filter_visual_tags(x, tags, 1) == ["red"]
    assert filter_visual_tags(x, tags, None, threshold=0.2) == ["red"]


def test_hand_worked_example() -> None:
    # x1 = x2 = (1, 0), x3 = x4 = (0, 1)
    x = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    tags = [["a", "b"], ["a"], ["b"], []]
    st = visualness_stats(x, tags, ["a", "b"])
    # a on {1, 2}: cohesion cos(x1, x2) = 1; separation mean over (1,3),(1,4),(2,3),(2,4) = 0
    # b on {1, 3}: cohesion cos(x1, x3) = 0; separation (1,2)=1, (1,4)=0, (3,2)=0, (3,4)=1 -> 0.5
    np.testing.assert_allclose(st.cohesion, [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(st.separation, [0.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(st.score, [1.0, -0.5], atol=1e-6)
    # centroid distance: mean of all = (.5, .5); a's centroid (1, 0): 1 - 1/sqrt(2)
    np.testing.assert_allclose(st.centroid_distance[0], 1 - 2**-0.5, atol=1e-6)
    assert st.counts.tolist() == [2, 2]
    assert st.ranked() == ["a", "b"]


def test_matches_brute_force_pairwise_means() -> None:
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal((120, 8)))
    tags = [[f"t{j}" for j in rng.choice(6, size=rng.integers(0, 4), replace=False)] for _ in range(120)]
    st = visualness_stats(x, tags, chunk_rows=17)  # several chunks
    for k, t in enumerate(st.vocabulary):
        m = np.array([t in row for row in tags])
        nt = int(m.sum())
        gram = x[m] @ x[m].T
        cohesion = (gram.sum() - nt) / (nt * (nt - 1))
        separation = (x[m] @ x[~m].T).mean()
        assert st.cohesion[k] == pytest.approx(cohesion, abs=1e-5)
        assert st.separation[k] == pytest.approx(separation, abs=1e-5)


def test_normalises_rows_accepts_float16_and_ignores_zero_rows() -> None:
    x, tags = _synthetic(2)
    ref = visualness_scores(x, tags)
    scaled = (x * np.linspace(0.5, 3.0, len(x))[:, None]).astype(np.float16)
    got = visualness_scores(scaled, tags)
    assert got.keys() == ref.keys()
    for t in ref:
        assert got[t] == pytest.approx(ref[t], abs=2e-3)
    padded = np.vstack([x, np.zeros((5, x.shape[1]), np.float32)])
    got = visualness_scores(padded, tags + [["red"]] * 5)
    assert got["red"] == pytest.approx(ref["red"], abs=1e-5)


def test_undefined_scores_are_left_out() -> None:
    x = _unit(np.random.default_rng(3).standard_normal((5, 4)))
    tags = [["all", "once"], ["all", "pair"], ["all", "pair"], ["all"], ["all"]]
    st = visualness_stats(x, tags, ["all", "once", "pair", "unused"])
    assert np.isnan(st.score[[0, 1, 3]]).all()  # every image / one image / none
    assert visualness_scores(x, tags, ["all", "once", "pair"]).keys() == {"pair"}
    assert visualness_stats(x, tags).vocabulary == ["all", "pair"]  # default min_count=2


def test_keep_as_count_fraction_and_threshold() -> None:
    x, tags = _synthetic(4)
    ranked = visualness_stats(x, tags).ranked()
    assert ranked[0] == "red" and len(ranked) == 3
    assert filter_visual_tags(x, tags, 2) == ranked[:2]
    assert filter_visual_tags(x, tags, 0.5) == ranked[:2]  # ceil(0.5 * 3)
    assert filter_visual_tags(x, tags, 1.0) == ranked
    for bad in (0, -1, 0.0, 1.5, True, "half"):
        with pytest.raises(InvalidRequest):
            filter_visual_tags(x, tags, bad)  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    x = np.ones((3, 4), np.float32)
    with pytest.raises(InvalidRequest):
        visualness_scores(x, [["a"], ["a"]])
    with pytest.raises(InvalidRequest):
        visualness_scores(np.ones(3, np.float32), [["a"]] * 3)
    with pytest.raises(InvalidRequest):
        tag_incidence(["abc", ["a"]], ["a"])  # a string, not a list of tags
    with pytest.raises(InvalidRequest):
        visualness_scores(np.full((3, 4), np.nan, np.float32), [["a"]] * 3)


def test_incidence_matrix() -> None:
    a = tag_incidence([["b", "a", "b"], [], ["c", "zzz"]], ["a", "b", "c"])
    assert a.shape == (3, 3)
    assert a.toarray().tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
