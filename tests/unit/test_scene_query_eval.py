"""Concept-query parsing, query sampling, fusion with fixed-out weights and the scene MAP table."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.concepts.fusion import fit_fusion_weights
from cbir.concepts.query import parse_concept_query, split_terms
from cbir.concepts.scene_model import sample_queries
from cbir.errors import InvalidRequest
from cbir.eval.scenes import NON_VISUAL_WORDS, map_by_size, simulate_noisy_tags

CONCEPTS = ["beach", "boat", "mountain", "sky", "water"]


class ToyVectors:
    """Tag vectors where 'seaside' points almost the same way as 'beach'."""

    name = "toy"
    dim = 3
    table = {
        "beach": [1.0, 0.0, 0.0], "seaside": [0.95, 0.1, 0.0], "boat": [0.0, 1.0, 0.0],
        "mountain": [0.0, 0.0, 1.0], "sky": [0.5, 0.5, 0.5], "water": [0.6, 0.6, 0.0],
        "car": [-1.0, 0.0, 0.0],
    }

    def vector(self, tag):
        v = self.table.get(tag)
        return None if v is None else np.asarray(v, dtype=np.float32)

    def known(self, tag):
        return tag in self.table

    def encode(self, tags):
        return np.stack([self.vector(t) for t in tags if self.known(t)])


def test_split_terms_by_space_or_by_comma_and_plus():
    assert split_terms("sky water  boats") == ["sky", "water", "boats"]
    assert split_terms("polar bear, snow") == ["polar bear", "snow"]
    assert split_terms("sky+sea") == ["sky", "sea"]
    assert split_terms(["sky", " sea "]) == ["sky", "sea"]
    with pytest.raises(InvalidRequest, match="empty"):
        split_terms("  , ")


def test_exact_plural_synonym_and_spelling():
    p = parse_concept_query("Sky boats seaside montain", CONCEPTS, ToyVectors())
    assert p.concepts == ["sky", "boat", "beach", "mountain"]
    how = {t["term"]: t["how"] for t in p.terms}
    assert how == {"Sky": "exact", "boats": "exact", "seaside": "synonym", "montain": "spelling"}
    assert any("'seaside' read as 'beach'" in n for n in p.notes)


def test_duplicates_are_kept_once_and_unknown_concepts_are_refused_with_suggestions():
    assert parse_concept_query("sky skies", CONCEPTS).concepts == ["sky"]
    with pytest.raises(InvalidRequest, match="does not know the concept 'car'"):
        parse_concept_query("sky car", CONCEPTS, ToyVectors())  # car is far from every concept
    assert parse_concept_query("watr", ["water", "sky"]).terms[0]["how"] == "spelling"
    with pytest.raises(InvalidRequest, match="does not know the concept 'wtr'.*closest: water"):
        parse_concept_query("sky wtr", ["water", "sky"])  # too far to guess, close enough to suggest


def test_sample_queries_have_relevant_images_and_are_distinct():
    m = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=bool)
    qs = sample_queries(m, (1, 2, 3, 4), 50, np.random.default_rng(0))
    assert qs[1] == [(0,), (1,), (2,), (3,)]
    # every 2-subset of some image's concepts: {01, 02, 12} from row 0, {23} from row 2
    assert sorted(qs[2]) == [(0, 1), (0, 2), (1, 2), (2, 3)]
    assert qs[3] == [(0, 1, 2)]
    assert qs[4] == []
    for k in (2, 3):
        assert len(set(qs[k])) == len(qs[k])
        assert all(m[:, list(q)].all(axis=1).any() for q in qs[k])


def test_fusion_keeps_inactive_weights_at_zero():
    # component 0 separates the classes, 1 is noise, 2 and 3 would help but are switched off
    rng = np.random.default_rng(0)
    y = np.repeat([1, 0], 50)
    comp = np.column_stack([np.where(y, 0.8, 0.2), rng.uniform(0.1, 0.9, 100),
                            np.where(y, 0.9, 0.1), np.where(y, 0.9, 0.1)])
    res = fit_fusion_weights(comp, y, active=[True, True, False, False])
    assert res.weights[2] == 0 and res.weights[3] == 0
    assert res.weights.sum() == pytest.approx(1.0)
    assert res.weights[0] > 0.9  # the informative one wins
    with pytest.raises(InvalidRequest, match="not active"):
        fit_fusion_weights(comp, y, init=np.full(4, 0.25), active=[True, True, False, False])


def test_map_by_size_by_hand():
    relevant = np.array([[1, 1], [0, 1], [1, 0], [1, 1]], dtype=bool)
    scores = {
        # concept 0 relevant at images 0, 2, 3; ranking 3, 1, 0, 2 -> relevant at ranks 1, 3, 4
        (0,): np.array([0.5, 0.6, 0.1, 0.9]),
        # concept 1 relevant at 0, 1, 3; ranking 0, 1, 3, 2 -> ranks 1, 2, 3 -> AP 1
        (1,): np.array([0.9, 0.8, 0.1, 0.7]),
        # both: images 0 and 3; ranking 2, 0, 1, 3 -> ranks 2 and 4 -> (1/2 + 2/4) / 2 = 0.5
        (0, 1): np.array([0.8, 0.5, 0.9, 0.2]),
    }
    res = map_by_size(scores, relevant)
    ap0 = (1 / 1 + 2 / 3 + 3 / 4) / 3
    assert res[1]["MAP"] == pytest.approx((ap0 + 1.0) / 2)
    assert res[1]["queries"] == 2
    assert res[2] == {"MAP": pytest.approx(0.5), "queries": 1}


def test_noisy_tags_are_seeded_and_mix_kept_random_and_non_visual_words():
    kws = [["sky", "water", "boat", "beach"]] * 200
    a = simulate_noisy_tags(kws, CONCEPTS, seed=3)
    assert a == simulate_noisy_tags(kws, CONCEPTS, seed=3)
    assert a != simulate_noisy_tags(kws, CONCEPTS, seed=4)
    kept = np.mean([len([t for t in tags if t in kws[0] and t != "mountain"]) for tags in a])
    assert 2.0 < kept < 3.6  # half of 4 kept, plus random vocabulary words that hit a keyword
    assert all(any(t in NON_VISUAL_WORDS for t in tags) for tags in a)
    assert all(len(tags) == len(set(tags)) for tags in a)


def test_a_singular_query_finds_a_plural_concept_name():
    p = parse_concept_query("car ship", ["cars", "ships", "sky"])
    assert p.concepts == ["cars", "ships"]
    assert [t["how"] for t in p.terms] == ["exact", "exact"]
