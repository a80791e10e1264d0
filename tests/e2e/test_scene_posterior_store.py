"""Scene queries read stored concept posteriors (issue 11, part 4): written once, reused,
brought up to date for added or re-tagged images only, dropped when the model changes."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.collection import Collection
from cbir.indexing import index_paths
from cbir.scenes import _POSTERIORS, collection_posteriors, load_concept_model, scene_search, train_concepts
from scene_photos import colour_photo, make_tagged_photos

pytest.importorskip("torch")


def _fresh(col, model):
    """The posteriors computed from scratch, as before the store existed."""
    from cbir.scenes import _records_and_features, model_vectors

    recs, feats = _records_and_features(col)
    tags = [r.tags for r in recs] if model.text is not None else None
    return recs, model.posteriors(feats, tags, model_vectors(col, model))


def _same(col, model):
    _POSTERIORS.clear()  # as a new process would
    recs, post = collection_posteriors(col, model)
    want_recs, want = _fresh(col, model)
    assert [r.id for r in recs] == [r.id for r in want_recs]
    for name in ("visual_single", "visual_multi", "text_single", "text_multi", "has_text", "tag_concepts"):
        a, b = getattr(post, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                                       rtol=1e-6, atol=1e-7, err_msg=name)
    return post


def test_posteriors_are_stored_reused_and_updated(tmp_path):
    photos = tmp_path / "photos"
    make_tagged_photos(photos, n_tagged=48, n_untagged=6)
    coll = tmp_path / "coll"
    with Collection.create_or_open(coll, "colorhist") as col, col.writer_lock():
        index_paths(col, [photos], progress=False)
        train_concepts(col, vectors=None, min_support=3)
        model = load_concept_model(col)
        store = coll / "concepts" / "scenes.posteriors"
        assert store.exists()  # written by training: the first query does not compute them
        mtime = store.stat().st_mtime_ns
        _POSTERIORS.clear()
        first = scene_search(col, "red blue", k=10)
        assert store.stat().st_mtime_ns == mtime
        _same(col, model)
        _POSTERIORS.clear()
        again = scene_search(col, "red blue", k=10)
        assert store.stat().st_mtime_ns == mtime  # read, not rewritten
        assert [h.id for h in again.hits] == [h.id for h in first.hits]
        assert [h.score for h in again.hits] == pytest.approx([h.score for h in first.hits], rel=1e-6)

        # two images added and one re-tagged: the store follows
        rng = np.random.default_rng(9)
        colour_photo(photos / "new0.png", ["red", "blue"], rng)
        colour_photo(photos / "new1.png", ["green"], rng)
        side = photos / "img000.txt"
        side.write_text("yellow, nikon")
        index_paths(col, [photos], progress=False)
        post = _same(col, model)
        assert len(post) == 56
        assert store.stat().st_mtime_ns != mtime
        # a removed image leaves it
        from cbir.indexing import remove_paths

        remove_paths(col, [photos / "new1.png"])
        assert len(_same(col, model)) == 55

        # a model trained again makes the stored posteriors stale: recomputed, not reused
        train_concepts(col, vectors=None, min_support=3, overwrite=True, seed=1)
        model2 = load_concept_model(col)
        _same(col, model2)


def test_a_damaged_store_is_recomputed(tmp_path):
    photos = tmp_path / "photos"
    make_tagged_photos(photos, n_tagged=30, n_untagged=3)
    coll = tmp_path / "coll"
    with Collection.create_or_open(coll, "colorhist") as col, col.writer_lock():
        index_paths(col, [photos], progress=False)
        train_concepts(col, vectors=None, min_support=3)
        model = load_concept_model(col)
        scene_search(col, "red", k=3)
        store = coll / "concepts" / "scenes.posteriors"
        data = bytearray(store.read_bytes())
        store.write_bytes(bytes(data[: len(data) // 3]))  # truncated
        _same(col, model)
        store.write_bytes(b"garbage" * 10)
        _same(col, model)
