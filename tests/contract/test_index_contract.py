"""One contract suite over every registered VectorIndex backend.

Cases come from ``INDEXES.names()``, so a new backend is covered as soon as it
registers. ``CASES`` only adds test-sized params, extra add/search keywords (the
class-partitioned backend needs classes / query_probs) and a recall floor; a backend
without an entry runs with defaults and must reach DEFAULT_RECALL.

Approximate results are compared with exact brute force on clustered gaussian data,
tie-tolerantly: a returned id counts as a hit when its true inner product is at least
the true k-th best score minus 1e-5 (the idea of faiss contrib/evaluation.py).

A backend that keeps approximate vectors and re-scores from a ``VectorSource`` (``hnsw`` with
``dtype="int8"``) runs with ``Case.source``: a ``RecordingSource`` holds every vector the test
added, as a collection's catalog does, so the same exact-score contract applies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from faiss.contrib.evaluation import check_ref_knn_with_draws

from cbir.errors import IndexMismatch, InvalidRequest, UnknownComponent
from cbir.index import INDEXES, VectorIndex, choose_index, create_index, load_index
from cbir.index.base import FORMAT_VERSION, MAGIC

DIM = 64
N_CLASSES = 12
DEFAULT_RECALL = 0.9
Kw = Callable[[np.ndarray], dict[str, Any]]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@functools.cache
def _head(dim: int) -> np.ndarray:
    """A fixed linear "classifier" (N_CLASSES, dim): a predicted class for every vector and
    class probabilities for every query, as the CNN's ImageNet head gives real features."""
    return _unit(np.random.default_rng(dim).standard_normal((N_CLASSES, dim)))


def _classes(x: np.ndarray) -> dict[str, Any]:
    return {"classes": (x @ _head(x.shape[1]).T).argmax(1)}


def _probs(q: np.ndarray) -> np.ndarray:
    logits = 8.0 * (q @ _head(q.shape[1]).T)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _all_partitions(q: np.ndarray) -> dict[str, Any]:
    return {"query_probs": _probs(q), "n_partitions": N_CLASSES}


def _none(_: np.ndarray) -> dict[str, Any]:
    return {}


@dataclass
class Case:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    add_kw: Kw = _none
    search_kw: Kw = _none
    min_recall: float = DEFAULT_RECALL
    variant: str = ""
    #: attach a RecordingSource (the backend re-scores from exact vectors it does not keep)
    source: bool = False

    def make(self, dim: int = DIM) -> VectorIndex:
        index = create_index(self.name, dim, **self.params)
        if self.source:
            src = RecordingSource()
            add = index.add

            def recording_add(ids: Any, vectors: Any, **kw: Any) -> None:
                # in the source first, as a catalog commits rows before the index syncs them
                before = dict(src.vectors)
                src.record(ids, vectors)
                try:
                    add(ids, vectors, **kw)
                except Exception:
                    src.vectors = before
                    raise

            index.add = recording_add  # type: ignore[method-assign]
            index.use_vector_source(src)  # type: ignore[attr-defined]
            index.test_source = src  # type: ignore[attr-defined]
        return index

    def adopt(self, loaded: VectorIndex, original: VectorIndex) -> VectorIndex:
        """A loaded copy of ``original`` reads the same source."""
        if self.source:
            loaded.use_vector_source(original.test_source)  # type: ignore[attr-defined]
        return loaded

    @property
    def id(self) -> str:
        return self.name + (f"[{self.variant}]" if self.variant else "")


