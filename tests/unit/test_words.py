"""Built-in word search over stored class probabilities (cbir.words), checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from badfiles import make_good_images
from cbir.collection import Collection
from cbir.errors import InvalidRequest
from cbir.indexing import index_paths
from cbir.scenes import scene_search
from cbir.store.catalog import CLASS_PROBS_K, pack_class_probs, unpack_class_probs
from cbir.words import class_prob_matrix, word_search

GOLDEN, TABBY, SEASHORE, SORREL = 207, 281, 978, 339  # ImageNet class indices


def _probs(**mass: float) -> np.ndarray:
    p = np.full(1000, 1e-5, dtype=np.float32)
    for k, v in mass.items():
        p[int(k[1:])] = v
    return p


def test_pack_keeps_the_top_k_in_order() -> None:
    p = np.random.default_rng(0).dirichlet(np.ones(1000)).astype(np.float32)
    idx, q = unpack_class_probs(pack_class_probs(p))
    assert len(idx) == CLASS_PROBS_K
    np.testing.assert_array_equal(idx, np.argsort(-p, kind="stable")[:CLASS_PROBS_K])
    np.testing.assert_allclose(q, p[idx], rtol=1e-3)


@pytest.fixture
def col(tmp_path: Path) -> Collection:
    """Four images with hand-set class probabilities (as the ImageNet backbone stores them)."""
    paths = make_good_images(tmp_path / "photos", 4)
    c = Collection.create_or_open(tmp_path / "coll", "colorhist")
    with c.writer_lock():
        index_paths(c, [tmp_path / "photos"], progress=False)
    probs = {
        paths[0]: _probs(c207=0.9),                 # a golden retriever
        paths[1]: _probs(c281=0.8),                 # a tabby cat
        paths[2]: _probs(c207=0.5, c978=0.4),       # a dog on the seashore
    }
    for p, q in probs.items():
        c.catalog.db.execute("UPDATE images SET class_probs=? WHERE path=?", (pack_class_probs(q), str(p)))
    # the fourth was indexed before probabilities were stored: its top-5 labels stand in
    c.catalog.db.execute("UPDATE images SET class_probs=NULL, labels=? WHERE path=?",
                         (json.dumps([["sorrel", 0.7], ["seashore, coast, seacoast, sea-coast", 0.2]]),
                          str(paths[3])))
    c.catalog._bump()
    yield c
    c.close()


def _names(res) -> list[str]:
    return [Path(h.path).stem for h in res.hits]


def test_one_word_ranks_by_the_concepts_probability_mass(col: Collection) -> None:
    res = word_search(col, "dog", k=10)
    assert res.model == "builtin" and res.query == ["dog"]
    # dog = the 118 breeds: 0.9 (+ 1e-5 tails) for the first, 0.5 for the third; the cat and
    # the horse only have the 1e-5 tails of their kept classes (tiny but not 0)
    assert [h.evidence["dog"]["visual"] for h in res.hits[:2]] == pytest.approx([0.9, 0.5], abs=1e-3)
    assert _names(res)[:2] == ["good_000", "good_002"]


def test_all_words_must_be_present(col: Collection) -> None:
    res = word_search(col, "dog seashore", k=10)
    # geometric mean: the dog on the shore sqrt(0.5 * 0.4) = 0.447 beats the dog alone
    assert _names(res)[0] == "good_002"
    assert res.hits[0].score == pytest.approx(np.sqrt(0.5 * 0.4), abs=1e-3)
    assert res.hits[0].evidence == {"dog": {"visual": pytest.approx(0.5, abs=1e-3), "text": None},
                                    "seashore": {"visual": pytest.approx(0.4, abs=1e-3), "text": None}}


def test_rows_without_stored_probabilities_use_their_labels(col: Collection) -> None:
    res = word_search(col, "horses", k=1)
    assert _names(res) == ["good_003"] and res.hits[0].evidence["horse"]["visual"] == pytest.approx(0.7)
    assert any("horse" in n for n in res.notes)  # the plural was read as "horse" and said so


def test_scene_search_without_a_trained_model_uses_the_builtin_concepts(col: Collection) -> None:
    res = scene_search(col, "cat", k=1)
    assert res.model == "builtin" and _names(res) == ["good_001"]


def test_matrix_is_cached_per_generation(col: Collection) -> None:
    a = class_prob_matrix(col.catalog)
    assert class_prob_matrix(col.catalog) is a
    col.catalog._bump()
    assert class_prob_matrix(col.catalog) is not a


def test_a_collection_without_class_probabilities_says_what_to_do(tmp_path: Path) -> None:
    make_good_images(tmp_path / "p", 2)
    with Collection.create_or_open(tmp_path / "c", "colorhist") as c:
        with c.writer_lock():
            index_paths(c, [tmp_path / "p"], progress=False)
        with pytest.raises(InvalidRequest, match="no ImageNet class probabilities"):
            word_search(c, "dog")


def test_vectorised_matrix_equals_row_by_row_unpacking(col: Collection) -> None:
    # give the fourth image probabilities too: every row then takes the vectorised path
    p4 = pack_class_probs(_probs(c339=0.6, c978=0.3))
    col.catalog.db.execute("UPDATE images SET class_probs=? WHERE class_probs IS NULL", (p4,))
    col.catalog._bump()
    ids, m = class_prob_matrix(col.catalog)
    _, blobs, _ = col.catalog.class_probs()
    for row, blob in enumerate(blobs):
        idx, q = unpack_class_probs(blob)
        dense = np.zeros(1000, np.float32)
        dense[idx] = q
        np.testing.assert_array_equal(m[row].toarray()[0], dense)
