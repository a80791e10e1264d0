"""Issue 11: one probability scale for tagged and untagged images, sigmoid text head, seeded training."""

from __future__ import annotations

import numpy as np
import pytest
from test_scene_model import CONCEPTS, ToyVectors, _data

from cbir.concepts.fusion import MIN_VISUAL, LogOddsFusion, fit_logistic, fit_logodds_fusion, sample_weights
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


def _partial_match_data(rng, n, drop):
    """Tagged validation rows of 2-concept queries: the text head gives a concept missing from
    the tags a fair probability (co-occurrence), so the text terms alone cannot tell a partial
    match from a full one; ``drop``: the chance a user left a true concept out of the tags."""
    y = rng.random(n) < 0.3
    true_missing = np.where(y, 0, 1 + (rng.random(n) < 0.3))  # irrelevant rows lack 1 or 2 concepts
    missing = np.where(y, (rng.random((n, 2)) < drop).sum(axis=1), true_missing).astype(float)
    comp = np.empty((n, 4))
    comp[:, 0] = np.clip(np.where(y, 0.6, 0.4) + 0.2 * rng.normal(size=n), 0.01, 0.99)
    comp[:, 1] = comp[:, 0]
    comp[:, 2] = np.clip(0.5 + 0.3 * rng.normal(size=n), 0.01, 0.99)  # uninformative text head
    comp[:, 3] = np.clip(0.5 + 0.3 * rng.normal(size=n), 0.01, 0.99)
    return comp, y, missing


def test_concepts_missing_from_complete_tags_count_against_an_image():
    rng = np.random.default_rng(1)
    comp, y, missing = _partial_match_data(rng, 3000, drop=0.0)
    fus = fit_logodds_fusion(comp, y.astype(int), None, np.ones(len(y), bool), missing=missing)
    assert fus.joint is not None and fus.joint[4] < -2.0, fus  # complete tags: a missing concept is decisive
    # a tagged image whose tags lack one query concept ranks below an untagged one that shows it,
    # even with strong visual evidence and a text head that guesses the concept
    both = np.array([[0.9, 0.9, 0.6, 0.6], [0.9, 0.9, 0.0, 0.0]])
    s = fus.score(both, np.array([True, False]), np.array([1.0, 0.0]))
    assert s[0] < s[1], s
    # without the count (older models, or tags not known) the fusion is what it was
    old = LogOddsFusion(fus.visual, fus.joint[:4])
    assert old.joint[4] == 0.0
    np.testing.assert_allclose(old.score(both, np.array([True, False])),
                               old.score(both, np.array([True, False]), np.array([1.0, 0.0])))
    assert LogOddsFusion.from_dict({"visual": list(fus.visual), "joint": list(fus.joint[:4])}) == old


def test_sparse_tags_make_a_missing_concept_count_less():
    rng = np.random.default_rng(2)
    fits = {}
    for drop in (0.0, 0.5):
        comp, y, missing = _partial_match_data(rng, 3000, drop)
        fits[drop] = fit_logodds_fusion(comp, y.astype(int), None, np.ones(len(y), bool), missing=missing)
    assert fits[0.5].joint[4] > fits[0.0].joint[4]  # users who tag sparsely: an absent tag says less
    assert fits[0.5].joint[4] <= 0.0


def test_trained_model_counts_missing_tags_at_query_time(model):
    x, _, tags, _ = _data(60, seed=5)
    post = model.posteriors(x, tags, ToyVectors())
    assert post.tag_concepts is not None and post.tag_concepts.shape == (60, len(model.concepts))
    q = model.query(["sky", "water"])
    miss = post.missing_tags(q)
    want = [sum(c not in set(t) for c in ("sky", "water")) if h else 0
            for t, h in zip(tags, post.has_text, strict=True)]
    np.testing.assert_array_equal(miss, want)
    assert post.take(np.arange(5)).missing_tags(q).tolist() == want[:5]


def test_context_never_weighs_more_than_the_images_own_evidence():
    """SSIR's context term r_m (concept sets related to the query) is informative, here more
    than the image's own evidence r_s; the fit still keeps w1 >= w2, so an image with ~0
    evidence for the concept (no sky in a "sky" query, only water) stays below one that
    shows it with a weak context."""
    rng = np.random.default_rng(3)
    n = 3000
    y = rng.random(n) < 0.3
    comp = np.full((n, 4), 0.5)
    comp[:, 0] = np.clip(np.where(y, 0.6, 0.4) + 0.25 * rng.normal(size=n), 0.001, 0.999)
    comp[:, 1] = np.clip(np.where(y, 0.9, 0.2) + 0.1 * rng.normal(size=n), 0.001, 0.999)
    lg = np.log(comp[:, :2] / (1 - comp[:, :2]))
    _, free = fit_logistic(lg, y.astype(float), sample_weights(y, None), np.zeros(2))
    assert free[1] > free[0]  # unconstrained, the stronger context term would weigh more ...
    fus = fit_logodds_fusion(comp, y.astype(int), None, np.zeros(n, bool))
    w1, w2 = fus.visual[1:]
    assert w1 >= w2 - 1e-9 and w2 > 0, fus.visual  # ... but the context never outweighs r_s
    shows, context_only = [0.8, 0.3, 0.5, 0.5], [0.01, 0.99, 0.5, 0.5]
    s = fus.score(np.array([shows, context_only]), np.zeros(2, bool))
    assert s[0] > s[1], s
    unconstrained = LogOddsFusion((fus.visual[0], float(free[0]), float(free[1])))
    s = unconstrained.score(np.array([shows, context_only]), np.zeros(2, bool))
    assert s[0] < s[1], s  # what the constraint prevents


def test_scores_carry_the_querys_prior(model):
    """The fusion is fitted with every query's positives weighing as much as its negatives
    (eq. 17), i.e. at odds of 1:1; the score adds the query's prior log-odds on the training
    images, so a probability means the same for every word (and next to a built-in word)."""
    from cbir.concepts.calibration import apply_calibration

    m = model.train_concepts
    for words in (["sky"], ["sky", "water"]):
        q = model.query(words)
        pi = m[:, list(q)].all(axis=1).mean()
        assert 0 < pi < 1 and model.prior_logodds(q) == pytest.approx(np.log(pi / (1 - pi)))
    unseen = model.with_settings()  # a query no training image holds counts half an image
    unseen.train_concepts = np.zeros_like(m)
    assert unseen.prior_logodds(q) == pytest.approx(np.log(0.5 / (m.shape[0] - 0.5)))
    x, _, tags, _ = _data(30, seed=7)
    post = model.posteriors(x, tags, ToyVectors())
    q = model.query(["sky", "water"])
    cal = apply_calibration(model.components(q, post), model.calibration, len(q))
    z = model.logodds.logodds(cal, post.has_text, post.missing_tags(q)) + model.prior_logodds(q)
    np.testing.assert_allclose(model.score(q, post), 1 / (1 + np.exp(-z)))
