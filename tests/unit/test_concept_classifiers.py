"""SSIR concept classifiers: visual heads on stored features and the SentenceCNN over tags."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from cbir.concepts import ConceptVocabulary
from cbir.concepts.classifiers import ConceptHeads, concept_posteriors, mean_average_precision
from cbir.concepts.sentence_cnn import TextConceptHeads, encode_tags
from cbir.errors import CollectionError, IndexMismatch, InvalidRequest

NAMES = ["beach", "sunset", "people", "dog", "snow", "car"]


# ----------------------------------------------------------------------------- synthetic data


def _clustered(n: int, seed: int, dim: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Images holding 1-2 of 6 concepts; a feature is the sum of its concepts' centres + noise."""
    centres = np.random.default_rng(123).standard_normal((len(NAMES), dim)) * 2.0
    rng = np.random.default_rng(seed)
    ys = np.zeros((n, len(NAMES)), dtype=np.uint8)
    for i in range(n):
        ys[i, rng.choice(len(NAMES), size=1 + (rng.random() < 0.5), replace=False)] = 1
    x = ys @ centres + rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # the stored features are L2-normalised
    return x.astype(np.float32), ys


@pytest.fixture(scope="module")
def data() -> dict:
    x, ys = _clustered(400, seed=1)
    xt, yt = _clustered(200, seed=2)
    vocab = ConceptVocabulary.from_matrix(ys, NAMES, max_size=2, min_support=8)
    return {"x": x, "ys": ys, "ym": vocab.itemset_targets(ys), "xt": xt, "yt": yt,
            "ymt": vocab.itemset_targets(yt), "vocab": vocab}


def _aps(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    return [mean_average_precision(scores[:, [j]], targets[:, [j]])
            for j in range(targets.shape[1]) if targets[:, j].any()]


# ----------------------------------------------------------------------------- numpy helpers


def test_posteriors_and_average_precision_by_hand() -> None:
    p = concept_posteriors(np.array([[0.0, np.log(3.0)], [0.0, 0.0]]), "softmax")
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]], atol=1e-7)
    assert p.dtype == np.float32
    s = concept_posteriors(np.array([[0.0, np.log(3.0), -60.0, -61.0]]), "sigmoid")
    np.testing.assert_allclose(s[0, :2], [0.5, 0.75], atol=1e-7)
    assert s[0, 2] > s[0, 3] > 0.0  # very negative logits keep distinct probabilities (no ties)
    with pytest.raises(InvalidRequest):
        concept_posteriors(np.zeros((1, 2)), "relu")
    # ranking: positive, negative, positive -> AP = (1/1 + 2/3) / 2 = 5/6
    assert mean_average_precision(np.array([[3.0], [2.0], [1.0]]), np.array([[1], [0], [1]])) == \
        pytest.approx(5 / 6)
    # columns without a positive are skipped; none at all -> NaN
    assert mean_average_precision(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1, 0], [0, 0]])) == 1.0
    assert np.isnan(mean_average_precision(np.zeros((2, 1)), np.zeros((2, 1))))


# ----------------------------------------------------------------------------- visual heads


@pytest.mark.parametrize(("hidden", "single_loss", "multi_loss"),
                         [(32, "sigmoid", "softmax"), (0, "softmax", "softmax"), (32, "softmax", "sigmoid")])
def test_visual_heads_rank_positives_first(data: dict, hidden: int, single_loss: str,
                                           multi_loss: str) -> None:
    pytest.importorskip("torch")
    from cbir.concepts.classifiers import train_visual_concepts

    seen: list[dict] = []
    heads = train_visual_concepts(data["x"], data["ys"], data["ym"], hidden=hidden, epochs=30, patience=5,
                                  lr=3e-3, single_loss=single_loss, multi_loss=multi_loss,
                                  on_epoch=seen.append)
    assert (heads.dim, heads.n_single, heads.n_multi) == (24, 6, data["vocab"].n_itemsets)
    assert data["vocab"].n_itemsets > 6  # V* holds concept pairs, not just the singles
    ps, pm = heads.predict(data["xt"])
    assert ps.shape == (200, 6) and pm.shape == (200, data["vocab"].n_itemsets)
    assert ps.dtype == pm.dtype == np.float32
    if single_loss == "softmax":
        np.testing.assert_allclose(ps.sum(axis=1), 1.0, atol=1e-5)
    assert min(_aps(ps, data["yt"])) > 0.9
    # scenes (pairs) too, ranked as whole concepts. (A linear sigmoid head cannot express
    # "a AND b" on these features: only the softmax or the hidden layer makes that learnable.)
    assert np.mean(_aps(pm, data["ymt"])) > 0.9
    # the callback sees every epoch; the record keeps the best one
    assert [s["epoch"] for s in seen] == list(range(1, len(seen) + 1))
    assert {"train_loss", "val_loss", "val_single_map", "val_multi_map", "seconds", "best"} <= set(seen[0])
    rec = heads.meta["training"]
    assert rec["epochs"] == len(seen) and 1 <= rec["best_epoch"] <= len(seen)
    assert (heads.meta["single_loss"], heads.meta["multi_loss"]) == (single_loss, multi_loss)
    # the kept epoch is the best by validation MAP: one epoch for both heads when they share
    # the hidden layer, each head's own epoch when they are independent linear heads
    best_s = 1 + int(np.argmax([s["val_single_map"] for s in seen]))
    best_m = 1 + int(np.argmax([s["val_multi_map"] for s in seen]))
    best_joint = 1 + int(np.argmax([s["val_single_map"] + s["val_multi_map"] for s in seen]))
    expected = {"single": best_s, "multi": best_m} if hidden == 0 else dict.fromkeys(("single", "multi"),
                                                                                      best_joint)
    assert rec["best_epochs"] == expected


