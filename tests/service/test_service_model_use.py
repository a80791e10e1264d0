"""A trained model partitions the collection's class-partitioned index from the API
(``PUT /api/partition-model``, as ``cbir models use``), model searches with ``partitioned``
(as ``cbir models search --partitioned --nprobe``), and the ``geotagged=false`` filter.

One small collection and two tiny models (trained in-process, a few seconds each) serve the
module: m1 (blocks vs stripes) and m2, the same split with its class numbers the other way round.
Expected results are computed with ``cbir.train.apply`` directly, never hard-coded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from badfiles import make_good_images
from conftest import make_exif_photos, make_other_images, needs_service, wait_job

needs_service()


def make_gps_photos(folder: Path, n: int, seed: int, gps: bool) -> list[Path]:
    """``n`` JPEGs of colour blocks from a Canon, with a GPS position in their EXIF when ``gps``."""
    return make_exif_photos(folder, n, "Canon", "Canon EOS R6", None, seed, gps=gps)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A colorhist collection of stripes (photos/), blocks (more/) and geotagged / plain JPEGs,
    models m1 (classes blocks, stripes) and m2 (a_stripes, b_blocks) in its registry, and a
    TestClient over it."""
    pytest.importorskip("torch", reason="training a head needs torch")
    from fastapi.testclient import TestClient

    from cbir.collection import Collection
    from cbir.indexing import index_paths
    from cbir.service import ServiceConfig, create_app, training

    if not training.available():
        pytest.skip(f"cbir.train is not complete: {training.missing()}")
    tmp = tmp_path_factory.mktemp("model-use")
    root = tmp / "allowed"
    make_good_images(root / "photos", 12)
    make_other_images(root / "more", 6)
    geo = make_gps_photos(root / "geo", 3, seed=3, gps=True)
    plain = make_gps_photos(root / "plain", 3, seed=4, gps=False)
    make_good_images(root / "classes" / "stripes", 8, size=(48, 48))
    make_other_images(root / "classes" / "blocks", 8)
    make_good_images(root / "classes2" / "a_stripes", 8, size=(48, 48))
    make_other_images(root / "classes2" / "b_blocks", 8)
    coll = tmp / "coll"
    with Collection.create_or_open(coll, "colorhist") as col, col.writer_lock():
        index_paths(col, [root / d for d in ("photos", "more", "geo", "plain")], progress=False)
    training.train(coll, root / "classes", name="m1", extractor="colorhist",
                   options={"epochs": 30, "min_per_class": 2, "hidden": 16, "seed": 1}, trained_by="test",
                   cache_dir=tmp / "train-cache", stop=threading.Event(), on_progress=lambda *a: None)
    training.train(coll, root / "classes2", name="m2", extractor="colorhist",
                   options={"epochs": 30, "min_per_class": 2, "hidden": 16, "seed": 1}, trained_by="test",
                   cache_dir=tmp / "train-cache2", stop=threading.Event(), on_progress=lambda *a: None)
    client = TestClient(create_app(ServiceConfig(collection=coll, allow_roots=[root])))
    with client:
        yield {"client": client, "coll": coll, "root": root, "geo": geo, "plain": plain}


def _direct(coll: Path, fn, name: str = "m1") -> Any:
    """``fn(collection, model name)`` on a collection opened here, outside the server."""
    from cbir.collection import Collection
    from cbir.service import training

    model = training.registry(coll).load(name)
    with Collection.open(coll) as col:
        return fn(col, model)


def _ids_by_name(coll: Path) -> dict[str, int]:
    from cbir.collection import Collection

    with Collection.open(coll) as col:
        return {Path(r[1]).name: int(r[0]) for r in col.catalog.db.execute(
            "SELECT id, path FROM images WHERE status='ok'")}


def _query(col, image_id: int):
    from cbir.extract.base import l2_normalize
    from cbir.search import Query

    rec = col.catalog.get(id=image_id, with_feature=True)
    return Query(vector=l2_normalize(rec.feature[None, :])[0], exclude={image_id})