class RecordingSource:
    """Exact vectors by id, as the test added them: what a collection's catalog is to an index."""

    def __init__(self) -> None:
        self.vectors: dict[int, np.ndarray] = {}

    def record(self, ids: Any, vectors: Any) -> None:
        ids, vectors = np.asarray(ids).reshape(-1), np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 2 and len(ids) == len(vectors):  # else add() refuses it
            for i, v in zip(ids.tolist(), vectors, strict=True):
                self.vectors[int(i)] = v.copy()

    def __call__(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        known = [int(i) for i in ids if int(i) in self.vectors]
        dim = next(iter(self.vectors.values())).shape[0] if self.vectors else 0
        return (np.array(known, dtype=np.int64),
                np.array([self.vectors[i] for i in known], dtype=np.float32).reshape(len(known), dim))


#: test-sized settings per backend; "variants" add extra cases for the same backend
CASES: dict[str, list[Case]] = {
    "exact": [Case("exact", min_recall=1.0)],
    # nlist small enough that the 2000-vector sets already train the IVF
    "ivf": [
        Case("ivf", {"nlist": 32, "nprobe": 8}, min_recall=0.9, variant="flat"),
        Case("ivf", {"nlist": 8, "nprobe": 4, "pq_m": 16, "pq_nbits": 5, "k_factor": 16},
             min_recall=0.9,
             variant="pq+refine"),
    ],
    "hnsw": [
        Case("hnsw", {"M": 16, "ef_construction": 40, "ef_search": 64}, min_recall=0.95),
        # 8-bit codes walked, candidates re-scored from the exact vectors
        Case("hnsw", {"M": 16, "ef_construction": 40, "ef_search": 64, "dtype": "int8"},
             min_recall=0.95, variant="int8", source=True),
    ],
    "class-partitioned": [
        Case("class-partitioned", add_kw=_classes, search_kw=_all_partitions, min_recall=1.0)
    ],
    # a real Milvus server (the session fixture milvus_uri exports $CBIR_MILVUS_URI); its test
    # config searches not-yet-sealed data by brute force, so results are exact
    # (one case: every test loads a Milvus collection, ~2 s). Searches filter on all classes
    # (``top_class in [...]``); test_search_by_stored_vector_* runs the unfiltered path
    "milvus": [
        Case("milvus", {"index_type": "HNSW", "M": 16, "ef_construction": 64}, add_kw=_classes,
             search_kw=_all_partitions, min_recall=0.95),
    ],
}
#: backends whose cases need the session's Milvus server
NEEDS_MILVUS = {"milvus"}


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread() -> Any:
    """Run FAISS on one OpenMP thread here, restored afterwards: on a shared 2-core box,
    libgomp's spin-waiting made this suite 25 s instead of 3.5 s (OMP_WAIT_POLICY=PASSIVE
    fixes it too, but only if set before FAISS loads)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _cases() -> list[Any]:
    out = []
    for name in INDEXES.names():
        for case in CASES.get(name, [Case(name)]):
            out.append(pytest.param(case, id=case.id))
    return out


@pytest.fixture(params=_cases())
def case(request: pytest.FixtureRequest) -> Case:
    if request.param.name in NEEDS_MILVUS:
        request.getfixturevalue("milvus_uri")
    return request.param


def _clustered(n: int, dim: int, seed: int, n_clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim))
    x = centers[rng.integers(0, n_clusters, n)] + 0.8 * rng.standard_normal((n, dim))
    return _unit(x)


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    """(ids (2000,) int64 spread out and shuffled, vectors (2000, DIM) float32)."""
    rng = np.random.default_rng(1)
    ids = rng.permutation(np.arange(2000, dtype=np.int64) * 7 + 3)
    return ids, _clustered(2000, DIM, seed=2)


def _add(index: VectorIndex, case: Case, ids: np.ndarray, x: np.ndarray) -> None:
    index.add(ids, x, **case.add_kw(x))


def _search(index: VectorIndex, case: Case, q: np.ndarray, k: int, **kw: Any):
    return index.search(q, k, **case.search_kw(q), **kw)


def tolerant_recall(
    x: np.ndarray, q: np.ndarray, found: np.ndarray, k: int, row_of: dict[int, int]
) -> float:
    """Mean over queries of |returned ids whose true score >= true k-th score - 1e-5| / k."""
    truth = q @ x.T
    kth = -np.partition(-truth, k - 1, axis=1)[:, k - 1]
    hits = 0
    for qi, row in enumerate(found[:, :k]):
        rows = [row_of[int(i)] for i in row if i >= 0]
        hits += int((truth[qi, rows] >= kth[qi] - 1e-5).sum())
    return hits / (k * len(q))


# ------------------------------------------------------------------------------ the contract


def test_registered_and_follows_protocol(case: Case) -> None:
    index = case.make()
    assert isinstance(index, VectorIndex)
    assert index.name == case.name and index.dim == DIM and len(index) == 0
    assert isinstance(index.params, dict)
    assert case.name in INDEXES


def test_add_then_search_finds_each_vector_first(case: Case, small) -> None:
    ids, x = small
    index = case.make()
    _add(index, case, ids, x)
    assert len(index) == len(ids)
    q = x[:50]
    scores, found = _search(index, case, q, 5)
    assert scores.shape == found.shape == (50, 5)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "rows must be sorted best first"
    assert np.mean(found[:, 0] == ids[:50]) >= 0.95
    row_of = {int(i): r for r, i in enumerate(ids)}
    true = np.einsum("qd,qkd->qk", q, x[[[row_of[int(i)] for i in r] for r in found]])
    np.testing.assert_allclose(scores, true, atol=1e-4)


def test_remove_never_returns_removed_ids(case: Case, small) -> None:
    ids, x = small
    index = case.make()
    _add(index, case, ids, x)
    gone = ids[::3]
    assert index.remove(np.concatenate([gone, [10**12, 10**12 + 1]])) == len(gone)
    assert index.remove(gone) == 0  # already gone: ignored
    assert len(index) == len(ids) - len(gone)
    np.testing.assert_array_equal(index.ids(), np.setdiff1d(ids, gone))
    _, found = _search(index, case, x[::3][:100], 10)  # queries are the removed vectors
    assert not np.isin(found, gone).any()
    # removing everything leaves a working empty index
    index.remove(ids)
    assert len(index) == 0
    scores, found = _search(index, case, x[:2], 3)
    assert (found == -1).all() and np.isneginf(scores).all()


def test_readd_same_id_replaces(case: Case, small) -> None:
    ids, x = small
    index = case.make()
    _add(index, case, ids, x)
    target, new_vec = ids[0], x[-1:]  # id of row 0 now gets the vector of the last row
    _add(index, case, np.array([target]), new_vec)
    assert len(index) == len(ids)
    scores, found = _search(index, case, new_vec, 2)
    assert set(found[0]) == {target, ids[-1]}
    np.testing.assert_allclose(scores[0], [1.0, 1.0], atol=1e-5)
    _, found = _search(index, case, x[:1], 5)  # the old vector is gone
    assert found[0, 0] != target


def test_save_load_round_trip(case: Case, small, tmp_path: Path) -> None:
    ids, x = small
    index = case.make()
    _add(index, case, ids, x)
    index.remove(ids[:100])
    _add(index, case, ids[100:150], x[:50])  # replacements: tombstones / moved ids
    path = tmp_path / "sub" / "index.cbir"
    index.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["index.cbir"], "no temp files left"
    assert path.read_bytes().startswith(MAGIC)
    for loaded in (load_index(path), type(index).load(path), load_index(path, mmap=True)):
        loaded = case.adopt(loaded, index)
        assert type(loaded) is type(index) and loaded.dim == DIM
        assert loaded.params == index.params
        np.testing.assert_array_equal(loaded.ids(), index.ids())
        q = _clustered(30, DIM, seed=5)
        for k in (1, 10):
            s0, i0 = _search(index, case, q, k)
            s1, i1 = _search(loaded, case, q, k)
            np.testing.assert_array_equal(i0, i1)
            np.testing.assert_array_equal(s0, s1)
    index.save(path)  # overwrite in place works too
    assert len(load_index(path)) == len(index)


def test_ids_sorted_and_stable(case: Case, small) -> None:
    ids, x = small
    index = case.make()
    _add(index, case, ids[:700], x[:700])
    _add(index, case, ids[700:], x[700:])
    got = index.ids()
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.sort(ids))
    got[:] = -5  # a copy, not a view into the index
    np.testing.assert_array_equal(index.ids(), np.sort(ids))


def test_k_larger_than_n_pads(case: Case, small) -> None:
    ids, x = small
    index = case.make()
    _add(index, case, ids[:3], x[:3])
    scores, found = _search(index, case, x[:2], 10)
    assert scores.shape == found.shape == (2, 10)
    assert (found[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert set(found[0, :3]) == set(ids[:3]) and np.isfinite(scores[:, :3]).all()


def test_empty_index(case: Case, tmp_path: Path) -> None:
    index = case.make()
    q = _clustered(4, DIM, seed=3)
    scores, found = _search(index, case, q, 5)
    assert scores.shape == (4, 5) and (found == -1).all() and np.isneginf(scores).all()
    assert index.ids().shape == (0,) and index.remove(np.array([1, 2])) == 0
    _add(index, case, np.empty(0, dtype=np.int64), np.empty((0, DIM), dtype=np.float32))
    assert len(index) == 0
    index.save(tmp_path / "empty.cbir")
    assert len(load_index(tmp_path / "empty.cbir")) == 0
    s, i = _search(index, case, q[:0], 5)
    assert s.shape == i.shape == (0, 5)


def test_bad_input_raises_invalid_request(case: Case, small) -> None:
    ids, x = small
    index = case.make()
    with pytest.raises(InvalidRequest, match=rf"shape \(n, {DIM}\).*\(3, {DIM + 1}\)"):
        index.add(ids[:3], np.ones((3, DIM + 1), np.float32), **case.add_kw(x[:3]))
    _add(index, case, ids[:10], x[:10])
    with pytest.raises(InvalidRequest, match=rf"queries must be .*\(n, {DIM}\)"):
        index.search(np.ones((2, DIM - 1), np.float32), 3)
    with pytest.raises(InvalidRequest, match="pass x\\[None, :\\]"):
        index.search(x[0], 3)
    with pytest.raises(InvalidRequest, match="ids must be"):
        index.add(ids[:2], x[:3], **case.add_kw(x[:3]))
    with pytest.raises(InvalidRequest, match="unique"):
        index.add(np.array([1, 1, 2]), x[:3], **case.add_kw(x[:3]))
    with pytest.raises(InvalidRequest, match=">= 0"):
        index.add(np.array([-1, 1, 2]), x[:3], **case.add_kw(x[:3]))
    with pytest.raises(InvalidRequest, match="k must be"):
        index.search(x[:1], 0)
    with pytest.raises(InvalidRequest, match="unknown keyword"):
        index.search(x[:1], 3, no_such_knob=1)
    with pytest.raises(InvalidRequest, match="NaN"):
        index.search(np.full((1, DIM), np.nan, np.float32), 3)
    assert len(index) == 10  # failed calls changed nothing


def test_shared_hints_are_accepted(case: Case, small) -> None:
    """Callers may always pass classes / query_probs; backends that don't use them ignore them."""
    ids, x = small
    index = case.make()
    index.add(ids[:50], x[:50], **{**_classes(x[:50]), **case.add_kw(x[:50])})
    kw = {"query_probs": _probs(x[:5]), **case.search_kw(x[:5])}
    assert index.search(x[:5], 3, **kw)[1].shape == (5, 3)


@pytest.mark.parametrize("qid", [1, 201])
def test_search_by_stored_vector_first_and_last_id(case: Case, qid: int) -> None:
    """Regression: search by a stored image (ids 1 and 201 of a 201-image collection) gave the
    class-partitioned index 0 hits once the query itself was excluded, where exact search gave
    5: the query was alone in its predicted class (201 images over ImageNet's 1000 classes)
    and only that table was scanned. Every backend must return the item itself and k others.
    """
    n, k = 201, 5
    ids = np.arange(1, n + 1, dtype=np.int64)
    x = _clustered(n, DIM, seed=7)
    classes = np.arange(n) % N_CLASSES
    classes[0], classes[-1] = N_CLASSES, N_CLASSES + 1  # each alone in its class
    index = case.make()
    index.add(ids, x, classes=classes)  # a shared hint: every backend accepts it
    probs = np.full((1, N_CLASSES + 2), 0.01 / (N_CLASSES + 1), dtype=np.float32)
    probs[0, classes[qid - 1]] = 0.99
    scores, found = index.search(x[qid - 1 : qid], k + 1, query_probs=probs)  # k + the query
    assert found[0, 0] == qid
    np.testing.assert_allclose(scores[0, 0], 1.0, atol=1e-5)
    others = [int(i) for i in found[0] if i >= 0 and i != qid]
    assert len(others) == len(set(others)) == k, found


@pytest.fixture(scope="module")
def recall_data() -> dict[str, Any]:
    """10k clustered 96-d vectors, 200 held-out queries and exact top-10 scores."""
    dim = 96
    x = _clustered(10_200, dim, seed=7, n_clusters=60)
    ids = np.arange(10_000, dtype=np.int64) * 2 + 1
    return {"dim": dim, "x": x[:10_000], "q": x[10_000:], "ids": ids}


def test_recall_against_exact(case: Case, recall_data: dict[str, Any]) -> None:
    d = recall_data
    index = case.make(d["dim"])
    _add(index, case, d["ids"], d["x"])
    _, found = _search(index, case, d["q"], 10)
    row_of = {int(i): r for r, i in enumerate(d["ids"])}
    recall = tolerant_recall(d["x"], d["q"], found, 10, row_of)
    assert recall >= case.min_recall, f"{case.id}: recall@10 {recall:.3f} < {case.min_recall}"


# ------------------------------------------------------------------------- backend specifics


def test_hnsw_tombstones_compact(small) -> None:
    ids, x = small
    index = create_index("hnsw", DIM, M=16, ef_construction=40, max_tombstones=0.25)
    index.add(ids, x)
    index.remove(ids[:400])  # 20 %: tombstones stay
    assert index.n_tombstones == 400
    index.remove(ids[400:700])  # 35 %: rebuilt
    assert index.n_tombstones == 0 and len(index) == len(ids) - 700
    _, found = index.search(x[:50], 5)
    assert not np.isin(found, ids[:700]).any()
    assert (index.search(x[700:750], 1)[1][:, 0] == ids[700:750]).mean() >= 0.95


def test_ivf_exact_until_trainable_then_trains(small) -> None:
    ids, x = small
    index = create_index("ivf", DIM, nlist=32)  # trains at 39 * 32 = 1248 vectors
    index.add(ids[:1000], x[:1000])
    assert not index.is_trained
    exact = create_index("exact", DIM)
    exact.add(ids[:1000], x[:1000])
    check_ref_knn_with_draws(*exact.search(x[:20], 10), *index.search(x[:20], 10))
    index.add(ids[1000:], x[1000:])
    assert index.is_trained and index.current_nlist == 32
    auto = create_index("ivf", DIM)  # auto nlist ~4*sqrt(n): 2000 vectors stay exact
    auto.add(ids, x)
    assert not auto.is_trained
    with pytest.raises(InvalidRequest, match="pq_m must divide"):
        create_index("ivf", DIM, pq_m=7)


@pytest.mark.parametrize("params", [{}, {"pq_m": 8, "pq_nbits": 3}], ids=["flat", "pq+refine"])
def test_ivf_auto_nlist_retrains_as_collection_grows(small, params) -> None:
    ids, x = small
    # tiny thresholds so the policy shows on 2000 vectors: train at 4*sqrt(n) lists once
    # there are 2 vectors per list, retrain when n has grown ~4x (nlist doubles)
    index = create_index("ivf", DIM, min_points_per_list=2, train_points_per_list=4,
                         nprobe=1000, **params)
    index.add(ids[:400], x[:400])
    first = index.current_nlist
    assert index.is_trained and first == round(4 * np.sqrt(400))
    index.add(ids[400:], x[400:])
    assert index.current_nlist == round(4 * np.sqrt(2000)) >= 2 * first
    np.testing.assert_array_equal(index.ids(), np.sort(ids))
    exact = create_index("exact", DIM)
    exact.add(ids, x)  # nprobe >= nlist: every list is scanned, so results are exact
    s0, i0 = exact.search(x[:20], 5)
    s1, i1 = index.search(x[:20], 5)
    np.testing.assert_array_equal(i0[:, 0], i1[:, 0])
    if not params:
        check_ref_knn_with_draws(s0, i0, s1, i1)


def test_partitioned_needs_classes_and_scans_less(recall_data: dict[str, Any]) -> None:
    d = recall_data
    dim, x, q, ids = d["dim"], d["x"], d["q"], d["ids"]
    classes, probs = _classes(x)["classes"], _probs(q)
    index = create_index("class-partitioned", dim)
    with pytest.raises(InvalidRequest, match="needs classes"):
        index.add(ids, x)
    index.add(ids, x, classes=classes)
    exact = create_index("exact", dim)
    exact.add(ids, x)
    ref = exact.search(q, 10)
    # all partitions == exact search, and so is "no query_probs"
    check_ref_knn_with_draws(*ref, *index.search(q, 10, query_probs=probs, n_partitions=N_CLASSES))
    assert (index.last_scanned == len(ids)).all()
    check_ref_knn_with_draws(*ref, *index.search(q, 10))
    # top-1 class only: scans ~1/N_CLASSES of the vectors
    _, found = index.search(q, 10, query_probs=probs, n_partitions=1)
    sizes = index.partition_sizes()
    np.testing.assert_array_equal(index.last_scanned, [sizes.get(c, 0) for c in probs.argmax(1)])
    assert index.last_scanned.mean() < 0.2 * len(ids)
    with pytest.raises(InvalidRequest, match="query_probs must be"):
        index.search(q, 10, query_probs=probs[:3])


def test_partitioned_unclassified_and_empty_classes(small) -> None:
    ids, x = small
    index = create_index("class-partitioned", DIM)
    classes = np.where(np.arange(len(ids)) % 10 == 0, -1, 2 + np.arange(len(ids)) % 3)
    index.add(ids, x, classes=classes)  # tables -1 (no prediction), 2, 3, 4
    with pytest.raises(InvalidRequest, match=">= 0, or -1"):
        index.add(ids[:1], x[:1], classes=np.array([-2]))
    probs = np.zeros((20, 6), np.float32)
    probs[:, 0] = 1.0  # most probable class 0 has no table: falls through to the best that has
    probs[:, 3] = 0.5
    _, found = index.search(x[:20:2], 1, query_probs=probs[:10])
    unclassified = np.flatnonzero(classes == -1)
    assert (index.last_scanned == (classes == 3).sum() + unclassified.size).all()
    # the unclassified table is always scanned: its vectors find themselves
    _, found = index.search(x[unclassified[:10]], 1, query_probs=probs[:10])
    np.testing.assert_array_equal(found[:, 0], ids[unclassified[:10]])


# ------------------------------------------------------------------------- factories, files


def test_create_index_unknown_name_lists_backends() -> None:
    with pytest.raises(UnknownComponent, match="exact"):
        create_index("no-such-index", DIM)


def test_choose_index_picks_registered_backends() -> None:
    assert choose_index(0) == "exact" and choose_index(1000) == "exact"
    for n in (10**4, 10**5, 10**6, 10**8):
        assert choose_index(n) in INDEXES


def test_load_rejects_foreign_and_future_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.cbir"
    bad.write_bytes(b"not an index at all")
    with pytest.raises(IndexMismatch, match="not a cbir index"):
        load_index(bad)
    index = create_index("exact", DIM)
    index.add(np.arange(3), _clustered(3, DIM, seed=4))
    good = tmp_path / "good.cbir"
    index.save(good)
    raw = good.read_bytes()
    future = raw.replace(
        f'"format_version": {FORMAT_VERSION}'.encode(), f'"format_version": {FORMAT_VERSION + 1}'.encode()
    )
    bad.write_bytes(future)
    with pytest.raises(IndexMismatch, match="format version"):
        load_index(bad)
    bad.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(IndexMismatch, match="truncated|wrong length|corrupt"):
        load_index(bad)
    with pytest.raises(IndexMismatch, match="not 'hnsw'"):
        INDEXES.get("hnsw").load(good)
    with pytest.raises(InvalidRequest, match="no such index file"):
        load_index(tmp_path / "missing.cbir")


def test_hnsw_int8_without_source_scores_approximately(small) -> None:
    ids, x = small
    index = create_index("hnsw", DIM, M=16, ef_construction=40, dtype="int8")
    index.add(ids, x)
    assert not index.exact_scores
    scores, found = index.search(x[:50], 5)
    row_of = {int(i): r for r, i in enumerate(ids)}
    true = np.einsum("qd,qkd->qk", x[:50], x[[[row_of[int(i)] for i in r] for r in found]])
    err = np.abs(scores - true)
    assert err.max() < 0.02 and err.max() > 1e-6, "8-bit scores: close, but not the exact ones"
    index.use_vector_source(RecordingSource())  # a source that knows nothing drops every hit
    assert index.exact_scores
    _, found = index.search(x[:5], 5)
    assert (found == -1).all()


def test_hnsw_int8_retrains_ranges_trained_on_a_few_vectors(small) -> None:
    """The first add of 10 vectors sets the 8-bit ranges; growing 4x trains them again from the
    source's exact vectors, so a collection started small is not stuck with clipped ranges."""
    ids, x = small
    case = Case("hnsw", {"M": 16, "ef_construction": 40, "dtype": "int8"}, source=True)
    index = case.make()
    index.add(ids[:10], x[:10] * 0.2)  # narrow ranges: later vectors would clip
    assert index._state()["trained_on"] == 10
    index.add(ids[10:], x[10:])
    assert index._state()["trained_on"] == len(ids)
    index.use_vector_source(None)  # the 8-bit scores alone are now close to the truth
    scores, found = index.search(x[100:150], 1)
    assert np.mean(found[:, 0] == ids[100:150]) >= 0.95
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=0.02)


def test_hnsw_int8_compaction_keeps_ranges_and_ids(small) -> None:
    ids, x = small
    case = Case("hnsw", {"M": 16, "ef_construction": 40, "dtype": "int8", "max_tombstones": 0.2},
                source=True)
    index = case.make()
    index.add(ids, x)
    index.remove(ids[:500])  # 25 % > 20 %: the graph is rebuilt without them
    assert index.n_tombstones == 0 and index._state()["trained_on"] == len(ids)
    scores, found = index.search(x[500:550], 3)
    assert (found[:, 0] == ids[500:550]).all()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert not np.isin(found, ids[:500]).any()
