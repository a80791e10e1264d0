"""The int8 EfficientNet-Lite0 (static QDQ, per-channel; tools/quantize_model.py), the default
extractor of new collections, and the fp32 one it replaced as default (still selectable).

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
from cbir.extract.base import canonical_extractor_name

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


def test_registered_default_and_recorded() -> None:
    assert "efficientnet-lite0-int8" in EXTRACTORS.names()
    assert DEFAULT_EXTRACTOR == "efficientnet-lite0-int8"
    path = eff.packaged_int8_onnx()
    assert path is not None and path.name == "efficientnet-lite0-int8.onnx"
    assert path.stat().st_size == eff.PACKAGED_INT8_ONNX_SIZE < 8_000_000
    assert onnx_export.sha256_file(path) == eff.PACKAGED_INT8_ONNX_SHA256


def test_fp32_alias_names_the_fp32_extractor() -> None:
    """``efficientnet-lite0-fp32`` creates the fp32 model, recorded as ``efficientnet-lite0``."""
    assert "efficientnet-lite0-fp32" in EXTRACTORS.names() and "efficientnet-lite0-fp32" in EXTRACTORS
    ex = create_extractor("efficientnet-lite0-fp32", intra_op_num_threads=1)
    assert type(ex) is eff.EfficientNetLite0 and ex.name == "efficientnet-lite0"
    assert canonical_extractor_name("efficientnet-lite0-fp32") == "efficientnet-lite0"
    assert canonical_extractor_name("efficientnet-lite0-int8") == "efficientnet-lite0-int8"


def test_collections_keep_their_extractor(tmp_path) -> None:
    """A new collection gets int8; an fp32 one (manifest ``efficientnet-lite0``) stays fp32,
    opens by its name or the alias, and refuses the other model."""
    from cbir.collection import Collection
    from cbir.errors import InvalidRequest

    with Collection.create_or_open(tmp_path / "new") as col:
        assert col.manifest.extractor == "efficientnet-lite0-int8"
        assert type(col.extractor) is eff.EfficientNetLite0Int8
    with Collection.create_or_open(tmp_path / "old", "efficientnet-lite0-fp32") as col:
        assert col.manifest.extractor == "efficientnet-lite0"
    for name in (None, "efficientnet-lite0", "efficientnet-lite0-fp32"):
        with Collection.create_or_open(tmp_path / "old", name) as col:
            assert type(col.extractor) is eff.EfficientNetLite0
            assert type(col.indexing_extractor()) is eff.EfficientNetLite0
    with pytest.raises(InvalidRequest, match="efficientnet-lite0"):
        Collection.create_or_open(tmp_path / "old", "efficientnet-lite0-int8")
    with pytest.raises(InvalidRequest, match="efficientnet-lite0-int8"):
        Collection.create_or_open(tmp_path / "new", "efficientnet-lite0-fp32")


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


def test_int8_graph_takes_pixels_and_gives_the_float_input_graphs_features(pair, photos) -> None:
    """The int8 graph takes uint8 pixels (its input QuantizeLinear, scale 1/128 and zero point
    127, was removed: tools/quantize_model.py uint8_input). Its features equal, to float
    tolerance, those the float-input graph gave (tests/data/int8-reference.npz, recorded from
    it before the change), whether it is fed pixels or the fp32 preprocessing's floats."""
    from pathlib import Path

    fp, q = pair
    assert q.takes_pixels() and not fp.takes_pixels()
    pix = np.stack([q.preprocess(im) for im in photos])
    flt = np.stack([fp.preprocess(im) for im in photos])
    assert pix.dtype == np.uint8 and flt.dtype == np.float32
    np.testing.assert_array_equal(pix, np.rint(flt * 128 + 127).astype(np.uint8))
    ref = np.load(Path(__file__).parents[1] / "data" / "int8-reference.npz")
    a, b = q.embed(pix), q.embed(flt)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_allclose(a.features, ref["features"], atol=2e-4)
    np.testing.assert_array_equal(np.argsort(-a.probs, 1)[:, :5], ref["top5"])
    np.testing.assert_allclose(-np.sort(-a.probs, 1)[:, :5], ref["top5_probs"], atol=2e-4)
    # and the fp32 graph, handed pixels, normalises them itself
    np.testing.assert_allclose(fp.embed(pix).features, fp.embed(flt).features, atol=1e-6)


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


# -- the runtime: onnxruntime (default) or OpenVINO (the openvino extra) --------------------------
def test_runtime_from_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from cbir.errors import InvalidRequest

    monkeypatch.delenv("CBIR_RUNTIME", raising=False)
    assert eff.EfficientNetLite0Int8().runtime == "onnxruntime"
    monkeypatch.setenv("CBIR_RUNTIME", "OpenVINO")
    assert eff.EfficientNetLite0Int8().runtime == "openvino"
    assert eff.EfficientNetLite0Int8(runtime="onnxruntime").runtime == "onnxruntime"
    monkeypatch.setenv("CBIR_RUNTIME", "tensorrt")
    with pytest.raises(InvalidRequest, match="CBIR_RUNTIME.*onnxruntime, openvino"):
        eff.EfficientNetLite0Int8()


def test_openvino_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)
    ex = eff.EfficientNetLite0(runtime="openvino")
    with pytest.raises(BackendUnavailable, match=r"'openvino' extra.*cbir\[openvino\]"):
        ex.embed(np.zeros((1, 3, 224, 224), np.float32))


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite0-int8"])
def test_openvino_gives_the_same_features(name: str, photos: list[Image.Image]) -> None:
    """Same graph, other runtime: cosine >= 0.99 and the same top-1 class as onnxruntime, for
    one batch and for two batches in flight (one stream each, as when indexing)."""
    pytest.importorskip("openvino")
    import functools
    from concurrent.futures import ThreadPoolExecutor

    ort_ex = create_extractor(name, intra_op_num_threads=1, runtime="onnxruntime")
    batch = np.stack([ort_ex.preprocess(im) for im in photos])
    want = ort_ex.embed(batch, regions=True)
    for threads in (2, 1):
        ov_ex = create_extractor(name, intra_op_num_threads=threads, runtime="openvino")
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(functools.partial(ov_ex.embed, regions=True), [batch, batch[::-1]]))
        for emb, order in ((got[0], slice(None)), (got[1], slice(None, None, -1))):
            cos = (emb.features[order] * want.features).sum(1)
            assert cos.min() >= 0.99, (threads, cos)
            assert (emb.probs[order].argmax(1) == want.probs.argmax(1)).all()
            assert emb.regions is not None and emb.regions.shape == want.regions.shape