def test_use_search_partitioned_and_stop(setup):
    from cbir.train.apply import model_classes, query_probs, search_with_model

    client, coll = setup["client"], setup["coll"]
    ids = _ids_by_name(coll)
    q = ids["other_002.png"]  # a blocks image
    # nothing in use: colorhist predicts no classes, so there is no class-partitioned index
    got = client.get("/api/partition-model").json()
    assert got["model"] is None and got["class_partitioned_available"] is False
    assert client.get("/api/collection").json()["partition_model"] is None
    assert _in_use(client) == {"m1": False, "m2": False}
    r = client.get(f"/api/search?id={q}&index_type=class-partitioned")
    assert r.status_code == 409 and "/api/partition-model" in r.json()["detail"]
    r = client.get(f"/api/models/m1/search?id={q}&partitioned=true")
    assert r.status_code == 409 and r.json()["error"] == "not_in_use", r.text
    # bad requests
    assert client.put("/api/partition-model", json={"model": "nope"}).status_code == 404
    assert client.put("/api/partition-model", json={"model": "../x"}).status_code == 422
    assert client.put("/api/partition-model", json={}).status_code == 422
    assert client.put("/api/partition-model", json={"model": "m1", "x": 1}).status_code == 422

    out = _put(client, "m1")
    assert out["model"] == "m1" and out["previous"] is None and out["classes"] == ["blocks", "stripes"]
    assert out["class_partitioned_available"] is True and "rebuild" in out["note"]
    assert _in_use(client) == {"m1": True, "m2": False}
    info = client.get("/api/collection").json()
    assert info["partition_model"] == "m1" and info["class_partitioned_available"] is True
    assert client.put("/api/partition-model", json={"model": "m1"}).json()["previous"] == "m1"

    # a plain search through the class-partitioned index scans the query's class under m1
    all_ids, classes, _ = _direct(coll, lambda col, m: model_classes(col, m))
    cls = dict(zip(all_ids.tolist(), classes.tolist(), strict=True))
    q_class = _direct(coll, lambda col, m: int(np.argmax(query_probs(m, _query(col, q))[0])))
    same = {i for i, c in cls.items() if c == q_class and i != q}
    assert 3 <= len(same) < len(cls) - 1  # the model splits the collection (else this proves nothing)
    k = len(same)
    r = client.get(f"/api/search?id={q}&k={k}&index_type=class-partitioned")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["index_type"] == "class-partitioned"
    assert {h["id"] for h in data["hits"]} == same  # exactly the query's table, nothing of the others

    # the model search, partitioned: the same hits as cbir.train.apply's own partitioned search
    # (depth: the candidates, which a partitioned search takes from as many classes as hold them)
    for n_part, depth in ((1, 3), (2, 3), (1, 100)):
        want = _direct(coll, lambda col, m, n=n_part, d=depth: search_with_model(
            col, m, _query(col, q), k=3, depth=d, partitioned=True, n_partitions=n))
        r = client.get(f"/api/models/m1/search?id={q}&k=3&partitioned=true&n_partitions={n_part}"
                       f"&depth={depth}")
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["partitioned"] is True and data["n_partitions"] == n_part
        assert [h["id"] for h in data["hits"]] == [h.hit.id for h in want]
        assert [h["score"] for h in data["hits"]] == pytest.approx([h.score for h in want], abs=1e-4)
        assert [h["model_label"] for h in data["hits"]] == [h.label for h in want]
    # one class: candidates only from the query's table; both: every image, as unpartitioned
    one = client.get(f"/api/models/m1/search?id={q}&k=3&depth=3&partitioned=true").json()["hits"]
    assert len(one) == 3 and {h["id"] for h in one} <= same
    both = client.get(f"/api/models/m1/search?id={q}&k=30&partitioned=true&n_partitions=2").json()
    plain = client.get(f"/api/models/m1/search?id={q}&k=30").json()
    assert plain["partitioned"] is False and plain["n_partitions"] is None
    assert len(plain["hits"]) == len(cls) - 1
    assert [h["id"] for h in both["hits"]] == [h["id"] for h in plain["hits"]]
    # the upload form takes the same options
    photo = next(p for p in (setup["root"] / "more").iterdir() if p.name == "other_002.png")
    r = client.post("/api/models/m1/search", files={"file": (photo.name, photo.read_bytes())},
                    data={"k": "3", "depth": "3", "partitioned": "true", "n_partitions": "1"})
    assert r.status_code == 200, r.text
    up = r.json()
    assert up["partitioned"] is True and up["hits"][0]["id"] == q  # the photo itself comes first
    assert {h["id"] for h in up["hits"]} <= same | {q}
    assert client.post("/api/models/m1/search", files={"file": (photo.name, photo.read_bytes())},
                       data={"partitioned": "true", "n_partitions": "0"}).status_code == 422

    # stop using it: back to no classes at all
    out = _put(client, None)
    assert out["model"] is None and out["previous"] == "m1"
    assert _in_use(client) == {"m1": False, "m2": False}
    assert client.get("/api/collection").json()["partition_model"] is None
    assert client.get(f"/api/search?id={q}&index_type=class-partitioned").status_code == 409
    assert client.get(f"/api/models/m1/search?id={q}&partitioned=true").status_code == 409
    again = client.put("/api/partition-model", json={"model": None}).json()
    assert "nothing changed" in again["note"] and again["job"] is None


