"""The REST API with FastAPI's TestClient on a small colorhist collection."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from badfiles import huge_header_png
from conftest import N_IMAGES, needs_service

needs_service()


def _png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _error(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"} and body["detail"], body
    return body


def test_health_collection_roots_docs(client, coll, roots):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["collection_exists"] and h["images"] == N_IMAGES
    assert h["auth_required"] is False and h["indexing_enabled"] is True
    info = client.get("/api/collection").json()
    assert info["exists"] and info["images"] == N_IMAGES and info["extractor"] == "colorhist"
    assert client.get("/api/roots").json() == {"roots": [str(roots)]}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/api/search" in spec["paths"] and "/api/index-jobs" in spec["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "cbir" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_files(client, page):
    pytest.importorskip("fastapi_offline", reason="the service extra's fastapi-offline serves the docs files")
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    # nothing from another site: no absolute URL anywhere, and the CSP forbids loading one
    assert "http:" not in r.text and "https:" not in r.text and "//cdn" not in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "http" not in csp
    urls = re.findall(r'(?:src|href|spec-url)="([^"]+)"', r.text) + re.findall(r"url: '([^']+)'", r.text)
    assert "/openapi.json" in urls
    assets = [u for u in urls if u != "/openapi.json"]
    assert assets and all(u.startswith("/docs-assets/") for u in assets), urls
    for url in urls:
        got = client.get(url)
        assert got.status_code == 200 and len(got.content) > 1000, url
    if page == "/docs":
        assert {"/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"} <= set(assets)
        assert client.get("/docs/oauth2-redirect").status_code == 200
    else:
        assert "/docs-assets/redoc.standalone.js" in assets


def test_search_upload_finds_the_same_image_first(client, roots):
    query = sorted((roots / "photos").iterdir())[0]
    r = client.post("/api/search", files={"file": (query.name, query.read_bytes(), "image/jpeg")},
                    data={"k": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    hits = body["hits"]
    assert len(hits) == 5 and body["k"] == 5 and body["index_type"] == "exact"
    assert body["collection_images"] == N_IMAGES and body["query"]["name"] == query.name
    assert hits[0]["path"] == str(query) and hits[0]["similarity"] > 0.98
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(a["similarity"] >= b["similarity"] for a, b in zip(hits, hits[1:], strict=False))
    for h in hits:  # the paper's similarity 1 / (1 + Euclidean distance)
        assert h["similarity"] == pytest.approx(1 / (1 + h["distance"]), abs=1e-5)
        assert h["thumbnail_url"] == f"/api/images/{h['id']}/thumbnail"


def test_search_min_similarity_and_index_type(client, roots):
    query = sorted((roots / "photos").iterdir())[3]
    files = {"file": (query.name, query.read_bytes())}
    r = client.post("/api/search", files=files, data={"k": "12", "min_similarity": "0.99"})
    assert r.status_code == 200 and [h["path"] for h in r.json()["hits"]] == [str(query)]
    r = client.post("/api/search", files=files, data={"k": "3", "index_type": "hnsw"})
    assert r.status_code == 200 and r.json()["index_type"] == "hnsw"
    assert r.json()["hits"][0]["path"] == str(query)
    body = _error(client.post("/api/search", files=files, data={"index_type": "bogus"}), 422)
    assert "index_type" in body["detail"]
    body = _error(client.post("/api/search", files=files, data={"index_type": "class-partitioned"}), 409)
    assert "class-partitioned" in body["detail"] and "colorhist" in body["detail"]


def test_search_by_id(client):
    r = client.get("/api/search", params={"id": 1, "k": 3})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert len(hits) == 3 and all(h["id"] != 1 for h in hits)
    r = client.get("/api/search", params={"id": 1, "k": 3, "include_self": True})
    assert r.json()["hits"][0]["id"] == 1
    _error(client.get("/api/search", params={"id": 999_999}), 404)
    body = _error(client.get("/api/search", params={"id": 1, "k": 0}), 422)
    assert "query parameter k" in body["detail"]
    _error(client.get("/api/search", params={"id": "abc"}), 422)
    _error(client.get("/api/search"), 422)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"this is a text file, not a photo\n", "not an image"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 64, "image"),
])
def test_search_rejects_bad_images(client, data, reason):
    body = _error(client.post("/api/search", files={"file": ("bad.jpg", data)}), 422)
    assert body["error"] == "invalid_image" and reason in body["detail"] and "bad.jpg" in body["detail"]


def test_upload_pixel_and_size_limits(client):
    body = _error(client.post("/api/search", files={"file": ("huge.png", huge_header_png())}), 422)
    assert "pixels" in body["detail"] and "limit" in body["detail"]
    big = os.urandom(2_100_000)
    body = _error(client.post("/api/search", files={"file": ("big.jpg", big)}), 413)
    assert "2000000" in body["detail"]
    body = _error(client.post("/api/search", data={"k": "3"}), 422)
    assert "file" in body["detail"]


def test_images_and_thumbnails(client, coll, roots):
    r = client.get("/api/images/1")
    assert r.status_code == 200 and r.headers["content-type"] in ("image/jpeg", "image/png")
    assert r.headers["x-content-type-options"] == "nosniff"
    meta = client.get("/api/images/1/meta").json()
    assert meta["id"] == 1 and Path(meta["path"]).parent == roots / "photos"
    assert r.content == Path(meta["path"]).read_bytes()
    t = client.get("/api/images/1/thumbnail")
    assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    cached = coll / "thumbnails" / "01" / "1.jpg"
    assert cached.is_file() and Image.open(cached).size[0] <= 256
    mtime = cached.stat().st_mtime_ns
    assert client.get("/api/images/1/thumbnail").content == t.content
    assert cached.stat().st_mtime_ns == mtime  # served from the cache
    _error(client.get("/api/images/424242"), 404)
    _error(client.get("/api/images/424242/thumbnail"), 404)
    _error(client.get("/api/images/0"), 422)
    Path(client.get("/api/images/2/meta").json()["path"]).unlink()
    body = _error(client.get("/api/images/2/thumbnail"), 404)
    assert "re-index" in body["detail"]


def test_thumbnail_of_a_file_that_became_corrupt(client):
    path = Path(client.get("/api/images/3/meta").json()["path"])
    path.write_bytes(b"garbage" * 100)
    body = _error(client.get("/api/images/3/thumbnail"), 422)
    assert body["error"] == "invalid_image"


def test_errors_are_json(client):
    body = _error(client.get("/api/nothing-here"), 404)
    assert "no such endpoint" in body["detail"]
    r = client.delete("/api/health")
    _error(r, 405)
    assert r.headers["allow"] == "GET"
    r = client.put("/api/search")
    _error(r, 405)
    assert r.headers["allow"] == "GET, POST" and "GET or POST" in r.json()["detail"]
    long = "x" * 300
    body = _error(client.post("/api/index-jobs", json={"path": long}), 400)
    assert "too long" in body["detail"]
    _error(client.post("/api/index-jobs", content=b"{not json", headers={"content-type": "application/json"}),
           422)
    body = _error(client.post("/api/index-jobs", json={"path": "x", "surprise": 1}), 422)
    assert "surprise" in body["detail"]


def test_metrics(client):
    client.get("/api/search", params={"id": 1})
    client.get("/api/images/1/thumbnail")
    text = client.get("/metrics").text
    assert 'cbir_http_requests_total{method="GET",route="/api/search",status="200"} 1' in text
    assert 'route="/api/images/{image_id}/thumbnail"' in text
    assert 'cbir_http_request_duration_seconds_bucket{method="GET",route="/api/search",le="+Inf"} 1' in text
    assert f"cbir_collection_images {N_IMAGES}" in text
    assert "cbir_index_snapshot_vectors" in text


def test_no_collection_yet(tmp_path, make_client):
    c = make_client(tmp_path / "empty")
    assert c.get("/api/health").json()["collection_exists"] is False
    assert c.get("/api/collection").json()["exists"] is False
    r = c.post("/api/search", files={"file": ("q.png", _png())})
    assert r.status_code == 200 and r.json()["hits"] == [] and r.json()["collection_images"] == 0
    body = _error(c.get("/api/search", params={"id": 1}), 404)
    assert "index a folder" in body["detail"]
    body = _error(c.post("/api/index-jobs", json={"path": "/tmp"}), 403)
    assert "--allow-root" in body["detail"]


def test_second_server_on_the_same_collection_is_refused(client, coll):
    from cbir.errors import CollectionError
    from cbir.service import ServiceConfig
    from cbir.service.state import ServiceState

    with pytest.raises(CollectionError, match="already serving"):
        ServiceState(ServiceConfig(collection=coll)).start()


def test_search_by_id_can_rerank(client):
    deep = {h["id"] for h in client.get("/api/search", params={"id": 1, "k": 100}).json()["hits"]}
    got = client.get("/api/search", params={"id": 1, "k": 5, "rerank": "qe"})
    assert got.status_code == 200 and len(got.json()["hits"]) == 5
    assert {h["id"] for h in got.json()["hits"]} <= deep
    bad = client.get("/api/search", params={"id": 1, "rerank": "bogus"})
    assert bad.status_code in (400, 422) and "rerank" in bad.text
