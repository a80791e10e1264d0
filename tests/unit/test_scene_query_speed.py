"""The vectorised pieces of a scene query (bench/bench_scene.py) give what the slow ones gave:
the top k by a partition (not a sort of every image), the records' rows in the class
probabilities (no dict of every id per query), one BLAS thread while scoring, and the
model names without reading every record."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cbir import scenes
from cbir.collection import Collection


@pytest.mark.parametrize("seed", range(6))
def test_top_k_is_the_stable_argsort_prefix(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    s = np.round(rng.random(n), int(rng.integers(1, 4)))  # many ties
    if seed % 2:
        s[rng.random(n) < 0.3] = -np.inf  # filtered out
    if seed == 3:
        s[:] = 0.0  # all tied
    if seed == 5:
        s[rng.integers(0, n)] = np.nan  # falls back to the sort; NaN last as there
    for k in (1, 2, 20, 100, n, n + 3):
        want = np.argsort(-s, kind="stable")[:k]
        np.testing.assert_array_equal(scenes._top_k(s, k), want)
    s32 = s.astype(np.float32)
    np.testing.assert_array_equal(scenes._top_k(s32, 20), np.argsort(-s32, kind="stable")[:20])


def test_rows_in_matches_a_dict_of_ids_and_is_kept_with_the_posteriors(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    rec_ids = np.sort(rng.choice(100_000, 5000, replace=False))
    recs = [SimpleNamespace(id=int(i)) for i in rec_ids]
    ids = rng.permutation(np.concatenate([rec_ids[rng.random(len(rec_ids)) < 0.9],
                                          rng.integers(100_000, 200_000, 300)]))
    pos = {int(i): r for r, i in enumerate(ids)}  # what _merged_search built per query
    want = np.array([pos.get(int(r.id), -1) for r in recs])
    np.testing.assert_array_equal(scenes._rows_in(recs, ids), want)  # not cached: computed
    monkeypatch.setattr(scenes, "_POSTERIORS", {"c": ((1,), (recs, None), {"ids": rec_ids})})
    first = scenes._rows_in(recs, ids)
    np.testing.assert_array_equal(first, want)
    assert scenes._rows_in(recs, ids) is first  # the next query reuses it
    assert scenes._rows_in(recs, ids.copy()) is not first  # other class probabilities: again
    assert scenes._record_ids(recs) is rec_ids
    np.testing.assert_array_equal(scenes._rows_in(recs, np.zeros(0, np.int64)), np.full(len(recs), -1))


def test_scoring_with_one_blas_thread_gives_the_same_numbers() -> None:
    from threadpoolctl import threadpool_info

    from cbir.concepts.relevance import multi_relevance

    rng = np.random.default_rng(1)
    post = np.asfortranarray(rng.random((200_000, 60), dtype=np.float32))  # as the store maps it
    ctx = SimpleNamespace(indices=np.array([3, 7, 11, 19, 23, 40, 41, 59]), weights=rng.random(8))
    before = [i["num_threads"] for i in threadpool_info()]
    want = multi_relevance(ctx, post)
    with scenes._one_blas_thread():
        got = multi_relevance(ctx, post)
    np.testing.assert_array_equal(got, want)
    assert [i["num_threads"] for i in threadpool_info()] == before  # restored


def test_model_names_are_those_listed_without_reading_the_records(tmp_path) -> None:
    with Collection.create_or_open(tmp_path / "c", "colorhist") as col:
        assert scenes._model_names(col) == []
        d = scenes.concepts_dir(col)
        d.mkdir()
        (d / "zeta.json").write_text("{not json")
        (d / "alpha.json").write_text("{}")
        (d / "alpha.posteriors").write_bytes(b"x")
        assert scenes._model_names(col) == [m["name"] for m in scenes.list_concept_models(col)]
        assert scenes._model_names(col) == ["alpha", "zeta"]