def test_use_is_refused_while_a_job_writes(setup):
    """Indexing holds the collection's writer lock: choosing a model answers 409 at once."""
    from cbir.store import WriterLock

    client = setup["client"]
    _put(client, None)
    lock = WriterLock(setup["coll"])
    assert lock.acquire()
    try:
        r = client.put("/api/partition-model", json={"model": "m1"})
        assert r.status_code == 409 and r.json()["error"] == "busy", r.text
        assert "has finished" in r.json()["detail"]
    finally:
        lock.release()
    assert client.get("/api/partition-model").json()["model"] is None  # nothing was changed
    _put(client, "m1")
    from cbir.collection import Collection
    from cbir.train.apply import used_model

    with Collection.open(setup["coll"]) as col:
        assert used_model(col)[0] == "m1"
    _put(client, None)


def _in_use(client) -> dict[str, bool]:
    return {m["name"]: m["in_use"] for m in client.get("/api/models").json()["models"]}


def _put(client, model: str | None) -> dict[str, Any]:
    """PUT /api/partition-model, then wait for the rebuild job it started (if it changed anything)."""
    r = client.put("/api/partition-model", json={"model": model})
    assert r.status_code == 200, r.text
    out = r.json()
    if out["job"] is not None:
        assert wait_job(client, out["job"]["id"])["status"] == "succeeded"
    return out


def _table(coll: Path, name: str, q: int) -> set[int]:
    """The ids (but ``q``) that model ``name`` puts in the class it predicts for image ``q``."""
    from cbir.train.apply import model_classes, query_probs

    ids, classes, _ = _direct(coll, lambda col, m: model_classes(col, m), name)
    c = _direct(coll, lambda col, m: int(np.argmax(query_probs(m, _query(col, q))[0])), name)
    return {int(i) for i, k in zip(ids, classes, strict=True) if k == c and i != q}


def _partitioned_hits(client, q: int, k: int) -> set[int]:
    """The hits of a class-partitioned search like ``q``; with k no larger than the query's table
    (with ``q``, one more), only that table is scanned."""
    r = client.get(f"/api/search?id={q}&k={k}&index_type=class-partitioned")
    assert r.status_code == 200, r.text
    assert r.json()["index_type"] == "class-partitioned"
    return {h["id"] for h in r.json()["hits"]}


