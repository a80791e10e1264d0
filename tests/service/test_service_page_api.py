"""The read-only endpoints the web page uses besides search: duplicates; and the first-run roots."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from conftest import build_collection, needs_service

needs_service()

from cbir.commands import serve  # noqa: E402


def _dup_collection(tmp_path: Path, roots: Path) -> Path:
    photos = roots / "photos"
    first = sorted(photos.iterdir())[0]
    shutil.copy(first, photos / "copy_of_first.png")  # same bytes: an exact group
    coll = tmp_path / "dupcoll"
    build_collection(coll, photos)
    return coll


def test_duplicates_groups_with_a_keeper(tmp_path, roots, make_client):
    client = make_client(_dup_collection(tmp_path, roots), allow_roots=[roots])
    r = client.get("/api/duplicates", params={"threshold": 0.99})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total_groups"] >= 1 and body["threshold"] == 0.99
    exact = [g for g in body["groups"] if g["kind"] == "exact"]
    assert exact, body["groups"]
    g = exact[0]
    names = {m["name"] for m in g["members"]}
    assert "copy_of_first.png" in names
    assert sum(m["keeper"] for m in g["members"]) == 1
    assert g["keeper"] == next(m["id"] for m in g["members"] if m["keeper"])
    assert all(m["thumbnail_url"].endswith("/thumbnail") for m in g["members"])
    # the group of one image
    one = client.get("/api/duplicates", params={"id": g["members"][1]["id"], "threshold": 0.99}).json()
    assert one["total_groups"] == 1
    assert {m["id"] for m in g["members"]} <= {m["id"] for m in one["groups"][0]["members"]}
    # the files are all still there: the endpoint only reads
    assert all(Path(m["path"]).exists() for m in g["members"])
    assert client.get("/api/duplicates", params={"threshold": 0.2}).status_code == 422
    assert client.get("/api/duplicates", params={"id": 999999}).status_code == 404


def test_duplicates_need_the_token_where_reads_do(tmp_path, roots, make_client):
    from cbir.service.security import hash_token

    token = "t" * 32
    client = make_client(_dup_collection(tmp_path, roots), token_hashes=[hash_token(token)],
                         host="0.0.0.0")
    assert client.get("/api/duplicates").status_code == 401
    ok = client.get("/api/duplicates", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200


def _serve_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    return p.parse_args(list(argv))


def test_first_run_on_loopback_allows_home_and_indexed_folders(tmp_path, roots, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    coll = tmp_path / "coll2"
    build_collection(coll, roots / "photos")
    cfg = serve.build_config(_serve_args("--collection", str(coll)))
    assert cfg.allow_roots == [home.resolve(), (roots / "photos").resolve()]
    # given roots replace the defaults; --no-default-roots allows nothing
    cfg = serve.build_config(_serve_args("--collection", str(coll), "--allow-root", str(roots / "more")))
    assert cfg.allow_roots == [(roots / "more").resolve()]
    assert serve.build_config(_serve_args("--collection", str(coll), "--no-default-roots")).allow_roots == []


def test_off_loopback_nothing_is_allowed_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CBIR_API_TOKEN", "x" * 32)
    cfg = serve.build_config(_serve_args("--collection", str(tmp_path / "c"), "--host", "0.0.0.0"))
    assert cfg.allow_roots == []
