"""The SSIR scene model end to end on synthetic data: train, score, fall back, save, load."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.errors import CollectionError, InvalidRequest

pytest.importorskip("torch")

CONCEPTS = ["sky", "water", "boat", "tree"]


class ToyVectors:
    """Random but fixed 8-d vectors for the concept words and some noise words."""

    name = "toy"
    dim = 8

    def __init__(self):
        rng = np.random.default_rng(42)
        self.table = {w: rng.normal(size=8).astype(np.float32)
                      for w in [*CONCEPTS, "nikon", "holiday", "2008"]}

    def vector(self, tag):
        return self.table.get(tag)

    def known(self, tag):
        return tag in self.table

    def encode(self, tags):
        rows = [self.table[t] for t in tags if t in self.table]
        return np.stack(rows) if rows else np.zeros((0, 8), np.float32)


def _data(n=400, seed=0):
    """Features = noisy sum of per-concept directions; tags = concepts kept w.p. 0.7 + noise."""
    dirs = np.random.default_rng(123).normal(size=(len(CONCEPTS), 32))  # the same world every call
    rng = np.random.default_rng(seed)
    m = rng.random((n, len(CONCEPTS))) < 0.4
    m[m.sum(axis=1) == 0, 0] = True
    x = m @ dirs + 0.8 * rng.normal(size=(n, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    concepts = [[CONCEPTS[j] for j in np.flatnonzero(r)] for r in m]
    tags = [[c for c in cs if rng.random() < 0.7] + ["nikon"] for cs in concepts]
    return x.astype(np.float32), concepts, tags, m


@pytest.fixture(scope="module")
def trained():
    from cbir.concepts.scene_model import train_scene_model

    x, concepts, tags, _ = _data()
    model, vpost, val_m = train_scene_model(x, concepts, tags, vectors=ToyVectors(), name="toy",
                                            min_support=3, classifier_kw={"epochs": 30})
    return model


def test_training_builds_every_part(trained):
    m = trained
    assert m.concepts == sorted(CONCEPTS)
    assert m.vocabulary.n_itemsets >= 4 + 6  # the four singles and the six pairs all co-occur
    assert m.text is not None and m.tag_vectors == "toy"
    assert m.weights.shape == (4,) and m.weights.sum() == pytest.approx(1) and (m.weights >= 0).all()
    assert m.calibration is not None and len(m.calibration) == 4
    assert m.meta["fusion"]["queries"] > 0


def test_scene_scores_rank_images_with_all_concepts_first(trained):
    x, concepts, tags, truth = _data(200, seed=1)
    post = trained.posteriors(x, tags, ToyVectors())
    for query in (["sky"], ["sky", "water"], ["water", "boat", "tree"]):
        s = trained.score(query, post)
        idx = [trained.concepts.index(c) for c in query]
        rel = truth[:, [CONCEPTS.index(c) for c in query]].all(axis=1)
        top = np.argsort(-s)[: max(int(rel.sum()), 1)]
        assert rel[top].mean() > 0.7, (query, rel[top].mean())
        assert idx  # the query names are in the vocabulary


def test_untagged_images_fall_back_to_visual_evidence(trained):
    x, _, tags, truth = _data(100, seed=2)
    empty = [[] for _ in tags]
    post = trained.posteriors(x, empty, ToyVectors())
    assert not post.has_text.any()
    s = trained.score(["sky"], post)
    rel = truth[:, CONCEPTS.index("sky")]
    assert s[rel].mean() > s[~rel].mean()
    visual_only = trained.posteriors(x)  # no text branch input at all: same ranking
    np.testing.assert_allclose(trained.score(["sky"], visual_only), s, rtol=1e-6)


def test_save_and_load_give_the_same_scores(trained, tmp_path):
    from cbir.concepts.scene_model import SceneModel

    trained.save(tmp_path)
    back = SceneModel.load(tmp_path, "toy")
    x, _, tags, _ = _data(50, seed=3)
    a = trained.score(["sky", "boat"], trained.posteriors(x, tags, ToyVectors()))
    b = back.score(["sky", "boat"], back.posteriors(x, tags, ToyVectors()))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert back.k_rc == trained.k_rc and back.calibration == trained.calibration
    with pytest.raises(InvalidRequest, match="exists"):
        trained.save(tmp_path)
    (tmp_path / "toy.safetensors").write_bytes(b"garbage")
    with pytest.raises(CollectionError, match="do not match"):
        SceneModel.load(tmp_path, "toy")


def test_too_few_labelled_images_are_refused():
    from cbir.concepts.scene_model import train_scene_model

    x, concepts, _, _ = _data(30)
    with pytest.raises(InvalidRequest, match="carry a concept"):
        train_scene_model(x, [[] for _ in concepts[:25]] + concepts[25:], None)
