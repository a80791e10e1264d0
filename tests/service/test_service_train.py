"""Training endpoints: 501 without cbir.train, real training of a small head with it."""

from __future__ import annotations

import io
import sys
import time
import zipfile
from pathlib import Path

import pytest

from badfiles import make_good_images
from conftest import make_other_images, needs_service, wait_job

needs_service()


@pytest.fixture
def no_train(monkeypatch):
    monkeypatch.setitem(sys.modules, "cbir.train", None)  # import cbir.train -> ImportError


@pytest.fixture
def can_train():
    from cbir.service import training

    if not training.available():
        pytest.skip(f"cbir.train is not complete yet: {training.missing()}")
    pytest.importorskip("torch", reason="training a head needs torch")


def _classes(root: Path) -> Path:
    make_good_images(root / "stripes", 8, size=(48, 48))
    make_other_images(root / "blocks", 8)
    return root


def test_training_is_501_without_the_module(client, no_train):
    assert client.get("/api/health").json()["training_available"] is False
    for r in (client.get("/api/models"), client.get("/api/models/x"), client.delete("/api/models/x"),
              client.post("/api/train-jobs", json={"path": "photos"}),
              client.post("/api/train-jobs/upload", files={"file": ("a.zip", b"PK")})):
        assert r.status_code == 501, r.text
        assert r.json()["error"] == "not_implemented" and "cbir.train" in r.json()["detail"]


def test_train_list_show_delete(client, roots, can_train):
    assert client.get("/api/health").json()["training_available"] is True
    _classes(roots / "classes")
    opts = {"epochs": 4, "min_per_class": 2, "hidden": 16, "seed": 1}
    r = client.post("/api/train-jobs", json={"path": "classes", "name": "m1", "trained_by": "alice",
                                             "options": opts})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    assert job["percent"] == 100 and job["result"]["classes"] == ["blocks", "stripes"]
    assert job["result"]["trained_by"] == "alice" and "validation accuracy" in job["message"]
    models = client.get("/api/models").json()["models"]
    assert [m["name"] for m in models] == ["m1"] and models[0]["trained_by"] == "alice"
    m = client.get("/api/models/m1").json()
    assert m["curves"]["epoch"][0] == 1 and len(m["curves"]["train_loss"]) == m["epochs"]
    # the same name again is refused before anything runs
    r = client.post("/api/train-jobs", json={"path": "classes", "name": "m1"})
    assert r.status_code == 409 and "exists" in r.json()["detail"]
    assert client.get("/api/models/nope").status_code == 404
    assert client.delete("/api/models/m1").json()["deleted"] == "m1"
    assert client.get("/api/models").json()["models"] == []
    assert client.delete("/api/models/m1").status_code == 404


def test_cancelled_training_saves_no_model(client, roots, can_train):
    """Cancel while the epochs run: the job ends cancelled and no model is listed (the trainer
    stops on the cancel and would otherwise keep its best epoch so far)."""
    _classes(roots / "classes")
    opts = {"epochs": 5000, "patience": 5000, "min_per_class": 2, "hidden": 16, "seed": 1}
    r = client.post("/api/train-jobs", json={"path": "classes", "name": "gone", "options": opts})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while "epoch" not in (client.get(f"/api/jobs/{job_id}").json().get("message") or ""):
        assert time.monotonic() < deadline, "training never reached its epochs"
        time.sleep(0.05)
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code in (200, 202)
    job = wait_job(client, job_id, timeout=120)
    assert job["status"] == "cancelled", job
    assert client.get("/api/models").json()["models"] == []
    assert client.get("/api/models/gone").status_code == 404


def test_training_requests_are_checked(client, roots, can_train):
    from cbir.service import training

    _classes(roots / "classes")
    assert client.post("/api/train-jobs", json={"path": "/etc"}).status_code == 403
    assert client.post("/api/train-jobs", json={"path": "classes", "name": "../x"}).status_code == 422
    r = client.post("/api/train-jobs", json={"path": "classes", "options": {"threads": 8}})
    assert r.status_code == 422 and "options.threads" in r.json()["detail"]
    r = client.post("/api/train-jobs", json={"path": "classes", "options": {"epochs": "many"}})
    assert r.status_code == 422 and "options.epochs" in r.json()["detail"]
    r = client.post("/api/train-jobs", json={"path": "classes", "options": {"dropout": 2.0}})
    assert r.status_code == 422 and "dropout" in r.json()["detail"]
    with pytest.raises(Exception, match="unknown training option"):
        training.train_config({"threads": 8})
    # too few images per class: the job fails with the trainer's message
    make_good_images(roots / "tiny" / "a", 2)
    make_other_images(roots / "tiny" / "b", 2)
    job = wait_job(client, client.post("/api/train-jobs", json={"path": "tiny"}).json()["id"], timeout=120)
    assert job["status"] == "failed" and "class" in job["message"]


def test_training_from_a_zip_upload(client, coll, tmp_path, can_train):
    src = _classes(tmp_path / "set")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, "set/" + p.relative_to(src).as_posix())
    r = client.post("/api/train-jobs/upload", files={"file": ("set.zip", buf.getvalue())},
                    data={"name": "zipped"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["params"]["folder"].endswith("/set")
    job = wait_job(client, job["id"], timeout=300)
    assert job["status"] == "succeeded", job
    assert client.get("/api/models/zipped").json()["classes"] == ["blocks", "stripes"]
    assert not list((coll / "uploads").iterdir())  # the upload and its features are removed
    assert client.post(f"/api/jobs/{job['id']}/retry").status_code == 409

    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../evil.jpg", b"x")
    r = client.post("/api/train-jobs/upload", files={"file": ("evil.zip", evil.getvalue())})
    assert r.status_code == 400 and r.json()["error"] == "unsafe_archive"
    assert not list((coll / "uploads").iterdir())
    assert not (coll.parent / "evil.jpg").exists()