def test_choosing_a_model_saves_the_index_again(setup):
    """The PUT starts the rebuild job that saves the index it dropped: while the job waits for
    the writer lock the collection says so (never "not built" with no job), another PUT is 409,
    and once it has finished the saved index is up to date (a restarted server loads it)."""
    from cbir.collection import Collection
    from cbir.store import WriterLock

    client, coll = setup["client"], setup["coll"]
    _put(client, None)
    before = client.get("/api/collection").json()
    assert before["index_type"] and before["index_up_to_date"] and before["index_job"] is None
    r = client.put("/api/partition-model", json={"model": "m1"})
    assert r.status_code == 200, r.text
    out = r.json()
    job = out["job"]
    assert job is not None and job["kind"] == "rebuild" and job["status"] in ("queued", "running")
    assert job["params"]["partition_model"] == "m1" and job["id"] in out["note"]
    lock = WriterLock(coll)
    assert lock.acquire()  # the PUT let go of it; the job (a process still starting) waits for it
    try:
        info = client.get("/api/collection").json()
        assert info["partition_model"] == "m1" and info["index_type"] is None
        assert info["index_job"] == {"id": job["id"], "kind": "rebuild",
                                     "status": client.get(f"/api/jobs/{job['id']}").json()["status"]}
        r = client.put("/api/partition-model", json={"model": None})  # a job is about to write
        assert r.status_code == 409 and r.json()["error"] == "busy" and job["id"] in r.json()["detail"]
        r = client.put("/api/partition-model", json={"model": "m2"})
        assert r.status_code == 409 and r.json()["error"] == "busy"
        # searches go on meanwhile, from an index built in memory with m1's classes
        q = _ids_by_name(coll)["other_002.png"]
        want = _table(coll, "m1", q)
        assert _partitioned_hits(client, q, len(want)) == want
    finally:
        lock.release()
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["index_type"] == before["index_type"]
    info = client.get("/api/collection").json()
    assert info["index_type"] == before["index_type"] and info["index_up_to_date"] is True
    assert info["index_job"] is None and info["partition_model"] == "m1"
    with Collection.open(coll) as col:  # what a restarted server finds: the saved index, current
        st = col.index_state()
        assert st is not None and st.generation == col.catalog.generation()
    lock = WriterLock(coll)
    assert lock.acquire()  # nobody kept the writer lock
    lock.release()
    assert client.get("/api/partition-model").json()["model"] == "m1"  # the 409s changed nothing
    out = _put(client, None)
    assert out["job"]["params"]["partition_model"] is None
    info = client.get("/api/collection").json()
    assert info["index_up_to_date"] is True and info["partition_model"] is None


def test_a_class_partitioned_collection_saves_the_new_classes(setup):
    """A collection whose own index is class-partitioned: after the PUT's job, the saved index
    (what `cbir search` and a restarted server load) has the new model's tables."""
    from cbir.collection import Collection
    from cbir.extract.base import l2_normalize
    from cbir.index import load_index
    from cbir.service import training
    from cbir.train.apply import query_probs

    client, coll = setup["client"], setup["coll"]
    q = _ids_by_name(coll)["other_002.png"]
    _put(client, "m1")
    r = client.post("/api/index/rebuild", json={"index_type": "class-partitioned"})
    assert r.status_code == 202 and wait_job(client, r.json()["id"])["status"] == "succeeded"
    try:
        assert client.get("/api/collection").json()["index_type"] == "class-partitioned"
        assert _table(coll, "m1", q) != _table(coll, "m2", q)  # else this proves nothing
        out = _put(client, "m2")
        info = client.get("/api/collection").json()
        assert info["index_type"] == "class-partitioned" and info["index_up_to_date"] is True
        model = training.registry(coll).load("m2")
        with Collection.open(coll) as col:
            idx = load_index(col.index_dir / "class-partitioned.faiss", mmap=True)
            rec = col.catalog.get(id=q, with_feature=True)
            vec = l2_normalize(rec.feature[None, :])
            want = _table(coll, "m2", q)
            _, got = idx.search(vec, len(want) + 1, query_probs=query_probs(model, _query(col, q)),
                                n_partitions=1)
        assert {int(i) for i in got[0] if i >= 0} == want | {q}
        assert _partitioned_hits(client, q, len(want)) == want
        assert out["previous"] == "m1"
    finally:  # back to the index the other tests expect (no class-partitioned one without a model)
        r = client.post("/api/index/rebuild", json={"index_type": "exact"})
        assert r.status_code == 202 and wait_job(client, r.json()["id"])["status"] == "succeeded"
        _put(client, None)


def test_deleting_the_model_in_use_saves_the_index_again(setup):
    """DELETE of the model in use stops using it (as `cbir models delete`): the same rebuild job."""
    from cbir.service import training

    client, coll = setup["client"], setup["coll"]
    training.train(coll, setup["root"] / "classes", name="m3", extractor="colorhist",
                   options={"epochs": 3, "min_per_class": 2, "hidden": 8, "seed": 1}, trained_by="test",
                   cache_dir=None, stop=threading.Event(), on_progress=lambda *a: None)
    _put(client, "m3")
    r = client.delete("/api/models/m3")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["collection_stopped_using_it"] is True and out["job"]["kind"] == "rebuild"
    assert wait_job(client, out["job"]["id"])["status"] == "succeeded"
    info = client.get("/api/collection").json()
    assert info["partition_model"] is None and info["index_up_to_date"] is True
    assert info["index_job"] is None and "m3" not in _in_use(client)


