"""The opt-in int8 EfficientNet-Lite0 (static QDQ, per-channel; tools/quantize_model.py).

It ships in the package, so these tests need neither torch nor an export: they load both
packaged graphs and compare int8 against fp32.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cbir.errors import BackendUnavailable
from cbir.extract import DEFAULT_EXTRACTOR, EXTRACTORS, create_extractor, onnx_export, top_labels
from cbir.extract import efficientnet as eff

CAT_LABELS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "lynx"}


@pytest.fixture(scope="module")
def pair() -> tuple[eff.EfficientNetLite0, eff.EfficientNetLite0Int8]:
    if eff.packaged_onnx() is None or eff.packaged_int8_onnx() is None:
        pytest.skip("the packaged fp32/int8 models are absent")
    return (create_extractor("efficientnet-lite0", intra_op_num_threads=2),
            create_extractor("efficientnet-lite0-int8", intra_op_num_threads=2))


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    data = pytest.importorskip("skimage.data")
    return [Image.fromarray(getattr(data, n)()) for n in ("chelsea", "coffee", "astronaut",
                                                          "rocket")]


def test_registered_opt_in_and_recorded() -> None:
    assert "efficientnet-lite0-int8" in EXTRACTORS.names()
    assert DEFAULT_EXTRACTOR == "efficientnet-lite0"
    path = eff.packaged_int8_onnx()
    assert path is not None and path.name == "efficientnet-lite0-int8.onnx"
    assert path.stat().st_size == eff.PACKAGED_INT8_ONNX_SIZE < 8_000_000
    assert onnx_export.sha256_file(path) == eff.PACKAGED_INT8_ONNX_SHA256


def test_same_interface_different_name(pair) -> None:
    fp, q = pair
    assert q.name == "efficientnet-lite0-int8" != fp.name  # manifests never mix the two
    assert (q.dim, q.input_size, q.preprocessing) == (fp.dim, fp.input_size, fp.preprocessing)


def test_int8_close_to_fp32(pair, photos: list[Image.Image]) -> None:
    fp, q = pair
    batch = np.stack([fp.preprocess(im) for im in photos])
    a, b = fp.embed(batch, regions=True), q.embed(batch, regions=True)
    assert b.features.shape == a.features.shape == (len(photos), 1280)
    assert b.regions is not None and b.regions.shape == (len(photos), 49, 1280)
    assert b.probs.shape == (len(photos), 1000)
    np.testing.assert_allclose(np.linalg.norm(b.features, axis=1), 1.0, atol=1e-5)
    cos = (a.features * b.features).sum(1)
    assert cos.min() > 0.95, cos


def test_int8_chelsea_is_a_cat(pair, photos: list[Image.Image]) -> None:
    fp, q = pair
    batch = fp.preprocess(photos[0])[None]
    pf, pq = fp.embed(batch).probs[0], q.embed(batch).probs[0]
    assert pq.argmax() == pf.argmax()
    assert top_labels(pq[None], q.class_names, k=1)[0][0][0] in CAT_LABELS


def test_damaged_int8_model_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    bad = tmp_path / "efficientnet-lite0-int8.onnx"
    bad.write_bytes(b"not a model")
    monkeypatch.setattr(eff, "packaged_onnx_file", lambda rel=eff.PACKAGED_ONNX: bad)
    with pytest.raises(BackendUnavailable, match="damaged"):
        eff.packaged_int8_onnx()
    monkeypatch.setattr(eff, "packaged_onnx_file", lambda rel=eff.PACKAGED_ONNX: tmp_path / "x")
    ex = eff.EfficientNetLite0Int8()
    with pytest.raises(BackendUnavailable, match="quantize_model"):
        ex.embed(np.zeros((1, 3, 224, 224), np.float32))
