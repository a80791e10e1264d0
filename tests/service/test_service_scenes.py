"""Concept search over HTTP: scene queries, the model list and concept prediction."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from cbir.collection import Collection
from conftest import needs_service
from scene_photos import make_tagged_photos

needs_service()
pytest.importorskip("torch")


@pytest.fixture
def scene_client(tmp_path, make_client):
    from cbir.indexing import index_paths
    from cbir.scenes import train_concepts

    photos = tmp_path / "allowed" / "photos"
    truth = make_tagged_photos(photos)
    coll = tmp_path / "coll"
    with Collection.create_or_open(coll, "colorhist") as col, col.writer_lock():
        index_paths(col, [photos], progress=False)
        train_concepts(col, vectors=None)
    return make_client(coll, allow_roots=[tmp_path / "allowed"]), truth, photos


def test_scene_query_ranks_images_with_every_concept_first(scene_client):
    client, truth, _ = scene_client
    r = client.get("/api/scenes", params={"q": "red, blue", "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == ["blue", "red"] and body["model"] == "scenes"
    hits = body["hits"]
    assert len(hits) == 10 and [h["rank"] for h in hits] == list(range(1, 11))
    assert sum({"red", "blue"} <= truth[h["path"]] for h in hits) >= 8
    h = hits[0]
    assert set(h["evidence"]) == {"red", "blue"} and h["evidence"]["red"]["visual"] > 0.5
    assert h["thumbnail_url"] == f"/api/images/{h['id']}/thumbnail"
    assert client.get(h["thumbnail_url"]).status_code == 200


def test_unknown_concepts_and_bad_parameters_are_4xx_with_a_reason(scene_client):
    client, _, _ = scene_client
    r = client.get("/api/scenes", params={"q": "red xylophone"})
    assert r.status_code == 400 and "xylophone" in r.json()["detail"]
    assert client.get("/api/scenes", params={"q": "", "k": 5}).status_code == 422
    assert client.get("/api/scenes", params={"q": "red", "k": 0}).status_code == 422
    r = client.get("/api/scenes", params={"q": "red", "model": "../etc"})
    assert r.status_code == 422
    r = client.get("/api/scenes", params={"q": "red", "model": "missing"})
    assert r.status_code == 404 and "no concept model" in r.json()["detail"]


def test_model_list_and_prediction_for_an_upload(scene_client):
    client, _, photos = scene_client
    models = client.get("/api/concept-models").json()
    assert [m["name"] for m in models] == ["scenes"] and models[0]["concepts"] == 4
    buf = io.BytesIO()
    Image.open(photos / "untagged0.png").save(buf, "PNG")
    r = client.post("/api/concepts/predict", files={"file": ("q.png", buf.getvalue(), "image/png")},
                    data={"top": "2"})
    assert r.status_code == 200, r.text
    assert {c["concept"] for c in r.json()["concepts"]} == {"red", "blue"}
    r = client.post("/api/concepts/predict", files={"file": ("q.png", b"not an image", "image/png")})
    assert r.status_code in (400, 422) and r.json()["detail"]


def test_scene_query_on_a_fresh_collection_uses_the_builtin_concepts(client, coll):
    """No concept model trained: /api/scenes (the page's concept box) answers by built-in concepts."""
    import numpy as np

    from cbir.store.catalog import pack_class_probs

    with Collection.open(coll) as col:
        first = next(col.catalog.iter_records("ok"))
        for rec in col.catalog.iter_records("ok"):
            p = np.full(1000, 1e-5, dtype=np.float32)
            p[207 if rec.id == first.id else 281] = 0.9  # one golden retriever, the rest tabby cats
            col.catalog.db.execute("UPDATE images SET class_probs=? WHERE id=?",
                                   (pack_class_probs(p), rec.id))
        col.catalog._bump()
    r = client.get("/api/scenes", params={"q": "dogs", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "builtin" and body["query"] == ["dog"] and body["notes"]
    assert body["hits"][0]["id"] == first.id and body["hits"][0]["evidence"]["dog"]["visual"] > 0.89