def test_a_switch_from_the_cli_reaches_the_running_server(setup):
    """`cbir models use` run from a shell while the server has a class-partitioned snapshot: the
    next search uses the new model's classes (the switch moves the catalog generation on), even
    while a job writes (a snapshot of another model's classes is never served)."""
    from cbir.collection import Collection
    from cbir.service import training
    from cbir.train.apply import stop_using, use_model

    client, coll = setup["client"], setup["coll"]
    q = _ids_by_name(coll)["other_002.png"]
    m1, m2 = _table(coll, "m1", q), _table(coll, "m2", q)
    assert m1 != m2  # m2 numbers the classes the other way round: an m1 snapshot answers wrongly
    _put(client, "m1")
    assert _partitioned_hits(client, q, len(m1)) == m1  # the server holds a snapshot of m1's classes

    def cli(name: str | None) -> None:  # what `cbir models use NAME|--none` does, in its own handle
        with Collection.open(coll) as col, col.writer_lock():
            if name is None:
                stop_using(col)
            else:
                use_model(col, training.registry(coll), name)

    def generation() -> int:
        with Collection.open(coll) as col:
            return col.catalog.generation()

    gen = generation()
    cli("m2")
    assert generation() == gen + 1  # in the transaction of the setting: every index is out of date
    assert client.get("/api/partition-model").json()["model"] == "m2"
    assert _partitioned_hits(client, q, len(m2)) == m2
    state = client.app.state.cbir
    state._writing += 1  # as while a job writes: stale snapshots are served, refreshed later
    try:
        cli("m1")
        assert _partitioned_hits(client, q, len(m1)) == m1
    finally:
        state._writing -= 1
    cli(None)
    assert client.get(f"/api/search?id={q}&index_type=class-partitioned").status_code == 409


def test_choosing_a_model_needs_the_token(coll, roots, make_client):
    from cbir.service import training
    from cbir.service.security import hash_token

    if not training.available():
        pytest.skip(f"cbir.train is not complete: {training.missing()}")
    token = "correct-horse-battery-staple-42"
    c = make_client(coll, allow_roots=[roots], token_hashes=[hash_token(token)])
    r = c.put("/api/partition-model", json={"model": None})
    assert r.status_code == 401, r.text
    r = c.put("/api/partition-model", json={"model": None}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["model"] is None


def test_not_geotagged_filter(setup):
    """geotagged=false keeps only the photos without GPS (it used to be dropped as 'no filter')."""
    from cbir.store.photometa import Filters, matching_ids

    client, coll = setup["client"], setup["coll"]
    ids = _ids_by_name(coll)
    geo = {ids[p.name] for p in setup["geo"]}
    q = ids[setup["plain"][0].name]
    everyone = {h["id"] for h in client.get(f"/api/search?id={q}&k=100").json()["hits"]} | {q}
    assert everyone == set(ids.values())
    with_gps = client.get(f"/api/search?id={q}&k=100&geotagged=true").json()
    assert {h["id"] for h in with_gps["hits"]} == geo
    without = client.get(f"/api/search?id={q}&k=100&geotagged=false").json()
    assert {h["id"] for h in without["hits"]} == set(ids.values()) - geo - {q}
    # the same set as the library's filter (PNGs without EXIF count as not geotagged)
    want = _direct(coll, lambda col, m: set(matching_ids(col.catalog, Filters(gps=False)).tolist()))
    assert want == set(ids.values()) - geo
    # uploads, words-free duplicates and the filter values agree
    photo = setup["geo"][0]
    r = client.post("/api/search?geotagged=false&k=100", files={"file": (photo.name, photo.read_bytes())})
    assert r.status_code == 200 and not {h["id"] for h in r.json()["hits"]} & geo
    dups = client.get("/api/duplicates?threshold=0.5&geotagged=false").json()
    assert not {m["id"] for g in dups["groups"] for m in g["members"]} & geo
    assert client.get("/api/filter-values").json()["geotagged"] == len(geo)
    assert client.get(f"/api/search?id={q}&geotagged=maybe").status_code == 422


def test_geotagged_query_flag_parsing():
    from cbir.service.filter_params import search_filters

    assert search_filters(folder=[], tag=[], geotagged=None) is None
    assert search_filters(folder=[], tag=[], geotagged=True).gps is True
    assert search_filters(folder=[], tag=[], geotagged=False).gps is False
    assert "not geotagged" in search_filters(folder=[], tag=[], geotagged=False).describe()

