"""Search filters (issue 14, part 2): folder, EXIF date, camera, size, tags, GPS — on search by
example, by words and duplicates, in the CLI, the Python API and the REST API."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import cbir.search as search_mod
from cbir.cli import main
from cbir.collection import Collection
from cbir.indexing import index_paths
from cbir.store import photometa
from photo_meta import exif_photo

# (folder, name, date, make, model, gps, size, tags)
PHOTOS = [
    ("trips", "t0.jpg", "2019:05:01 10:00:00", "Canon", "Canon EOS 5D", False, (64, 48), "beach"),
    ("trips", "t1.jpg", "2019:08:02 11:00:00", "Canon", "Canon EOS 5D", False, (128, 96), "beach, family"),
    ("trips", "t2.jpg", "2021:01:03 12:00:00", "NIKON CORPORATION", "NIKON D750", True, (64, 48), "family"),
    ("home", "h0.jpg", "2021:06:04 13:00:00", "NIKON CORPORATION", "NIKON D750", True, (128, 96), ""),
    ("home", "h1.jpg", "2022:02:05 14:00:00", "Apple", "iPhone 12", True, (64, 48), "family"),
    ("home", "h2.jpg", None, None, None, False, (64, 48), ""),  # no EXIF at all
]


def make_library(root):
    for i, (folder, name, date, make, model, gps, size, tags) in enumerate(PHOTOS):
        p = exif_photo(root / folder / name, seed=i, size=size, date=date, make=make, model=model, gps=gps)
        if tags:
            p.with_suffix(".txt").write_text(tags)
    return root


@pytest.fixture
def lib(tmp_path):
    photos = make_library(tmp_path / "photos")
    coll = tmp_path / "coll"
    with Collection.create_or_open(coll, "colorhist") as col, col.writer_lock():
        report = index_paths(col, [photos], progress=False)
    assert report.added == len(PHOTOS)
    return photos, coll


def names(hits) -> set[str]:
    return {(h["path"] if isinstance(h, dict) else h.path).rsplit("/", 1)[-1] for h in hits}


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "index+post-filter"])
def test_each_filter_narrows_search_by_example(lib, capsys, monkeypatch, exact):
    photos, coll = lib
    if not exact:  # force the large-collection path: index search, growing post-filter
        monkeypatch.setattr(search_mod, "EXACT_FILTER_LIMIT", 0)
    q = str(photos / "home" / "h2.jpg")
    cases = {
        ("--camera", "canon"): {"t0.jpg", "t1.jpg"},
        ("--camera", "D750"): {"t2.jpg", "h0.jpg"},
        ("--after", "2021"): {"t2.jpg", "h0.jpg", "h1.jpg"},
        ("--before", "2021-06"): {"t0.jpg", "t1.jpg", "t2.jpg"},
        ("--after", "2019-06", "--before", "2021-06-04"): {"t1.jpg", "t2.jpg"},
        ("--folder", str(photos / "trips")): {"t0.jpg", "t1.jpg", "t2.jpg"},
        ("--min-width", "100"): {"t1.jpg", "h0.jpg"},
        ("--tag", "family"): {"t1.jpg", "t2.jpg", "h1.jpg"},
        ("--tag", "family", "--tag", "beach"): {"t1.jpg"},
        ("--geotagged",): {"t2.jpg", "h0.jpg", "h1.jpg"},
        ("--folder", str(photos / "home"), "--geotagged", "--camera", "iphone"): {"h1.jpg"},
    }
    for args, want in cases.items():
        code = main(["-c", str(coll), "search", "--like", q, "--include-self", "-k", "10", *args, "--json"])
        out = capsys.readouterr().out
        assert code == 0, args
        assert names(json.loads(out)["hits"]) == want, args
    # the table says which filters were used
    assert main(["-c", str(coll), "search", "--like", q, "--camera", "canon"]) == 0
    assert "note: filters: camera ~ 'canon'" in capsys.readouterr().err


def test_filters_in_the_python_api_and_bad_values(lib):
    import cbir

    photos, coll = lib
    with cbir.open(coll) as col:
        hits = col.search_like(photos / "home" / "h2.jpg", k=10, filters={"after": "2021", "gps": True})
        assert names(hits) == {"t2.jpg", "h0.jpg", "h1.jpg"}
        with pytest.raises(cbir.CbirError, match="unknown filter"):
            col.search_like(photos / "home" / "h2.jpg", filters={"colour": "red"})
        with pytest.raises(cbir.CbirError, match="2021-07-04"):
            col.search_like(photos / "home" / "h2.jpg", filters={"after": "last week"})


def test_an_older_collection_gets_its_metadata_on_the_next_index_run(lib, capsys):
    photos, coll = lib
    with Collection.open(coll) as col, col.writer_lock():
        with col.catalog.transaction() as db:
            db.execute("DROP TABLE photo_meta")  # as indexed by a cbir that kept no metadata
        assert photometa.without_metadata(col.catalog) == len(PHOTOS)
    code = main(["-c", str(coll), "search", "--like", str(photos / "home" / "h2.jpg"), "--camera", "canon",
                 "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["hits"] == []
    q = str(photos / "home" / "h2.jpg")
    assert main(["-c", str(coll), "search", "--like", q, "--camera", "canon"]) == 0
    assert "have no photo metadata yet" in capsys.readouterr().err
    with Collection.open(coll) as col, col.writer_lock():
        report = index_paths(col, [photos], progress=False)
        assert report.metadata_read == len(PHOTOS) and report.added == 0
        assert photometa.without_metadata(col.catalog) == 0
        assert photometa.get(col.catalog, col.catalog.get(path=str(photos / "trips" / "t0.jpg")).id) == {
            "taken_at": "2019-05-01T10:00:00", "make": "Canon", "model": "Canon EOS 5D", "gps": False}


def test_filters_on_duplicates_and_scene_search(lib, capsys):
    from cbir.store.catalog import pack_class_probs

    photos, coll = lib
    shutil.copy(photos / "trips" / "t0.jpg", photos / "home" / "copy-of-t0.jpg")
    shutil.copy(photos / "home" / "h1.jpg", photos / "home" / "copy-of-h1.jpg")
    with Collection.open(coll) as col, col.writer_lock():
        index_paths(col, [photos], progress=False)
        for rec in col.catalog.iter_records("ok"):  # what the ImageNet backbone would store: all "dogs"
            p = np.full(1000, 1e-5, dtype=np.float32)
            p[207] = 0.9 if "h" in rec.path.rsplit("/", 1)[-1] else 0.5
            col.catalog.db.execute("UPDATE images SET class_probs=? WHERE id=?",
                                   (pack_class_probs(p), rec.id))
        col.catalog._bump()
    assert main(["-c", str(coll), "duplicates", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["groups"]) == 2
    assert main(["-c", str(coll), "duplicates", "--folder", str(photos / "home"), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert len(groups) == 1 and names(groups[0]["members"]) == {"h1.jpg", "copy-of-h1.jpg"}
    assert main(["-c", str(coll), "scene", "dog", "-k", "20", "--camera", "nikon", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert names(res["hits"]) == {"t2.jpg", "h0.jpg"} and res["notes"][0].startswith("filters:")


def test_filters_in_the_rest_api(lib):
    from fastapi.testclient import TestClient

    from cbir.service.app import create_app
    from cbir.service.config import ServiceConfig

    photos, coll = lib
    with Collection.open(coll) as col:
        qid = col.catalog.get(path=str(photos / "home" / "h2.jpg")).id
    with TestClient(create_app(ServiceConfig(collection=coll))) as client:
        r = client.get("/api/search", params={"id": qid, "k": 10, "camera": "canon"})
        assert r.status_code == 200 and names(r.json()["hits"]) == {"t0.jpg", "t1.jpg"}
        r = client.get("/api/search", params=[("id", qid), ("k", 10), ("tag", "family"), ("tag", "beach")])
        assert names(r.json()["hits"]) == {"t1.jpg"}
        r = client.get("/api/search", params={"id": qid, "after": "yesterday"})
        assert r.status_code == 400 and "2021-07-04" in r.text
