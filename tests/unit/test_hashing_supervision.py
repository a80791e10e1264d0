"""What the tags say against the features (--method auto, the weak-method warning) and code collapse."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.hashing import create_hasher, pack_bits
from cbir.hashing.supervision import (
    KAPPA_MIN,
    choose_method,
    code_stats,
    measure_supervision,
    supervision_warning,
)


class WordVectors:
    """Tag vectors: one random unit vector per word (distinct words ~orthogonal, Tanimoto ~0)."""

    def __init__(self, words, dim: int = 64, seed: int = 0):
        rng = np.random.default_rng(seed)
        v = rng.standard_normal((len(words), dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        self.table = dict(zip(words, v, strict=True))
        self.dim = dim

    def vector(self, tag):
        return self.table.get(tag)

    def encode(self, tags):
        rows = [self.table[t] for t in tags if t in self.table]
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)


def clusters(n: int = 600, k: int = 8, d: int = 32, noise: float = 2.0, seed: int = 0):
    """k Gaussian classes in d dims (L2-normalised), noisy enough that classes overlap."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    x = rng.standard_normal((k, d))[labels] + noise * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


WORDS = [f"word{i}" for i in range(8)]
VECTORS = WordVectors(WORDS)


def label_tags(labels):
    return [[WORDS[c]] for c in labels]


def noise_tags(n, seed=1):
    rng = np.random.default_rng(seed)
    return [[WORDS[c]] for c in rng.integers(0, len(WORDS), n)]


def test_informative_tags_measure_above_noise_tags():
    x, labels = clusters()
    good = measure_supervision(x, label_tags(labels), VECTORS, labels=labels)
    bad = measure_supervision(x, noise_tags(len(x)), VECTORS, labels=labels)
    # both call ~1/8 of the pairs similar; only the informative ones are feature neighbours
    assert 0.08 < good.positive_share < 0.2 and 0.08 < bad.positive_share < 0.2
    assert good.kappa > 0.25 > KAPPA_MIN > 0.05 > abs(bad.kappa)
    assert good.agreement > good.chance and abs(bad.agreement - bad.chance) < 0.03
    # with labels (an evaluation) the class mAPs agree: class tags beat the noisy features
    assert good.labels["map_tags"] == pytest.approx(1.0)
    assert good.labels["map_tags"] > good.labels["map_features"] > bad.labels["map_tags"]
    assert good.verdict == "tags" and bad.verdict == "features"
    assert good.as_dict()["verdict"] == "tags"


def test_auto_picks_itq_for_noise_tags_and_the_weak_method_for_informative_tags():
    x, labels = clusters()
    good = measure_supervision(x, label_tags(labels), VECTORS)
    bad = measure_supervision(x, noise_tags(len(x)), VECTORS)
    assert choose_method(good)[0] == "wdht"
    assert choose_method(good, "idea")[0] == "idea"
    method, why = choose_method(bad)
    assert method == "itq" and "unrelated" in why and "kappa" in why
    assert supervision_warning(good, "wdht") is None
    assert "ITQ will likely do better" in supervision_warning(bad, "wdht")


def test_machine_tags_and_degenerate_tags_carry_less_than_the_features():
    x, labels = clusters()
    tags = label_tags(labels)
    # the same informative tags, but computed by the backbone: a prior, not a measurement
    machine = measure_supervision(x, tags, VECTORS, machine=np.ones(len(x), bool))
    assert machine.kappa > 0.25 and machine.tags_carry_less and "machine tags" in machine.reason
    assert choose_method(machine)[0] == "itq"
    # a few user-tagged images among many machine-tagged ones: machine tags still dominate
    mostly = np.arange(len(x)) >= len(x) // 4
    assert measure_supervision(x, tags, VECTORS, machine=mostly).tags_carry_less
    assert not measure_supervision(x, tags, VECTORS, machine=~mostly).tags_carry_less
    # one tag for everyone: every pair similar; no known tag at all: nothing to learn
    same = measure_supervision(x, [["word0"]] * len(x), VECTORS)
    assert same.positive_share == 1.0 and choose_method(same)[0] == "itq"
    unknown = measure_supervision(x, [["nope"]] * len(x), VECTORS)
    assert unknown.tagged == 0 and choose_method(unknown)[0] == "itq"


def test_the_measurement_samples_tagged_images_and_is_seeded():
    x, labels = clusters(n=900)
    tags = label_tags(labels)
    tags[:300] = [[] for _ in range(300)]  # untagged images are not sampled
    a = measure_supervision(x, tags, VECTORS, sample=200, seed=3)
    b = measure_supervision(x, tags, VECTORS, sample=200, seed=3)
    assert a.tagged == 600 and a.sample == 200 and a.as_dict() == b.as_dict()


def test_collapse_warning_fires_on_a_degenerate_hasher_not_on_itq_over_spread_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 64)).astype(np.float32)
    itq = create_hasher("itq", 32).fit(x)
    ok = code_stats(itq.encode(x), 32)
    assert not ok.collapsed and ok.warning is None
    assert ok.distinct == 500 and ok.constant_bits == 0 and 0.35 < ok.ones_min <= ok.ones_max < 0.65
    # a hasher that maps everyone to a handful of codes, one bit always set
    few = np.zeros((500, 32), bool)
    few[:, 1:6] = rng.integers(0, 2, (500, 5)).astype(bool)  # at most 32 codes
    few[:, 0] = True
    bad = code_stats(pack_bits(few), 32)
    assert bad.collapsed and bad.distinct <= 32 and bad.largest_bucket >= 500 // 32
    assert "distinct codes" in bad.warning and "27 of 32 bits" in bad.warning
    # only a constant bit (codes otherwise spread) is still reported
    spread = rng.random((500, 32)) < 0.5
    spread[:, 7] = False
    one = code_stats(pack_bits(spread), 32)
    assert one.collapsed and one.constant_bits == 1 and "distinct" not in one.warning


def test_clustered_codes_collapse_only_when_the_length_leaves_room():
    # 20 well-balanced cluster codes shared by 500 images: expected at 12 bits
    # (2**12 < 500**2), a collapse at 32 bits
    rng = np.random.default_rng(0)
    for bits, collapsed in ((12, False), (32, True)):
        patterns = np.zeros((20, bits), bool)
        patterns[:10] = rng.random((10, bits)) < 0.5
        patterns[10:] = ~patterns[:10]  # every bit exactly half ones over the patterns
        st = code_stats(pack_bits(patterns[np.arange(500) % 20]), bits)
        assert st.distinct == 20 and st.constant_bits == 0 and st.largest_bucket == 25
        assert st.collapsed is collapsed
