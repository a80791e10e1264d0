"""The Python API (``import cbir``): the README's example as written, and every method on the
fast colorhist extractor."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import cbir
from badfiles import make_good_images
from cbir.store import WriterLock

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    """The fenced python block under the README's "Python API" heading."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^#+ Python API\s*$(.*?)^```python\n(.*?)^```", text, re.M | re.S)
    assert m, "README.md has no ```python block under a 'Python API' heading"
    assert not re.search(r"^#", m.group(1), re.M), "the python block must come before the next heading"
    return m.group(2)


def _backbone_available() -> str | None:
    """None if the real backbone can run here, else why not."""
    from cbir.extract.onnx_export import cache_dir

    if any(cache_dir().glob("efficientnet-lite0-*.onnx")):
        return None
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        return None  # the ONNX model is exported once from the pip-shipped weights
    return f"needs the EfficientNet ONNX model in {cache_dir()} or torch to export it"


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    why = _backbone_available()
    if why:
        pytest.skip(why)
    data = pytest.importorskip("skimage.data")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, arr in (("cat", data.chelsea()), ("rocket", data.rocket()), ("coffee", data.coffee()),
                      ("astronaut", data.astronaut())):
        Image.fromarray(arr).convert("RGB").save(photos / f"{name}.jpg", quality=90)
    cat = Image.fromarray(data.chelsea()).convert("RGB")
    w, h = cat.size
    cat.crop((w // 8, h // 8, w - w // 8, h - h // 8)).transpose(Image.Transpose.FLIP_LEFT_RIGHT) \
        .save(tmp_path / "query.jpg", quality=85)
    monkeypatch.chdir(tmp_path)

    ns: dict = {}
    exec(compile(readme_example(), "README.md (Python API)", "exec"), ns)  # noqa: S102

    out, err = capsys.readouterr()
    assert err == ""  # no progress bar unless asked
    assert ns["report"].added == 4 and ns["report"].failed == []
    assert Path(ns["hits"][0].path).name == "cat.jpg"
    assert "cat.jpg" not in {Path(h.path).name for h in ns["similar"]}
    res = ns["res"]
    assert res.model == "builtin" and Path(res.hits[0].path).name == "cat.jpg"
    assert json.loads(json.dumps(ns["hits"][0].to_dict()))["rank"] == 1
    assert "4 added; 4 images;" in out
    assert ns["col"].closed


# -- fast: every method on the colorhist extractor ----------------------------------------
@pytest.fixture
def photos(tmp_path) -> Path:
    d = tmp_path / "photos"
    make_good_images(d, 8)
    return d


@pytest.fixture
def col(tmp_path):
    with cbir.open(tmp_path / "coll", extractor="colorhist") as c:
        yield c


def test_import_is_cheap_and_all_names_resolve():
    code = ("import sys, cbir; heavy = [m for m in ('faiss', 'onnxruntime', 'torch', 'numpy') "
            "if m in sys.modules]; print(heavy); "
            "print([n for n in cbir.__all__ if getattr(cbir, n, None) is None])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout.splitlines()
    assert out == ["[]", "[]"]
    assert {"open", "Collection", "Hit", "SceneHit", "SceneResult", "IndexReport", "CbirError",
            "CollectionError", "InvalidRequest", "InvalidImage", "__version__"} <= set(cbir.__all__)
    for name in ("Hit", "SceneHit", "SceneResult", "IndexReport"):
        assert dataclasses.is_dataclass(getattr(cbir, name)) and hasattr(getattr(cbir, name), "to_dict")
    with pytest.raises(AttributeError):
        cbir.no_such_name  # noqa: B018


def test_index_is_incremental_and_quiet_unless_asked(col, photos, capsys):
    report = col.index(photos)
    assert isinstance(report, cbir.IndexReport)
    assert report.added == 8 and report.problems == [] and len(col) == 8
    assert report.to_dict()["added"] == 8
    assert capsys.readouterr().err == ""  # progress=False by default
    again = col.index(str(photos))
    assert again.added == 0 and again.unchanged == 8
    make_good_images(photos / "more", 2)
    assert col.index(photos, progress=True).added == 2
    assert "indexing" in capsys.readouterr().err
    info = col.info()
    assert info["images"] == len(col) == 10 and info["extractor"] == col.extractor == "colorhist"
    assert col.path.name == "coll" and "images=10" in repr(col)
    # the lock was the API's, and it is released
    lock = WriterLock(col.path)
    assert lock.acquire()
    lock.release()


def test_search_by_path_bytes_pil_and_several(col, photos):
    col.index(photos)
    first = sorted(photos.iterdir())[0]
    by_path = col.search(first, k=3)
    assert len(by_path) == 3 and by_path[0].path == str(first) and by_path[0].similarity > 0.99
    assert [h.rank for h in by_path] == [1, 2, 3]
    hit = by_path[0]
    assert isinstance(hit, cbir.Hit) and dataclasses.is_dataclass(hit)
    d = json.loads(json.dumps(hit.to_dict()))
    assert d["path"] == str(first) and {"similarity", "distance", "cosine", "labels"} <= set(d)
    assert col.search(str(first), k=3) == by_path
    assert col.search(first.read_bytes(), k=3)[0].path == str(first)
    with Image.open(first) as im:
        assert col.search(im, k=1)[0].path == str(first)
        assert col.search(im.convert("RGBA"), k=1)[0].path == str(first)
    second = sorted(photos.iterdir())[1]
    both = {h.path for h in col.search([first, second.read_bytes()], k=2)}
    assert both == {str(first), str(second)}
    assert len(col.search(first, k=100)) == 8
    assert all(h.similarity >= 0.99 for h in col.search(first, min_similarity=0.99))


def test_index_types_are_passed_through(col, photos):
    col.index(photos, index_type="hnsw")
    assert col.info()["index_requested"] == "hnsw" and col.info()["index_type"] == "hnsw"
    first = sorted(photos.iterdir())[0]
    assert col.search(first, k=1, index_type="exact")[0].path == str(first)
    assert col.search_like(first, k=1, index_type="exact", include_self=True)[0].path == str(first)
    with pytest.raises(cbir.InvalidRequest, match="unknown index type"):
        col.index(photos, index_type="nope")


def test_search_errors_are_clear(col, photos, tmp_path):
    col.index(photos)
    with pytest.raises(cbir.InvalidImage):
        col.search(b"not an image")
    with pytest.raises(cbir.InvalidImage):
        col.search(tmp_path / "missing.jpg")
    with pytest.raises(cbir.InvalidRequest, match="k must be"):
        col.search(sorted(photos.iterdir())[0], k=0)
    with pytest.raises(cbir.InvalidRequest, match="not in the collection"):
        col.search_like(tmp_path / "elsewhere.jpg")
    with pytest.raises(cbir.InvalidRequest, match="no such file or folder"):
        col.index(tmp_path / "nowhere")


def test_search_like_uses_the_stored_features(col, photos):
    col.index(photos)
    first = sorted(photos.iterdir())[0]
    hits = col.search_like(first, k=3)
    assert len(hits) == 3 and str(first) not in {h.path for h in hits}
    assert col.search_like(str(first), k=3, include_self=True)[0].path == str(first)
    # the stored feature, not the file: it still works after the file is gone
    first.unlink()
    assert [h.path for h in col.search_like(first, k=3)] == [h.path for h in hits]


def test_remove(col, photos):
    col.index(photos)
    files = sorted(photos.iterdir())
    assert col.remove(files[0]) == 1 and len(col) == 7
    assert files[0].as_posix() not in {h.path for h in col.search(files[0], k=10)}
    assert col.remove(files[0]) == 0  # not in the collection (any more)
    assert col.remove(photos) == 7 and len(col) == 0
    assert col.search(files[1]) == []


def test_a_second_writer_gets_a_clear_error(col, photos):
    col.index(photos)
    with cbir.open(col.path) as other, other.core.writer_lock():
        with pytest.raises(cbir.CollectionError, match="another cbir process is writing"):
            col.index(photos)
        with pytest.raises(cbir.CollectionError, match="another cbir process is writing"):
            col.remove(photos)
        assert len(col.search(sorted(photos.iterdir())[0], k=2)) == 2  # reading needs no lock
    assert col.index(photos).unchanged == 8  # and once the other writer is done, it works


def test_open_close_and_context_manager(tmp_path, photos):
    path = tmp_path / "c"
    with pytest.raises(cbir.CollectionError, match="no collection"):
        cbir.open(path, create=False)
    assert not path.exists()
    with cbir.open(path, extractor="colorhist") as col:
        col.index(photos)
    assert col.closed and "closed" in repr(col)
    with pytest.raises(cbir.CollectionError, match="closed"):
        len(col)
    col.close()  # closing twice is fine
    with cbir.open(path, create=False) as again:  # the extractor is the collection's own
        assert len(again) == 8 and again.extractor == "colorhist"
    with pytest.raises(cbir.InvalidRequest, match="colorhist"):
        cbir.open(path, extractor="efficientnet-lite0")
    with pytest.raises(cbir.InvalidRequest, match="colorhist"):
        cbir.open(path, extractor="efficientnet-lite0", create=False)
    monkey = cbir.open(os.fspath(path))  # a str works; close() without a with
    assert len(monkey) == 8
    monkey.close()


def test_default_collection_from_the_environment(tmp_path, photos, monkeypatch):
    monkeypatch.setenv("CBIR_COLLECTION", str(tmp_path / "envcoll"))
    with cbir.open(extractor="colorhist") as col:
        assert col.path == tmp_path / "envcoll"
        col.index(photos)
    assert (tmp_path / "envcoll" / "manifest.json").exists()


def test_scene_without_class_probabilities_says_what_to_do(col, photos):
    col.index(photos)
    with pytest.raises(cbir.InvalidRequest, match="concepts train"):
        col.scene("dog beach")


def test_scene_with_a_trained_concept_model(tmp_path):
    pytest.importorskip("torch")
    from cbir.scenes import train_concepts
    from scene_photos import make_tagged_photos

    photos = tmp_path / "photos"
    truth = make_tagged_photos(photos)
    with cbir.open(tmp_path / "coll", extractor="colorhist") as col:
        col.index(photos)
        train_concepts(col.core, vectors="none")
        res = col.scene("red blue", k=10)
    assert isinstance(res, cbir.SceneResult) and res.query == ["blue", "red"]
    assert all(isinstance(h, cbir.SceneHit) for h in res.hits) and len(res.hits) == 10
    assert sum({"red", "blue"} <= truth[h.path] for h in res.hits) >= 8
    d = json.loads(json.dumps(res.to_dict()))
    assert d["hits"][0] == res.hits[0].to_dict() and d["model"] == res.model


def test_search_accepts_an_in_memory_image_in_any_mode(col, photos):
    col.index(photos)
    buf = io.BytesIO()
    with Image.open(sorted(photos.iterdir())[0]) as im:
        im.convert("L").save(buf, "PNG")
        grey = im.convert("L")
    assert col.search(grey, k=1)[0].path == col.search(buf.getvalue(), k=1)[0].path


def test_an_in_memory_image_is_read_as_its_file_is(tmp_path):
    """EXIF orientation and transparency: a PIL image opened by the caller gives the same RGB
    pixels indexing would decode from the file."""
    import numpy as np

    from badfiles import make_variant_images
    from cbir.io.images import from_pil, load_image

    cases = make_variant_images(tmp_path)
    for case in ("exif_rotated", "palette_transparent"):
        with Image.open(cases[case]) as im:
            got = from_pil(im)
        want = load_image(cases[case])
        assert got.mode == "RGB" and got.size == want.size, case
        assert np.array_equal(np.asarray(got), np.asarray(want)), case
    with pytest.raises(cbir.InvalidImage, match="not a PIL image"):
        from_pil(b"bytes")  # type: ignore[arg-type]
