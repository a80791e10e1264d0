"""Fixtures for the service tests: a small colorhist collection and a TestClient over it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from badfiles import make_good_images
from cbir.collection import Collection
from cbir.indexing import index_paths
from cbir.service import ServiceConfig, create_app

try:
    from fastapi.testclient import TestClient
except ImportError:  # the test modules that need it skip themselves (needs_service)
    TestClient = Any  # type: ignore[misc,assignment]

#: put ``needs_service()`` at the top of a test module that talks to the app
SERVICE_REASON = "the service tests need the 'service' extra (fastapi, python-multipart) and httpx"


def needs_service() -> None:
    for mod in ("fastapi", "multipart", "httpx"):
        pytest.importorskip(mod, reason=SERVICE_REASON)

N_IMAGES = 12


def build_collection(coll: Path, folder: Path) -> None:
    """Index ``folder`` into a new colorhist collection, as `cbir index --extractor colorhist` does."""
    with Collection.create_or_open(coll, "colorhist") as col, col.writer_lock():
        index_paths(col, [folder], progress=False)


def wait_job(client: TestClient, job_id: str, timeout: float = 60.0,
             headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Poll a job until it leaves queued/running."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        job = client.get(f"/api/jobs/{job_id}", headers=headers or {}).json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def make_exif_photos(folder: Path, n: int, make: str, model: str, year: int | None, seed: int,
                     gps: bool = False) -> list[Path]:
    """``n`` JPEGs of colour blocks whose EXIF names the camera (Make 0x010F, Model 0x0110), the
    date (DateTime 0x0132, in ``year``; none when None) and, when ``gps``, a GPS position."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = make, model
        if year is not None:
            exif[0x0132] = f"{year}:07:{i + 1:02d} 10:00:00"
        if gps:
            pos = exif.get_ifd(0x8825)
            pos.update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
        paths.append(folder / f"{folder.name}_{i:02d}.jpg")
        Image.fromarray(arr, "RGB").save(paths[-1], exif=exif, quality=95)
    return paths


def make_other_images(dir: Path, n: int, seed: int = 99) -> list[Path]:
    """``n`` PNGs of random colour blocks, unlike make_good_images' stripes."""
    import numpy as np
    from PIL import Image

    dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8).repeat(10, 0).repeat(10, 1)
        paths.append(dir / f"other_{i:03d}.png")
        Image.fromarray(arr, "RGB").save(paths[-1])
    return paths


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    """The allowed root, holding photos/ (indexed) and more/ (not yet indexed)."""
    root = tmp_path / "allowed"
    make_good_images(root / "photos", N_IMAGES)
    make_other_images(root / "more", 6)
    return root


@pytest.fixture
def coll(tmp_path: Path, roots: Path) -> Path:
    c = tmp_path / "coll"
    build_collection(c, roots / "photos")
    return c


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(collection, **config)`` -> a started TestClient (closed at teardown)."""
    clients: list[TestClient] = []

    def make(collection: Path, **kw: Any) -> TestClient:
        client = TestClient(create_app(ServiceConfig(collection=collection, **kw)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(coll: Path, roots: Path, make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(coll, allow_roots=[roots], max_upload_bytes=2_000_000, max_pixels=4_000_000)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training caches the class folders' features; keep that out of the user's cache dir."""
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path / "cbir-cache"))
