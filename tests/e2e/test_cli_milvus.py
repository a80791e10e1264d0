"""`cbir index --index-type milvus --milvus-uri URI`, then search, remove and serve, on a real Milvus.

The session's Milvus server comes from the ``milvus_uri`` fixture (tests/conftest.py); the cheap
``colorhist`` extractor keeps it fast.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.cli import main
from cbir.index import load_index
from cbir.index.base import read_index_header
from cbir.index.milvus import public_uri


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _photo(path: Path, hue: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:128]
    a = np.zeros((96, 128, 3), dtype=np.float32)
    a[..., hue % 3] = 120 + 100 * np.sin(x / (7.0 + seed)) * np.cos(y / 11.0)
    a[..., (hue + 1) % 3] = 40 + 60 * (x / 128) * (seed % 4)
    a += rng.normal(0, 8, a.shape)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=92)


def test_index_search_remove_serve_with_milvus(tmp_path, capsys, milvus_uri, monkeypatch) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        _photo(photos / f"p{i}.jpg", hue=i, seed=i)
    coll = str(tmp_path / "coll")
    monkeypatch.delenv("CBIR_MILVUS_URI")  # the URI must come from --milvus-uri and stay with the collection
    monkeypatch.setenv("CBIR_MILVUS_TOKEN", "root:Milvus")  # (auth is off on the test server)
    code, out, err = run(capsys, "-c", coll, "index", str(photos), "--extractor", "colorhist",
                         "--index-type", "milvus", "--milvus-uri", milvus_uri, "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["index_type"] == "milvus"

    # the local file names the server and collection, never the token
    header = read_index_header(Path(coll) / "index" / "milvus.faiss")
    assert header["backend"] == "milvus" and header["params"]["uri"] == milvus_uri
    assert header["params"]["collection"].startswith("cbir_") and header["count"] == 8
    raw = (Path(coll) / "index" / "milvus.faiss").read_bytes()
    assert b"Milvus" not in raw.replace(b"milvus", b"")  # no "root:Milvus"
    code, out, err = run(capsys, "-c", coll, "info", "--json")  # where the vectors live
    info = json.loads(out)
    assert code == 0 and info["milvus_uri"] == milvus_uri
    assert info["milvus_collection"] == header["params"]["collection"]

    code, out, err = run(capsys, "-c", coll, "search", str(photos / "p3.jpg"), "-k", "3", "--json")
    assert code == 0, err
    hits = json.loads(out)["hits"] if isinstance(json.loads(out), dict) else json.loads(out)
    assert Path(hits[0]["path"]).name == "p3.jpg" and hits[0]["similarity"] > 0.99
    assert len(hits) == 3

    code, _, err = run(capsys, "-c", coll, "remove", str(photos / "p3.jpg"), "-q")
    assert code == 0, err
    code, out, err = run(capsys, "-c", coll, "search", str(photos / "p3.jpg"), "-k", "8", "--json")
    assert code == 0, err
    hits = json.loads(out)["hits"] if isinstance(json.loads(out), dict) else json.loads(out)
    names = [Path(h["path"]).name for h in hits]
    assert "p3.jpg" not in names and len(names) == 7

    # the index in Milvus itself no longer holds it (Strong consistency: deleted = gone)
    idx = load_index(Path(coll) / "index" / "milvus.faiss")
    assert len(idx) == 7 and idx.server_count() == 7

    # `cbir serve`: the service searches the same Milvus collection
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cbir.service import ServiceConfig, create_app

    with TestClient(create_app(ServiceConfig(collection=Path(coll)))) as client:
        first = int(idx.ids()[0])
        r = client.get("/api/search", params={"id": first, "k": 3, "include_self": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["index_type"] == "milvus"
        assert body["hits"][0]["id"] == first and len(body["hits"]) == 3


def test_hash_codes_on_milvus_equal_faiss(tmp_path, capsys, milvus_uri) -> None:
    """`cbir hash train` on a Milvus collection puts the codes in a Milvus BINARY_VECTOR field;
    `search --codes` (with and without --rerank) returns what an identical FAISS collection does."""
    from pymilvus import MilvusClient

    from badfiles import make_good_images
    from cbir.index.base import read_index_header as header_of

    photos = tmp_path / "photos"
    make_good_images(photos, 40)
    faiss_c, milvus_c = str(tmp_path / "faiss"), str(tmp_path / "milvus")
    assert run(capsys, "-c", faiss_c, "index", str(photos), "--extractor", "colorhist", "-q")[0] == 0
    # identical catalogs (the same row ids, so ties by id agree); then one moves to Milvus
    shutil.copytree(faiss_c, milvus_c)
    assert run(capsys, "-c", milvus_c, "index", str(photos), "--index-type", "milvus",
               "--milvus-uri", milvus_uri, "-q")[0] == 0
    for c in (faiss_c, milvus_c):
        code, _, err = run(capsys, "-c", c, "hash", "train", "--method", "itq", "--bits", "64",
                           "--name", "h")
        assert code == 0, err
    stubs = list((Path(milvus_c) / "hashers" / "h").glob("*.milvus"))
    assert len(stubs) == 1
    assert not list((Path(faiss_c) / "hashers" / "h").glob("*.milvus"))
    params = header_of(stubs[0])["params"]
    client = MilvusClient(uri=milvus_uri)
    assert client.has_collection(params["collection"])
    # `hash list` says where the codes are searched: the Milvus collection on that server
    listed = {}
    for c in (faiss_c, milvus_c):
        code, out, _ = run(capsys, "-c", c, "hash", "list", "--json")
        assert code == 0
        listed[c] = json.loads(out)[0]
    assert listed[faiss_c]["search_index"] == "binary-flat" and "milvus_uri" not in listed[faiss_c]
    assert {k: v for k, v in listed[milvus_c].items() if k.startswith(("search", "milvus"))} == {
        "search_index": "milvus", "milvus_uri": milvus_uri,
        "milvus_collection": params["collection"], "milvus_codes": 40}
    code, out, _ = run(capsys, "-c", milvus_c, "hash", "list")
    assert code == 0 and f"milvus_collection={params['collection']}" in out \
        and f"milvus_uri={milvus_uri}" in out

    def hits(c: str, q: Path, *extra: str) -> list[tuple[str, int]]:
        code, out, err = run(capsys, "-c", c, "search", "--like", str(q), "--include-self",
                             "--codes", "h", "-k", "12", "--json", *extra)
        assert code == 0, err
        return [(Path(h["path"]).name, h["hamming"]) for h in json.loads(out)["hits"]]

    queries = sorted(photos.iterdir())[:3]
    for q in queries:
        for extra in ((), ("--rerank", "20")):
            assert hits(milvus_c, q, *extra) == hits(faiss_c, q, *extra)
    # removed images leave the Milvus copy at the next search (Strong: never returned again)
    victim = queries[1]
    for c in (faiss_c, milvus_c):
        assert run(capsys, "-c", c, "remove", str(victim), "-q")[0] == 0
    got = hits(milvus_c, queries[0])
    assert victim.name not in [n for n, _ in got] and got == hits(faiss_c, queries[0])
    assert client.query(params["collection"], filter="", output_fields=["count(*)"],
                        consistency_level="Strong")[0]["count(*)"] == 39
    # deleting the codes drops their Milvus collection
    assert run(capsys, "-c", milvus_c, "hash", "delete", "h")[0] == 0
    assert not client.has_collection(params["collection"])
    client.close()


def test_public_uri_hides_credentials() -> None:
    """What `cbir hash list` shows of a Milvus URI: no user:password, no query (?token=...)."""
    assert public_uri("http://root:Milvus@db.example:19530/x?token=abc#f") == "http://db.example:19530/x"
    assert public_uri("https://[::1]:443") == "https://[::1]:443"
    assert public_uri("http://127.0.0.1:19530") == "http://127.0.0.1:19530"
    assert public_uri(None) is None


@pytest.mark.parametrize("uri", ["http://root:S3cret-pw@127.0.0.1:1", "http://127.0.0.1:1/?token=S3cret-pw"])
def test_a_uri_with_a_credential_is_refused_and_never_written(tmp_path, capsys, monkeypatch, uri) -> None:
    """The collection writes its Milvus URI to disk, so a URI carrying a password or token is
    refused before anything is written, with where the credential goes instead; the same URI
    from $CBIR_MILVUS_URI is refused when the index would be created (no server is contacted)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "a.jpg", 10, 0)
    col = tmp_path / "col"
    code, _, err = run(capsys, "-c", str(col), "index", str(photos), "--index-type", "milvus",
                       "--milvus-uri", uri)
    assert code != 0 and "CBIR_MILVUS_TOKEN" in err and "S3cret-pw" not in err
    monkeypatch.setenv("CBIR_MILVUS_URI", uri)
    code, _, err = run(capsys, "-c", str(col), "index", str(photos), "--index-type", "milvus")
    assert code != 0 and "CBIR_MILVUS_TOKEN" in err and "S3cret-pw" not in err
    written = b"".join(p.read_bytes() for p in col.rglob("*") if p.is_file())
    assert b"S3cret-pw" not in written
