"""Feature extractors and the decode -> infer pipeline.

Fast tests use the "colorhist" extractor; tests marked slow use the real EfficientNet-Lite0
(exported to ONNX once per machine and cached; see cbir.extract.onnx_export).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.errors import BackendUnavailable, InvalidRequest, UnknownComponent
from cbir.extract import EXTRACTORS, FeatureExtractor, create_extractor, onnx_export, top_labels
from cbir.extract.colorhist import ColorHistogram
from cbir.extract.pipeline import ItemResult, embed_files, embed_images

CAT_LABELS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "lynx"}


def _solid(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, color)


def _noise(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _write_mixed(dir: Path) -> dict[str, Path]:
    """Valid images of mixed sizes/modes/formats plus a corrupt and a zero-byte file."""
    out = {
        "small_png": dir / "small.png", "big_jpg": dir / "big.jpg", "grey_png": dir / "grey.png",
        "rgba_png": dir / "rgba.png", "wide_jpg": dir / "wide.jpg", "corrupt": dir / "corrupt.jpg",
        "empty": dir / "empty.jpg", "missing": dir / "missing.jpg",
    }
    _noise(1, (30, 20)).save(out["small_png"])
    _noise(2, (1200, 900)).save(out["big_jpg"], quality=85)
    _noise(3, (50, 70)).convert("L").save(out["grey_png"])
    _noise(4, (40, 40)).convert("RGBA").save(out["rgba_png"])
    _noise(5, (640, 120)).save(out["wide_jpg"])
    out["corrupt"].write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    out["empty"].write_bytes(b"")
    return out


# -- registry / import hygiene --------------------------------------------------------------
def test_registry_and_create_extractor() -> None:
    assert {"colorhist", "efficientnet-lite0"} <= set(EXTRACTORS.names())
    ex = create_extractor("colorhist")
    assert isinstance(ex, FeatureExtractor)
    with pytest.raises(UnknownComponent, match="colorhist"):
        create_extractor("no-such-extractor")


def test_import_is_light() -> None:
    code = ("import sys, cbir.extract, cbir.extract.pipeline; "
            "print('torch' in sys.modules, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_efficientnet_construction_is_lazy() -> None:
    ex = create_extractor("efficientnet-lite0", intra_op_num_threads=1)
    assert isinstance(ex, FeatureExtractor)
    assert (ex.name, ex.dim, ex.input_size) == ("efficientnet-lite0", 1280, 224)
    assert len(ex.class_names) == 1000 and ex.class_names[281] == "tabby"
    assert ex.preprocessing["mean"] == [127.0] * 3 and ex.preprocessing["std"] == [128.0] * 3
    assert ex._session is None  # no onnxruntime session (nor export) until the first embed
    a = ex.preprocess(_noise(0, (300, 200)))
    assert a.shape == (3, 224, 224) and a.dtype == np.float32
    assert a.min() > -1.0 and a.max() <= 1.0
    with pytest.raises(InvalidRequest):
        ex.forward(np.zeros((1, 3, 100, 100), np.float32))


def test_preprocess_center_crops() -> None:
    ex = create_extractor("efficientnet-lite0")
    img = Image.new("RGB", (600, 200), (0, 0, 0))
    img.paste((255, 255, 255), (200, 0, 400, 200))  # the central square is white
    a = ex.preprocess(img)
    # as with resize-then-crop, only the border columns see the black neighbours
    assert np.allclose(a[:, :, 1:-1], (255 - 127) / 128)
    assert a.min() > 0.8


# -- ONNX export helpers (fast) ---------------------------------------------------------------
def test_onnx_cache_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path))
    p = onnx_export.onnx_path()
    digest = onnx_export.sha256_file(onnx_export.weights_path())
    assert p.parent == tmp_path
    assert p.name == f"efficientnet-lite0-{digest[:16]}-v{onnx_export.EXPORT_FORMAT_VERSION}.onnx"


def test_export_without_torch_names_the_install(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(BackendUnavailable, match=r"pip install torch==2\.13\.0 'cbir\[train\]'"):
        onnx_export.export_onnx(out=tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# -- colorhist (fast) -------------------------------------------------------------------------
def test_colorhist_features() -> None:
    ex = ColorHistogram()
    assert (ex.dim, ex.input_size, ex.class_names) == (128, 128, [])
    imgs = [_solid((250, 10, 10)), _solid((240, 30, 20), (20, 90)), _solid((10, 10, 250)),
            _noise(7)]
    h = ex.preprocess(imgs[0])
    assert h.shape == (128,) and h.dtype == np.float32 and np.isclose(h.sum(), 1.0)
    emb = embed_images(imgs, ex, batch_size=3)
    f = emb.features
    assert f.shape == (4, 128) and f.dtype == np.float32
    assert np.allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-6)
    assert emb.probs is None and emb.regions is None
    assert f[0] @ f[1] > 0.9 > f[0] @ f[2]  # two reds are close, red and blue are not
    assert np.array_equal(f, embed_images(imgs, ex).features)  # deterministic
    assert top_labels(emb.probs, ex.class_names) == []
    with pytest.raises(InvalidRequest):
        ex.embed(np.zeros((2, 64), np.float32))


# -- pipeline (fast, colorhist) ---------------------------------------------------------------
@pytest.mark.parametrize("fused", [False, True])
def test_pipeline_one_result_per_input(tmp_path: Path, fused: bool) -> None:
    files = _write_mixed(tmp_path)
    items = list(files.items())
    ex = ColorHistogram()
    results = list(embed_files(items, ex, batch_size=2, decode_workers=2, fused=fused))
    by_key: dict[str, ItemResult[str]] = {r.key: r for r in results}
    assert len(results) == len(items) and set(by_key) == set(files)
    for key in ("corrupt", "empty", "missing"):
        r = by_key[key]
        assert r.error and r.features is None and not r.skipped, key
    assert by_key["missing"].sha256 is None and by_key["empty"].size == 0
    assert "empty" in by_key["empty"].error
    for key in ("small_png", "big_jpg", "grey_png", "rgba_png", "wide_jpg"):
        r = by_key[key]
        assert r.error is None and r.ok and r.path == files[key], key
        data = files[key].read_bytes()
        assert r.sha256 == hashlib.sha256(data).hexdigest() and r.size == len(data)
        assert r.features.shape == (128,) and np.isclose(np.linalg.norm(r.features), 1.0)
        with Image.open(files[key]) as im:
            assert (r.width, r.height) == im.size  # original size, not the draft-decoded one
        expect = embed_images([Image.open(files[key]).convert("RGB")], ex).features[0]
        if key.endswith("png"):
            assert np.allclose(r.features, expect, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_pipeline_read_hook_skips(tmp_path: Path, fused: bool) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        _noise(i % 2).save(p)  # 0,2,4 share content, so do 1,3
        paths.append(p)
    seen: set[str] = set()
    calls: list[int] = []

    def hook(key: int, digest: str) -> bool:
        calls.append(key)
        assert digest == hashlib.sha256(paths[key].read_bytes()).hexdigest()
        new = digest not in seen
        seen.add(digest)
        return new

    results = list(embed_files(enumerate(paths), ColorHistogram(), batch_size=8, decode_workers=1,
                               read_hook=hook, fused=fused))
    assert sorted(calls) == [0, 1, 2, 3, 4] and len(results) == 5
    skipped = [r for r in results if r.skipped]
    assert len(skipped) == 3 and all(r.features is None and r.error is None for r in skipped)
    assert all(r.sha256 and r.width == 96 for r in skipped)
    assert sum(r.ok for r in results) == 2


@pytest.mark.parametrize("fused", [False, True])
def test_pipeline_is_lazy_and_bounded(tmp_path: Path, fused: bool) -> None:
    p = tmp_path / "a.png"
    _noise(0, (32, 32)).save(p)
    consumed = 0

    def items():
        nonlocal consumed
        for i in range(10_000):
            consumed += 1
            yield i, p

    gen = embed_files(items(), ColorHistogram(), batch_size=4, decode_workers=2, max_pending=10,
                      fused=fused)
    first = [next(gen) for _ in range(3)]
    assert all(r.ok for r in first)
    assert consumed <= 10 + 4 + 3  # never far ahead of the consumer
    gen.close()  # stops the workers


@pytest.mark.parametrize("fused", [False, True])
def test_pipeline_many_items_all_accounted(tmp_path: Path, fused: bool) -> None:
    good = tmp_path / "g.jpg"
    _noise(0, (64, 64)).save(good)
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"nope")
    items = [(i, good if i % 7 else bad) for i in range(103)]
    for infer_workers in (1, 2):
        results = list(embed_files(items, ColorHistogram(), batch_size=16, decode_workers=3,
                                   infer_workers=infer_workers, fused=fused))
        assert sorted(r.key for r in results) == list(range(103))
        assert sum(r.error is not None for r in results) == len(range(0, 103, 7))


def test_pipeline_fused_by_default_with_an_inference_thread_per_core(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """One single-threaded inference worker per core: each worker decodes its own batch
    (threads named cbir-embed); otherwise decode threads feed the inference threads."""
    import threading

    good = tmp_path / "g.png"
    _noise(0, (32, 32)).save(good)
    seen: set[str] = set()

    class Recording(ColorHistogram):
        intra_op_num_threads = 1

        def embed(self, batch, *, regions=False):
            seen.add(threading.current_thread().name.rsplit("_", 1)[0])
            return super().embed(batch, regions=regions)

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert len(list(embed_files([(i, good) for i in range(9)], Recording(), batch_size=4))) == 9
    assert seen == {"cbir-embed"}
    seen.clear()
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # 4 cores, 2 batches of 2 threads
    ex = Recording()
    ex.intra_op_num_threads = 2
    assert len(list(embed_files([(i, good) for i in range(9)], ex, batch_size=4))) == 9
    assert seen == {"cbir-infer"}


# -- the real backbone (slow) ----------------------------------------------------------------
@pytest.fixture(scope="session")
def effnet() -> FeatureExtractor:
    """EfficientNet-Lite0 with its onnxruntime session; exports the ONNX model once if needed."""
    ex = create_extractor("efficientnet-lite0")
    try:
        ex.session  # noqa: B018 - export (first run on a machine) + load
    except BackendUnavailable as e:
        pytest.skip(str(e))
    return ex


@pytest.fixture(scope="session")
def chelsea() -> Image.Image:
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.chelsea())


@pytest.mark.slow
def test_effnet_features_normalised_deterministic(effnet, chelsea: Image.Image) -> None:
    imgs = [chelsea, _noise(1, (320, 240)), _noise(2, (200, 260))]
    emb = embed_images(imgs, effnet)
    assert emb.features.shape == (3, 1280) and emb.features.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb.features, axis=1), 1.0, atol=1e-5)
    assert emb.probs.shape == (3, 1000) and np.allclose(emb.probs.sum(1), 1.0, atol=1e-4)
    assert emb.regions is None
    again = embed_images(imgs, effnet)
    assert np.array_equal(emb.features, again.features)
    alone = embed_images([imgs[1]], effnet).features[0]  # independent of the batch
    assert np.allclose(alone, emb.features[1], atol=1e-5)


@pytest.mark.slow
def test_effnet_cat_in_top5(effnet, chelsea: Image.Image) -> None:
    emb = embed_images([chelsea], effnet)
    top5 = [name for name, _ in top_labels(emb.probs, effnet.class_names, 5)[0]]
    assert CAT_LABELS & set(top5), top5
    assert top5[0] in CAT_LABELS


@pytest.mark.slow
def test_effnet_regions_relate_to_pooled(effnet, chelsea: Image.Image) -> None:
    batch = np.stack([effnet.preprocess(chelsea), effnet.preprocess(_noise(3, (256, 256)))])
    raw = effnet.forward(batch)
    assert raw["regions"].shape == (2, 49, 1280) and raw["pooled"].shape == (2, 1280)
    assert np.allclose(raw["regions"].mean(axis=1), raw["pooled"], atol=1e-4)
    emb = effnet.embed(batch, regions=True)
    assert emb.regions.shape == (2, 49, 1280) and emb.regions.dtype == np.float32
    pooled = emb.regions.mean(axis=1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    assert np.allclose(pooled, emb.features, atol=1e-4)


@pytest.mark.slow
def test_onnx_matches_torch(effnet, chelsea: Image.Image) -> None:
    torch = pytest.importorskip("torch")
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(onnx_export.weights_path())).eval()
    batch = np.stack([effnet.preprocess(chelsea), effnet.preprocess(_noise(4, (300, 300)))])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenMP spinning crawls on a busy machine
    with torch.no_grad():
        x = torch.from_numpy(batch)
        fmap = net.extract_features(x)
        ref_logits = net(x).numpy()
        ref_pooled = fmap.mean(dim=(2, 3)).numpy()
    torch.set_num_threads(threads)
    raw = effnet.forward(batch, ("pooled", "logits"))
    assert np.abs(raw["logits"] - ref_logits).max() < 1e-3
    assert np.abs(raw["pooled"] - ref_pooled).max() < 1e-3


@pytest.mark.slow
def test_effnet_pipeline_mixed_files(effnet, tmp_path: Path, chelsea: Image.Image) -> None:
    files = _write_mixed(tmp_path)
    cat = tmp_path / "cat.png"
    chelsea.save(cat)
    files["cat"] = cat
    results = {r.key: r for r in embed_files(files.items(), effnet, batch_size=3, regions=True)}
    assert len(results) == len(files)
    assert {k for k, r in results.items() if r.error} == {"corrupt", "empty", "missing"}
    for r in results.values():
        if r.error is None:
            assert r.features.shape == (1280,) and r.probs.shape == (1000,)
            assert r.regions.shape == (49, 1280)
    direct = embed_images([chelsea], effnet)
    assert np.allclose(results["cat"].features, direct.features[0], atol=1e-5)
    assert (results["cat"].width, results["cat"].height) == chelsea.size


@pytest.mark.slow
def test_export_is_atomic_on_failure(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "m.onnx"
    with pytest.raises(RuntimeError, match="does not match torch"):
        onnx_export.export_onnx(out=out, atol=-1.0)  # every diff "fails" verification
    assert list(tmp_path.iterdir()) == []  # neither the model nor a temp file is left
