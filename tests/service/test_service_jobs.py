"""Background jobs through the API: indexing, progress, persistence, maintenance, auth."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from badfiles import make_bad_files, make_good_images
from cbir.service.jobs import JOBS_NAME, JobOutcome, JobRunner, JobStore
from cbir.service.security import hash_token
from conftest import N_IMAGES, needs_service, wait_job

needs_service()


def test_index_job_adds_a_folder_and_searches_see_it(client, roots):
    r = client.post("/api/index-jobs", json={"path": str(roots / "more")})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["kind"] == "index" and job["status"] in ("queued", "running", "succeeded")
    job = wait_job(client, job["id"])
    assert job["status"] == "succeeded", job
    assert job["percent"] == 100 and job["done"] == job["total"] == 6
    assert job["result"]["added"] == 6 and job["error_count"] == 0
    assert client.get("/api/collection").json()["images"] == N_IMAGES + 6
    q = sorted((roots / "more").iterdir())[0]
    hits = client.post("/api/search", files={"file": (q.name, q.read_bytes())}, data={"k": "1"}).json()
    assert hits["hits"][0]["path"] == str(q) and hits["collection_images"] == N_IMAGES + 6
    # a second run is incremental: nothing to do, still 100 %
    job2 = wait_job(client, client.post("/api/index-jobs", json={"path": "more"}).json()["id"])
    assert job2["status"] == "succeeded" and job2["result"]["unchanged"] == 6 and job2["percent"] == 100
    listed = client.get("/api/jobs").json()["jobs"]
    assert [j["id"] for j in listed[:2]] == [job2["id"], job["id"]]
    assert client.get("/api/jobs", params={"status": "succeeded", "kind": "index"}).json()["jobs"]


def test_index_job_reports_bad_files(client, roots):
    make_bad_files(roots / "bad")
    job = wait_job(client, client.post("/api/index-jobs", json={"path": "bad"}).json()["id"])
    assert job["status"] == "succeeded" and job["error_count"] >= 4
    reasons = " ".join(e["reason"] for e in job["errors"])
    assert "empty file" in reasons and "truncated" in reasons
    assert "skipped" in job["message"]


@pytest.mark.parametrize("path, status", [
    ("/etc", 403),
    ("../", 403),
    ("photos/../../", 403),
    ("escape", 403),          # a symbolic link inside the root that points outside
    ("does-not-exist", 404),
    ("", 422),
    ("photos\x00", 400),
])
def test_index_job_paths_are_confined(client, roots, tmp_path, path, status):
    (roots / "escape").symlink_to(tmp_path, target_is_directory=True)
    r = client.post("/api/index-jobs", json={"path": path})
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}
    if status == 403:
        assert body["error"] == "path_not_allowed" and "allowed:" in body["detail"]


def test_job_missing_is_404(client):
    assert client.get("/api/jobs/0123abcd").status_code == 404
    assert client.get("/api/jobs/not-hex!").status_code == 422
    assert client.post("/api/jobs/0123abcd/cancel").status_code == 404


def test_server_sent_events_until_done(client, roots):
    job = client.post("/api/index-jobs", json={"path": "more"}).json()
    events = []
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events and events[-1]["status"] == "succeeded" and events[-1]["percent"] == 100
    assert [e["id"] for e in events] == [job["id"]] * len(events)


def test_jobs_survive_a_restart_and_interrupted_jobs_are_marked(client, coll, roots, make_client):
    done = wait_job(client, client.post("/api/index-jobs", json={"path": "more"}).json()["id"])
    client.__exit__(None, None, None)
    # a job that was running when the server died
    store = JobStore(coll / JOBS_NAME)
    ghost = store.create("index", {"path": str(roots / "more"), "retry_errors": False, "index_type": None})
    store.update(ghost["id"], status="running", started=time.time(), done=3, total=6)
    store.close()
    c2 = make_client(coll, allow_roots=[roots])
    assert c2.get(f"/api/jobs/{done['id']}").json()["status"] == "succeeded"
    g = c2.get(f"/api/jobs/{ghost['id']}").json()
    assert g["status"] == "interrupted" and "start it again" in g["message"]
    r = c2.post(f"/api/jobs/{ghost['id']}/retry")
    assert r.status_code == 202
    again = wait_job(c2, r.json()["id"])
    assert again["status"] == "succeeded" and again["params"]["path"] == str(roots / "more")
    assert c2.post(f"/api/jobs/{again['id']}/retry").status_code == 202


def test_clear_and_rebuild(client, coll, roots):
    client.get("/api/images/1/thumbnail")
    body = client.post("/api/index/clear").json()
    assert body["error"] == "invalid_request" and '{"confirm": true}' in body["detail"]
    r = client.post("/api/index/clear", json={"confirm": False})
    assert r.status_code == 422 and "confirm" in r.json()["detail"]
    assert client.post("/api/index/rebuild", json={"rescan": 0}).status_code == 422
    job = wait_job(client, client.post("/api/index/clear", json={"confirm": True}).json()["id"])
    assert job["status"] == "succeeded" and job["result"] == {"removed": N_IMAGES}
    assert client.get("/api/collection").json()["images"] == 0
    assert not (coll / "thumbnails").exists()
    assert client.get("/api/search", params={"id": 1}).status_code == 404
    q = sorted((roots / "photos").iterdir())[0]
    assert client.post("/api/search", files={"file": (q.name, q.read_bytes())}).json()["hits"] == []
    # rebuild + rescan: folders indexed by earlier jobs come back
    wait_job(client, client.post("/api/index-jobs", json={"path": "photos"}).json()["id"])
    wait_job(client, client.post("/api/index/clear", json={"confirm": True}).json()["id"])
    r = client.post("/api/index/rebuild", json={"rescan": True, "index_type": "hnsw"})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["index_type"] == "hnsw" and job["result"]["images"] == N_IMAGES
    assert job["result"]["rescanned"] == [str(roots / "photos")]
    info = client.get("/api/collection").json()
    assert info["index_type"] == "hnsw" and info["index_requested"] == "hnsw"
    hits = client.post("/api/search", files={"file": (q.name, q.read_bytes())}, data={"k": "2"}).json()
    assert hits["index_type"] == "hnsw" and hits["hits"][0]["path"] == str(q)
    job = wait_job(client, client.post("/api/index/rebuild").json()["id"])
    assert job["status"] == "succeeded", job


def test_searches_keep_working_while_indexing(client, roots):
    make_good_images(roots / "big", 150, size=(96, 96))
    job = client.post("/api/index-jobs", json={"path": "big"}).json()
    q = sorted((roots / "photos").iterdir())[0]
    errors: list[str] = []
    sizes: list[int] = []

    def searcher() -> None:
        for _ in range(15):
            r = client.post("/api/search", files={"file": (q.name, q.read_bytes())}, data={"k": "3"})
            if r.status_code != 200:
                errors.append(r.text)
                continue
            body = r.json()
            sizes.append(body["collection_images"])
            if body["hits"][0]["similarity"] < 0.98:  # q itself (or a same-colour twin in big/)
                errors.append(f"first hit too far: {body['hits'][0]}")

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = wait_job(client, job["id"])
    assert not errors and final["status"] == "succeeded"
    assert min(sizes) >= N_IMAGES and max(sizes) <= N_IMAGES + 150
    r = client.get("/api/search", params={"id": 1, "k": 1000})
    assert r.json()["collection_images"] == N_IMAGES + 150


def test_token_required_for_writes(coll, roots, make_client):
    token = "correct-horse-battery-staple-42"
    c = make_client(coll, allow_roots=[roots], token_hashes=[hash_token(token)])
    assert c.get("/api/health").json()["auth_required"] is True
    r = c.post("/api/index-jobs", json={"path": "more"})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    wrong = {"Authorization": "Bearer wrong-token-000000"}
    r = c.post("/api/index-jobs", json={"path": "more"}, headers=wrong)
    assert r.status_code == 401 and "not valid" in r.json()["detail"]
    assert c.post("/api/index/clear", json={"confirm": True}).status_code == 401
    assert c.post("/api/jobs/0123/cancel").status_code == 401
    ok = c.post("/api/index-jobs", json={"path": "more"}, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 202
    ok2 = c.post("/api/index-jobs", json={"path": "more"}, headers={"X-API-Token": token})
    assert ok2.status_code == 202
    wait_job(c, ok2.json()["id"])
    # reads stay open
    assert c.get("/api/search", params={"id": 1}).status_code == 200
    q = sorted((roots / "photos").iterdir())[0]
    assert c.post("/api/search", files={"file": (q.name, q.read_bytes())}).status_code == 200


def test_cross_site_writes_and_unknown_hosts_are_refused(coll, roots, make_client, client):
    r = client.post("/api/index-jobs", json={"path": "more"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"] == "cross_origin_refused"
    r = client.post("/api/index/clear", json={"confirm": True}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    r = client.post("/api/index-jobs", json={"path": "more"}, headers={"Origin": "http://testserver"})
    assert r.status_code == 202
    wait_job(client, r.json()["id"])
    client.__exit__(None, None, None)
    c = make_client(coll, allowed_hosts=["127.0.0.1", "localhost"])
    r = c.get("/api/health")
    assert r.status_code == 421 and "localhost" in r.json()["detail"]
    assert c.get("/api/health", headers={"Host": "localhost:8000"}).status_code == 200


def test_runner_cancels_queued_and_running_jobs(tmp_path):
    store = JobStore(tmp_path / JOBS_NAME)
    started = threading.Event()

    def slow(ctx):
        started.set()
        for i in range(500):
            ctx.progress(i, 500)
            if ctx.stop.wait(0.01):
                break
        return JobOutcome(result={"steps": i}, problems=[("a.jpg", "corrupt")])

    runner = JobRunner(store, {"slow": slow})
    runner.start()
    try:
        first = runner.submit("slow", {})
        second = runner.submit("slow", {})
        assert started.wait(10)
        assert runner.cancel(second["id"])["status"] == "cancelled"
        assert runner.cancel(first["id"])["status"] in ("running", "cancelled")
        t_end = time.monotonic() + 10
        while store.get(first["id"])["status"] == "running" and time.monotonic() < t_end:
            time.sleep(0.02)
        j = store.get(first["id"])
        assert j["status"] == "cancelled" and "resume" in j["message"]
        assert j["error_count"] == 1 and j["errors"] == [{"path": "a.jpg", "reason": "corrupt"}]
    finally:
        runner.stop()
        store.close()


def test_runner_survives_a_crashing_job(tmp_path):
    store = JobStore(tmp_path / JOBS_NAME)

    def boom(ctx):
        raise RuntimeError("kaboom")

    runner = JobRunner(store, {"boom": boom, "ok": lambda ctx: JobOutcome(message="fine")})
    runner.start()
    try:
        bad = runner.submit("boom", {})
        good = runner.submit("ok", {})
        t_end = time.monotonic() + 10
        while store.get(good["id"])["status"] != "succeeded" and time.monotonic() < t_end:
            time.sleep(0.02)
        assert store.get(bad["id"])["status"] == "failed"
        assert "kaboom" in store.get(bad["id"])["message"]
        assert store.get(good["id"])["message"] == "fine"
    finally:
        runner.stop()
        store.close()


def test_index_job_fails_cleanly_when_the_folder_vanishes(client, roots):
    import shutil

    (roots / "gone").mkdir()
    make_good_images(roots / "gone", 2)
    # hold the worker busy so the folder can vanish between request and run
    r1 = client.post("/api/index-jobs", json={"path": "more"})
    r2 = client.post("/api/index-jobs", json={"path": "gone"})
    shutil.rmtree(roots / "gone")
    wait_job(client, r1.json()["id"])
    job = wait_job(client, r2.json()["id"])
    assert job["status"] in ("failed", "succeeded")
    if job["status"] == "failed":
        assert "no longer exists" in job["message"]
    assert os.path.isdir(roots / "more")


def test_paths_in_jobs_are_real_paths(client, roots):
    job = client.post("/api/index-jobs", json={"path": "photos/../more"}).json()
    assert job["params"]["path"] == str(Path(roots / "more").resolve())
    wait_job(client, job["id"])


def test_cancel_a_running_index_job_then_resume(coll, roots, make_client):
    c = make_client(coll, allow_roots=[roots], commit_every=16)
    make_good_images(roots / "many", 400, size=(128, 128))
    job = c.post("/api/index-jobs", json={"path": "many"}).json()
    t_end = time.monotonic() + 120
    while time.monotonic() < t_end:
        j = c.get(f"/api/jobs/{job['id']}").json()
        if j["status"] != "queued" and j["done"] > 0 or j["status"] not in ("queued", "running"):
            break
        time.sleep(0.02)
    r = c.post(f"/api/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    j = wait_job(c, job["id"], timeout=120)
    if j["status"] == "succeeded":  # the machine was faster than the test: nothing left to resume
        pytest.skip("the job finished before it could be cancelled")
    assert j["status"] == "cancelled" and "resume" in j["message"]
    first = c.get("/api/collection").json()["images"] - N_IMAGES
    assert 0 <= first < 400
    again = wait_job(c, c.post(f"/api/jobs/{job['id']}/retry").json()["id"], timeout=180)
    assert again["status"] == "succeeded", again
    assert again["result"]["added"] == 400 - first and again["result"]["unchanged"] == first
    assert c.get("/api/collection").json()["images"] == N_IMAGES + 400
