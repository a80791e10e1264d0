"""Issue 11: one probability scale for tagged and untagged images, sigmoid text head, seeded training."""

from __future__ import annotations

import numpy as np
import pytest
from test_scene_model import CONCEPTS, ToyVectors, _data

from cbir.concepts.fusion import MIN_VISUAL, LogOddsFusion, fit_logodds_fusion
from cbir.concepts.scene_model import ScenePosteriors


def _train(seed=0):
    from cbir.concepts.scene_model import train_scene_model

    x, concepts, tags, _ = _data()
    model, _, _ = train_scene_model(x, concepts, tags, vectors=ToyVectors(), name="toy", seed=seed,
                                    min_support=3, classifier_kw={"epochs": 20})
    return model


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("torch")
    return _train()


def test_untagged_image_with_visual_evidence_outranks_a_tagged_one_without_any(model):
    c = len(model.concepts)
    m = model.vocabulary.n_itemsets
    q = model.query(["sky", "water"])
    vs = np.full((2, c), 1e-4, np.float32)
    vm = np.full((2, m), 1e-4, np.float32)
    vs[0, list(q)] = 0.95  # image 0: untagged, the picture clearly shows sky and water
    vm[0, :] = 0.3
    ts = np.full((2, c), 1e-4, np.float32)  # image 1: tagged, but neither its tags nor its pixels say so
    tm = np.full((2, m), 1e-4, np.float32)
    post = ScenePosteriors(vs, vm, ts, tm, np.array([False, True]))
    s = model.score(q, post)
    assert model.logodds is not None
    assert s[0] > 0.5 > s[1], s
    assert s.min() >= 0 and s.max() <= 1


def test_fusion_never_ignores_visual_evidence():
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.random(n) < 0.3
    comp = np.full((n, 4), 0.5)
    comp[:, 2] = np.where(y, 0.99, 0.01)  # text is a perfect predictor on every validation image ...
    comp[:, 3] = np.where(y, 0.9, 0.1)
    comp[:, 0] = np.clip(np.where(y, 0.6, 0.4) + 0.2 * rng.normal(size=n), 0.01, 0.99)
    comp[:, 1] = comp[:, 0]
    fus = fit_logodds_fusion(comp, y.astype(int), None, np.ones(n, bool))
    assert fus.joint is not None and fus.joint[1] >= MIN_VISUAL - 1e-9  # ... the visual term still counts
    lo = comp[:2].copy()
    lo[:, 2:] = 0.99
    lo[0, :2] = 0.99
    lo[1, :2] = 1e-6
    s = fus.score(lo, np.ones(2, bool))
    assert s[0] > s[1]
    # an untagged image is scored by the visual model alone, on the same probability scale
    assert LogOddsFusion.from_dict(fus.to_dict()) == fus
    assert fus.score(lo, np.zeros(2, bool))[0] == pytest.approx(1 / (1 + np.exp(-fus.visual_logodds(lo)[0])))


def test_text_head_is_multi_label(model):
    assert model.text.single_loss == "sigmoid"
    ts, _, has = model.text.predict([["sky", "water"], ["sky", "water", "nikon"]], ToyVectors())
    assert has.all()
    for row in ts:
        i, j = model.concepts.index("sky"), model.concepts.index("water")
        assert row[i] > 0.5 and row[j] > 0.5, row  # not a softmax split between the two
        assert row.sum() > 1.0


def test_seeded_training_gives_identical_scores(model):
    again = _train()
    x, _, tags, _ = _data(50, seed=3)
    for m in (model, again):
        m._post = m.posteriors(x, tags, ToyVectors())
    for query in (["sky"], ["sky", "water"], CONCEPTS[:3]):
        np.testing.assert_array_equal(model.score(query, model._post), again.score(query, again._post))
    assert model.logodds == again.logodds
