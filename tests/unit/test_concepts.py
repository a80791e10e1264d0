"""SSIR math layer: vocabularies (eqs. 1-2), query context (eqs. 5-6), relevance (eqs. 7-13).

Every expected number is worked out by hand in the comments.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import numpy as np
import pytest

from cbir.concepts import (
    ConceptContext,
    ConceptVocabulary,
    QueryContext,
    SceneScorer,
    fuse,
    multi_relevance,
    relevance_components,
    single_relevance,
    to_concept_matrix,
)
from cbir.concepts.vocabulary import frequent_itemsets
from cbir.errors import InvalidRequest

# Seven training images. Concepts sorted by name: a=0, b=1, c=2, d=3, e=4.
#   counts: a 4 (1,2,3,5)  b 4 (1,2,4,5)  c 4 (1,3,4,5)  d 2 (5,6)  e 1 (7)
#   pairs:  ab 3 (1,2,5)  ac 3 (1,3,5)  bc 3 (1,4,5)  ad, bd, cd 1 (5)  e with anything 0
#   triples: abc 2 (1,5); every triple with d: 1 (5).  abcd: 1.
LABELS = [["a", "b", "c"], ["a", "b"], ["a", "c"], ["b", "c"], ["a", "b", "c", "d"], ["d"], ["e"]]
# With s = 2, t = 3: V* = a b c d ab ac bc abc (indices 0..7).
VSTAR = [(0,), (1,), (2,), (3,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]


@pytest.fixture
def vocab() -> ConceptVocabulary:
    return ConceptVocabulary.from_labels(LABELS, max_size=3, min_support=2)


# -- vocabulary (eqs. 1-2) ------------------------------------------------------------------


def test_vocabulary_hand_example(vocab: ConceptVocabulary) -> None:
    assert vocab.concepts == ["a", "b", "c", "d", "e"]
    assert vocab.concept_counts.tolist() == [4, 4, 4, 2, 1]
    assert vocab.itemsets == VSTAR
    assert vocab.supports.tolist() == [4, 4, 4, 2, 3, 3, 3, 2]
    assert vocab.n_images == 7 and vocab.n_concepts == 5 and vocab.n_itemsets == 8


def test_vocabulary_thresholds() -> None:
    # s = 3 drops d (2) and abc (2); t = 2 drops abc; min_count = 3 drops d and e from V.
    v = ConceptVocabulary.from_labels(LABELS, max_size=3, min_support=3)
    assert v.itemsets == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
    assert v.supports.tolist() == [4, 4, 4, 3, 3, 3]
    v = ConceptVocabulary.from_labels(LABELS, max_size=2, min_support=2)
    assert v.itemsets == VSTAR[:-1]
    v = ConceptVocabulary.from_labels(LABELS, min_count=3, max_size=None, min_support=1)
    assert v.concepts == ["a", "b", "c"]
    # s = 1 without size bound: all 7 non-empty subsets of {a, b, c} occur (image 5 has them all).
    assert v.itemsets == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert v.supports.tolist() == [4, 4, 4, 3, 3, 3, 2]


def _brute_force(matrix: np.ndarray, s: int, t: int | None) -> dict[tuple[int, ...], int]:
    c = matrix.shape[1]
    out = {}
    for k in range(1, (t or c) + 1):
        for comb in itertools.combinations(range(c), k):
            n = int(matrix[:, list(comb)].all(axis=1).sum())
            if n >= s:
                out[comb] = n
    return out


@pytest.mark.parametrize("seed", range(6))
def test_apriori_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(1, 60)), int(rng.integers(1, 9))
    matrix = rng.random((n, c)) < rng.uniform(0.2, 0.7)
    for s, t in [(1, None), (2, 2), (3, 3), (5, None), (n + 1, None)]:
        itemsets, supports = frequent_itemsets(matrix, s, t)
        assert dict(zip(itemsets, supports.tolist(), strict=True)) == _brute_force(matrix, s, t)
        assert itemsets == sorted(itemsets, key=lambda x: (len(x), x))


def test_vocabulary_lookups_and_targets(vocab: ConceptVocabulary) -> None:
    assert vocab.query(["b", "a", "a"]) == (0, 1)
    assert vocab.query([2, "a"]) == (0, 2)
    assert vocab.itemset_index([2, 0]) == 5 and vocab.itemset_index([0, 3]) is None
    assert vocab.names((0, 2)) == ["a", "c"]
    with pytest.raises(InvalidRequest, match="unknown concept"):
        vocab.query(["zebra"])
    with pytest.raises(InvalidRequest):
        vocab.query([])
    enc = vocab.encode([["a", "c", "unknown"], []])
    assert enc.tolist() == [[True, False, True, False, False], [False] * 5]
    # image {a, b, c} holds a b c ab ac bc abc; {d} holds d only; {a, c} holds a c ac.
    targets = vocab.itemset_targets([{0, 1, 2}, {3}, {0, 2}])
    assert targets.dtype == np.uint8
    assert targets.tolist() == [[1, 1, 1, 0, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 1, 0, 0]]


def test_concept_matrix_forms() -> None:
    sets = [{0, 2}, set(), {1}]
    m = to_concept_matrix(sets, 3)
    assert m.tolist() == [[True, False, True], [False] * 3, [False, True, False]]
    assert (to_concept_matrix(m.astype(np.uint8), 3) == m).all()
    with pytest.raises(InvalidRequest):
        to_concept_matrix([{3}], 3)
    with pytest.raises(InvalidRequest):
        to_concept_matrix(np.full((2, 3), 2), 3)


def test_vocabulary_json_roundtrip(vocab: ConceptVocabulary, tmp_path) -> None:
    path = tmp_path / "vocab.json"
    vocab.save(path)
    back = ConceptVocabulary.load(path)
    assert back.concepts == vocab.concepts and back.itemsets == vocab.itemsets
    assert back.supports.tolist() == vocab.supports.tolist()
    assert (back.max_size, back.min_support, back.n_images) == (3, 2, 7)
    path.write_text('{"format": "something else"}')
    with pytest.raises(InvalidRequest, match="not a concept vocabulary"):
        ConceptVocabulary.load(path)
    path.write_text("{not json")
    with pytest.raises(InvalidRequest):
        ConceptVocabulary.load(path)


# -- query context (eqs. 5-6) ---------------------------------------------------------------


@pytest.fixture
def context(vocab: ConceptVocabulary) -> ConceptContext:
    return ConceptContext(vocab, vocab.encode(LABELS))


def test_counts(context: ConceptContext) -> None:
    assert context.count(()) == 7
    assert context.count((0, 1, 2)) == 2  # images 1 and 5
    assert context.count((0, 4)) == 0
    assert context.itemset_counts.tolist() == [4, 4, 4, 2, 3, 3, 3, 2]
    # N(Q={a,b}, C) = N(Q ∪ C): a 3, b 3, c (abc) 2, d (abd) 1, ab 3, ac 2, bc 2, abc 2.
    assert context.cooccurrence((0, 1)).tolist() == [3, 3, 2, 1, 3, 2, 2, 2]


def test_relatedness_eq5(context: ConceptContext) -> None:
    # Q = {a, b}, N(Q) = 3.  p = 2 N(Q,C) / (3 + N(C)):
    #   a: 2*3/(3+4) = 6/7   b: 6/7   c: 2*2/(3+4) = 4/7   d: 2*1/(3+2) = 2/5
    #   ab: 2*3/(3+3) = 1 (= p(Q|Q))   ac: 2*2/(3+3) = 2/3   bc: 2/3   abc: 2*2/(3+2) = 4/5
    expected = [6 / 7, 6 / 7, 4 / 7, 2 / 5, 1.0, 2 / 3, 2 / 3, 4 / 5]
    np.testing.assert_allclose(context.relatedness((0, 1)), expected)
    # Symmetric and p(C|C) = 1 for every C in V*.
    for j, c in enumerate(VSTAR):
        assert context.relatedness(c)[j] == pytest.approx(1.0)
    np.testing.assert_allclose(context.relatedness((0,))[1], context.relatedness((1,))[0])


def test_query_context_eq6(context: ConceptContext) -> None:
    # Parts of {a, b} in V*: a(0), b(1), ab(4).  K_rc = 5 -> 2 more, by p descending:
    # abc (4/5), then ac and bc tie at 2/3 -> lower index ac(5).
    # Raw [6/7, 6/7, 1, 4/5, 2/3], over 105: [90, 90, 105, 84, 70], sum 439.
    ctx = context.query_context((0, 1), k_rc=5)
    assert ctx.indices.tolist() == [0, 1, 4, 7, 5]
    assert ctx.is_part.tolist() == [True, True, True, False, False]
    np.testing.assert_allclose(ctx.relatedness, [6 / 7, 6 / 7, 1, 4 / 5, 2 / 3])
    np.testing.assert_allclose(ctx.weights, np.array([90, 90, 105, 84, 70]) / 439)
    # Default K_rc = 8: 3 parts + all 5 others with p > 0: abc, ac, bc, c (4/7), d (2/5).
    assert context.query_context((0, 1)).indices.tolist() == [0, 1, 4, 7, 5, 6, 2, 3]
    # K_rc = 2 < 3 parts: every part is kept, none added; [6/7, 6/7, 1] -> [6, 6, 7] / 19.
    ctx = context.query_context((1, 0), k_rc=2)
    assert ctx.indices.tolist() == [0, 1, 4]
    np.testing.assert_allclose(ctx.weights, np.array([6, 6, 7]) / 19)


def test_query_context_back_off(context: ConceptContext) -> None:
    # {a, e} never occurs (N = 0): every p = 0; its only part in V* is a -> weight 1.
    ctx = context.query_context((0, 4))
    assert ctx.indices.tolist() == [0] and ctx.weights.tolist() == [1.0]
    # {e}: not in V* (count 1 < s) and co-occurs with nothing -> empty context, r_m = 0.
    ctx = context.query_context((4,))
    assert len(ctx) == 0
    assert multi_relevance(ctx, np.ones((3, 8))).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(InvalidRequest):
        context.query_context((0,), k_rc=0)


# -- relevance (eqs. 7-13) ------------------------------------------------------------------

# Three images, C = 3 concepts, M = 4 V* entries; Q = {0, 1}, R_rc = [3, 0] weights [0.75, 0.25].
CTX = QueryContext(
    query=(0, 1),
    indices=np.array([3, 0]),
    weights=np.array([0.75, 0.25]),
    relatedness=np.array([0.9, 0.3]),
    is_part=np.array([True, True]),
)
VS = np.array([[0.9, 0.8, 0.1], [0.5, 0.5, 0.5], [0.2, 0.9, 0.9]])
VM = np.array([[0.4, 0.1, 0.1, 0.6], [0.2, 0.2, 0.2, 0.2], [0.0, 0.5, 0.5, 0.1]])
TS = np.array([[0.6, 0.5, 0.0], [0.1, 0.2, 0.9], [np.nan] * 3])
TM = np.array([[0.2, 0.0, 0.0, 0.8], [0.4, 0.0, 0.0, 0.0], [np.nan] * 4])
HAS_TEXT = np.array([True, True, False])


def test_single_and_multi_relevance() -> None:
    # eq. 10: 0.9*0.8 = 0.72, 0.5*0.5 = 0.25, 0.2*0.9 = 0.18
    np.testing.assert_allclose(single_relevance((0, 1), VS), [0.72, 0.25, 0.18])
    # eq. 11: 0.75*0.6 + 0.25*0.4 = 0.55;  0.75*0.2 + 0.25*0.2 = 0.2;  0.75*0.1 + 0 = 0.075
    np.testing.assert_allclose(multi_relevance(CTX, VM), [0.55, 0.2, 0.075])
    # float16 input is computed in float64
    assert single_relevance((0, 1), VS.astype(np.float16)).dtype == np.float64
    with pytest.raises(InvalidRequest):
        single_relevance((0, 3), VS)


def test_components_and_fusion() -> None:
    comp = relevance_components(CTX, VS, VM, TS, TM, HAS_TEXT)
    # text: eq. 12: 0.6*0.5 = 0.30, 0.1*0.2 = 0.02; eq. 13: 0.75*0.8 + 0.25*0.2 = 0.65, 0.25*0.4 = 0.1
    # image 3 has no tags: its (NaN) text rows are ignored, text terms 0.
    expected = [[0.72, 0.55, 0.30, 0.65], [0.25, 0.2, 0.02, 0.1], [0.18, 0.075, 0.0, 0.0]]
    np.testing.assert_allclose(comp, expected)
    # a = (0.4, 0.3, 0.2, 0.1):
    #   I1: 0.4*0.72 + 0.3*0.55 + 0.2*0.30 + 0.1*0.65 = 0.288 + 0.165 + 0.06 + 0.065 = 0.578
    #   I2: 0.4*0.25 + 0.3*0.2 + 0.2*0.02 + 0.1*0.1 = 0.1 + 0.06 + 0.004 + 0.01 = 0.174
    #   I3 (no tags, visual weights renormalised): (0.4*0.18 + 0.3*0.075) / 0.7 = 0.0945 / 0.7 = 0.135
    np.testing.assert_allclose(fuse(comp, (0.4, 0.3, 0.2, 0.1), HAS_TEXT), [0.578, 0.174, 0.135])
    # a1 + a2 = 0: the untagged image falls back to (r_s + r_m) / 2 = (0.18 + 0.075) / 2 = 0.1275
    # (tagged I1: 0.5*0.30 + 0.5*0.65 = 0.475)
    np.testing.assert_allclose(fuse(comp, (0, 0, 0.5, 0.5), HAS_TEXT), [0.475, 0.06, 0.1275])
    # Without text posteriors the text columns stay 0.
    assert relevance_components(CTX, VS, VM)[:, 2:].tolist() == [[0, 0]] * 3
    for bad in [(0.5, 0.5, 0.5, 0.0), (-0.1, 0.6, 0.25, 0.25), (1.0, 0.0, 0.0)]:
        with pytest.raises(InvalidRequest):
            fuse(comp, bad)
    with pytest.raises(InvalidRequest):
        relevance_components(CTX, VS, VM, TS, None)


def test_scene_scorer(context: ConceptContext) -> None:
    rng = np.random.default_rng(0)
    n = 6
    vs, vm, ts, tm = rng.random((n, 5)), rng.random((n, 8)), rng.random((n, 5)), rng.random((n, 8))
    has_text = np.array([True, False, True, True, False, True])
    w = (0.1, 0.2, 0.3, 0.4)
    scorer = SceneScorer(context, w, k_rc=5)
    got = scorer.score(["b", "a"], vs, vm, ts, tm, has_text)
    # R_rc({a, b}) with K_rc = 5 is [0, 1, 4, 7, 5] with weights [90, 90, 105, 84, 70] / 439.
    cw = np.array([90, 90, 105, 84, 70]) / 439
    rs_i, rm_i = vs[:, 0] * vs[:, 1], vm[:, [0, 1, 4, 7, 5]] @ cw
    rs_t, rm_t = ts[:, 0] * ts[:, 1], tm[:, [0, 1, 4, 7, 5]] @ cw
    full = 0.1 * rs_i + 0.2 * rm_i + 0.3 * rs_t + 0.4 * rm_t
    visual = (0.1 * rs_i + 0.2 * rm_i) / 0.3
    np.testing.assert_allclose(got, np.where(has_text, full, visual))
    # No text at all: visual terms only, renormalised.
    np.testing.assert_allclose(scorer.score(["a", "b"], vs, vm), visual)
    with pytest.raises(InvalidRequest):
        scorer.score(["a"], vs[:, :4], vm)  # C mismatch


def test_vectorised_over_many_images() -> None:
    rng = np.random.default_rng(1)
    n, c, m = 100_000, 20, 300
    vs = rng.random((n, c), dtype=np.float32)
    vm = rng.random((n, m), dtype=np.float32)
    idx, w = np.array([3, 10, 200]), np.array([0.5, 0.3, 0.2])
    ctx = QueryContext((1, 5), idx, w, relatedness=w, is_part=np.zeros(3, bool))
    start = time.perf_counter()
    out = fuse(relevance_components(ctx, vs, vm, vs, vm, rng.random(n) < 0.8), (0.25,) * 4, None)
    assert time.perf_counter() - start < 2.0
    assert out.shape == (n,) and np.isfinite(out).all()


def test_package_import_is_light() -> None:
    code = "import sys, cbir.concepts; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