def test_visual_numpy_matches_torch_and_is_deterministic(data: dict) -> None:
    pytest.importorskip("torch")
    from cbir.concepts.classifiers import torch_forward_visual, train_visual_concepts

    kw = {"hidden": 16, "epochs": 3, "seed": 7}
    a = train_visual_concepts(data["x"], data["ys"], data["ym"], **kw)
    b = train_visual_concepts(data["x"], data["ys"], data["ym"], **kw)
    assert a.weights.keys() == b.weights.keys()
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k])
    ls, lm = a.logits(data["xt"])
    ts, tm = torch_forward_visual(a, data["xt"])
    np.testing.assert_allclose(ls, ts, atol=1e-4)
    np.testing.assert_allclose(lm, tm, atol=1e-4)
    c = train_visual_concepts(data["x"], data["ys"], data["ym"], **{**kw, "seed": 8})
    assert not np.array_equal(a.weights["single.weight"], c.weights["single.weight"])


def _random_visual_heads(dim: int = 12, hidden: int = 8) -> ConceptHeads:
    rng = np.random.default_rng(0)
    width = hidden or dim
    w = {"norm.mean": rng.standard_normal(dim), "norm.std": rng.random(dim) + 0.5,
         "single.weight": rng.standard_normal((5, width)), "single.bias": rng.standard_normal(5),
         "multi.weight": rng.standard_normal((9, width)), "multi.bias": rng.standard_normal(9)}
    if hidden:
        w |= {"hidden.weight": rng.standard_normal((hidden, dim)), "hidden.bias": rng.standard_normal(hidden)}
    meta = {"format": "cbir.visual_concepts", "format_version": 1, "hidden": hidden,
            "single_loss": "sigmoid", "multi_loss": "softmax"}
    return ConceptHeads(w, meta)


def test_visual_forward_by_hand() -> None:
    heads = _random_visual_heads(hidden=8)
    x = np.random.default_rng(1).standard_normal((4, 12)).astype(np.float32)
    w = heads.weights
    h = np.maximum(((x - w["norm.mean"]) / w["norm.std"]) @ w["hidden.weight"].T + w["hidden.bias"], 0)
    ls, lm = h @ w["single.weight"].T + w["single.bias"], h @ w["multi.weight"].T + w["multi.bias"]
    ps, pm = heads.predict(x)
    np.testing.assert_allclose(ps, 1 / (1 + np.exp(-ls)), rtol=1e-5)
    np.testing.assert_allclose(pm, np.exp(lm) / np.exp(lm).sum(1, keepdims=True), rtol=1e-5)
    ps1, _ = heads.predict(x[0])  # one feature vector is one row
    np.testing.assert_allclose(ps1, ps[:1], rtol=1e-6)


def test_visual_save_load_round_trip_and_refusals(tmp_path) -> None:
    heads = _random_visual_heads(hidden=0)
    x = np.random.default_rng(2).standard_normal((6, 12)).astype(np.float32)
    path = heads.save(tmp_path, "vis")
    assert path == tmp_path / "vis.json" and (tmp_path / "vis.safetensors").is_file()
    loaded = ConceptHeads.load(tmp_path, "vis")
    for a, b in zip(heads.predict(x), loaded.predict(x), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.meta["hidden"] == 0 and loaded.meta["weights_sha256"]
    with pytest.raises(InvalidRequest, match=r"\(n, 12\)"):
        heads.predict(np.zeros((3, 13), np.float32))
    with pytest.raises(InvalidRequest):
        heads.predict(np.zeros((2, 3, 12), np.float32))
    with pytest.raises(InvalidRequest):
        ConceptHeads.load(tmp_path, "absent")
    with pytest.raises(InvalidRequest):
        heads.save(tmp_path, "../escape")
    # a text classifier's files are not a visual one
    meta = json.loads(path.read_text())
    (tmp_path / "other.json").write_text(json.dumps({**meta, "format": "cbir.text_concepts"}))
    (tmp_path / "other.safetensors").write_bytes((tmp_path / "vis.safetensors").read_bytes())
    with pytest.raises(IndexMismatch):
        ConceptHeads.load(tmp_path, "other")
    # damaged weights are caught by the record's checksum
    data = bytearray((tmp_path / "vis.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "vis.safetensors").write_bytes(bytes(data))
    with pytest.raises(CollectionError):
        ConceptHeads.load(tmp_path, "vis")


def test_visual_training_refuses_bad_inputs(data: dict) -> None:
    pytest.importorskip("torch")
    from cbir.concepts.classifiers import train_visual_concepts

    x, ys, ym = data["x"], data["ys"], data["ym"]
    with pytest.raises(InvalidRequest):
        train_visual_concepts(x, ys[:-1], ym)
    with pytest.raises(InvalidRequest):
        train_visual_concepts(x, ys * 2, ym)
    with pytest.raises(InvalidRequest):
        train_visual_concepts(x, ys, ym, single_loss="hinge")
    with pytest.raises(InvalidRequest):
        train_visual_concepts(np.full_like(x, np.nan), ys, ym)


# ----------------------------------------------------------------------------- text heads


class ToyVectors:
    """A tiny TagVectors backend: fixed random vectors for a closed vocabulary."""

    def __init__(self, words: Sequence[str], dim: int = 10, seed: int = 0, name: str = "toy"):
        rng = np.random.default_rng(seed)
        self.name, self.dim = name, dim
        self._v = {w: rng.standard_normal(dim).astype(np.float32) for w in words}

    def vector(self, tag: str) -> np.ndarray | None:
        return self._v.get(tag)

    def known(self, tag: str) -> bool:
        return tag in self._v

    def encode(self, tags: Sequence[str]) -> np.ndarray:
        rows = [self._v[t] for t in tags if t in self._v]
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)


NOISE = ["nikon", "2008", "favorite", "canon", "explore", "me"]
TOY = ToyVectors(NAMES + NOISE)


def _tags(ys: np.ndarray, seed: int) -> list[list[str]]:
    """Each concept's word (kept with p 0.8), 1-2 noise words, an unknown word; shuffled."""
    rng = np.random.default_rng(seed)
    out = []
    for row in ys:
        tags = [NAMES[c] for c in np.flatnonzero(row) if rng.random() < 0.8]
        tags += list(rng.choice(NOISE, size=rng.integers(1, 3), replace=False)) + ["qwzx"]
        rng.shuffle(tags)
        out.append([str(t) for t in tags])
    return out


def test_encode_tags_order_unknown_and_truncation() -> None:
    x, mask = encode_tags([["dog", "qwzx", "beach", "nikon"], ["qwzx"], []], TOY, max_len=2)
    assert x.shape == (3, 2, 10) and x.dtype == np.float32 and mask.dtype == bool
    np.testing.assert_array_equal(x[0, 0], TOY.vector("dog"))
    np.testing.assert_array_equal(x[0, 1], TOY.vector("beach"))  # unknown dropped, order kept, cut at 2
    np.testing.assert_array_equal(mask, [[True, True], [False, False], [False, False]])
    assert not x[1:].any()
    with pytest.raises(InvalidRequest):
        encode_tags(["dog"], TOY)  # a string is not a tag list
    with pytest.raises(InvalidRequest):
        encode_tags([["dog"]], TOY, max_len=0)


@pytest.fixture(scope="module")
def text_heads(data: dict) -> TextConceptHeads:
    pytest.importorskip("torch")
    from cbir.concepts.sentence_cnn import train_text_concepts

    tags = _tags(data["ys"], seed=3)
    tags[0] = ["qwzx"]  # no known tag: left out of training
    return train_text_concepts(tags, TOY, data["ys"], data["ym"], max_len=6, filters=16, epochs=40,
                               patience=8, lr=1e-2, seed=0)


def test_text_heads_learn_tag_to_concept(data: dict, text_heads: TextConceptHeads) -> None:
    tags = _tags(data["yt"], seed=4)
    tags[5] = ["qwzx", "unknown"]
    ps, pm, has = text_heads.predict(tags, TOY)
    assert ps.shape == (200, 6) and pm.shape == (200, data["vocab"].n_itemsets) and has.shape == (200,)
    assert not has[5] and has.sum() == 199
    assert np.isnan(ps[5]).all() and np.isnan(pm[5]).all()
    assert np.isfinite(ps[has]).all() and np.isfinite(pm[has]).all()
    ok = has.copy()
    # a concept whose word was dropped (p 0.2) cannot be seen in the text: count only the tagged ones
    visible = data["yt"] * np.array([[n in t for n in NAMES] for t in tags])
    assert min(_aps(ps[ok], visible[ok])) > 0.9
    assert text_heads.meta["training"]["n_without_text"] == 1
    assert text_heads.meta["vectors"] == {"name": "toy", "dim": 10}


def test_text_numpy_matches_torch(data: dict, text_heads: TextConceptHeads) -> None:
    from cbir.concepts.sentence_cnn import torch_forward_text

    x, mask = encode_tags(_tags(data["yt"], seed=5), TOY, text_heads.max_len)
    ls, lm = text_heads.logits_encoded(x, mask)
    ts, tm = torch_forward_text(text_heads, x, mask)
    np.testing.assert_allclose(ls, ts, atol=1e-4)
    np.testing.assert_allclose(lm, tm, atol=1e-4)


def test_text_conv_by_hand() -> None:
    # one filter of width 2, weight [[1, -1]], bias 0.5, over 1-d word vectors a=1, b=2, c=3.
    # Windows start at every real tag and run into the zero padding on the right:
    #   [a, b, c]: (1,2) -> -0.5, (2,3) -> -0.5, (3,0) -> 3.5; relu, max -> 3.5
    #   [c, b]:    (3,2) -> 1.5,  (2,0) -> 2.5;  (0,0) starts on padding: ignored -> 2.5
    vec = ToyVectors([], dim=1)
    vec._v = {t: np.array([v], np.float32) for t, v in (("a", 1.0), ("b", 2.0), ("c", 3.0))}
    w = {"conv2.weight": np.array([[[1.0, -1.0]]]), "conv2.bias": np.array([0.5]),
         "single.weight": np.array([[2.0]]), "single.bias": np.array([-1.0]),
         "multi.weight": np.array([[1.0], [-1.0]]), "multi.bias": np.zeros(2)}
    meta = {"format": "cbir.text_concepts", "format_version": 1, "vectors": {"name": "toy", "dim": 1},
            "max_len": 4, "widths": [2], "filters": 1, "single_loss": "sigmoid", "multi_loss": "softmax"}
    heads = TextConceptHeads(w, meta)
    x, mask = encode_tags([["a", "b", "c"], ["c", "b"]], vec, 4)
    np.testing.assert_allclose(heads.pooled(x, mask), [[3.5], [2.5]])
    ps, pm, has = heads.predict([["a", "b", "c"], ["c", "b"]], vec)
    np.testing.assert_allclose(ps[:, 0], 1 / (1 + np.exp(-np.array([6.0, 4.0]))), rtol=1e-6)
    np.testing.assert_allclose(pm[:, 0], 1 / (1 + np.exp(-2 * np.array([3.5, 2.5]))), rtol=1e-6)
    assert has.all()


def test_text_save_load_and_vector_checks(tmp_path, text_heads: TextConceptHeads, data: dict) -> None:
    tags = _tags(data["yt"][:20], seed=6)
    text_heads.save(tmp_path)
    loaded = TextConceptHeads.load(tmp_path, vectors=TOY)
    for a, b in zip(text_heads.predict(tags, TOY), loaded.predict(tags, TOY), strict=True):
        np.testing.assert_array_equal(a, b)
    other_name = ToyVectors(NAMES + NOISE, name="glove")
    other_dim = ToyVectors(NAMES + NOISE, dim=11)
    with pytest.raises(IndexMismatch):
        loaded.predict(tags, other_name)
    with pytest.raises(IndexMismatch):
        loaded.predict(tags, other_dim)
    with pytest.raises(IndexMismatch):
        TextConceptHeads.load(tmp_path, vectors=other_dim)
    with pytest.raises(IndexMismatch):
        ConceptHeads.load(tmp_path, "text_concepts")  # not a visual classifier
    with pytest.raises(InvalidRequest):
        loaded.pooled(np.zeros((2, 6, 9), np.float32), np.ones((2, 6), bool))
