"""``cbir index --engine ray`` (cbir.extract.ray_engine) on a real local Ray, against the local
pipeline: same features (max abs diff <= 1e-5), labels and problem reports; bad files skipped
and reported, not fatal; an interrupted run resumes; a second run is a no-op.

One Ray (2 CPUs) serves the whole module (~4 s to start); each indexing run starts its own
actors (~2 s). Skips when the ``ray`` extra is not installed.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.collection import Collection
from cbir.extras import available
from cbir.indexing import IndexReport, index_paths

needs_ray = pytest.mark.skipif(not available("ray"),
                               reason="the 'ray' extra is not installed: pip install 'cbir[ray]'")

N_GOOD = 12


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    from cbir.extract.ray_engine import init_ray

    # "local": a Ray of its own, even while another cluster runs on this machine
    init_ray(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=128 * 1024 * 1024, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def make_photos(d: Path) -> Path:
    """12 JPEGs of different sizes and content, a truncated JPEG and a text file named .jpg."""
    rng = np.random.default_rng(7)
    for i in range(N_GOOD):
        h, w = 120 + 16 * i, 200 - 6 * i
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (i + 1)) % 256, (yy * 3 + 40 * i) % 256, (xx + yy) % 256], -1)
        noise = rng.integers(0, 60, (h, w, 3))
        img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        img.save(d / f"p{i:02d}.jpg", quality=90)
    good = (d / "p00.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (d / "notes.jpg").write_text("not an image at all\n")
    return d


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos"))


def _features(col_dir: Path) -> dict[str, tuple[np.ndarray | None, int | None, str, str | None]]:
    """file name -> (feature, top class, status, error) of every catalog row."""
    with Collection.open(col_dir) as col:
        out = {}
        for rec in col.catalog.iter_records():
            full = col.catalog.get(id=rec.id, with_feature=True)
            out[Path(rec.path).name] = (full.feature, full.top_class, full.status, full.error)
        return out


def assert_same_features(local: Path, ray: Path, n: int) -> tuple[dict, dict]:
    """Both collections hold the same n paths, statuses and errors, and the same features and
    top classes (to float tolerance) for the images that were read; returns both ``_features``."""
    a, b = _features(local), _features(ray)
    assert set(a) == set(b) and len(a) == n
    for name, (fa, ca, sa, ea) in a.items():
        fb, cb, sb, eb = b[name]
        assert (sa, ea) == (sb, eb), name
        if sa == "ok":
            assert np.abs(np.asarray(fa, np.float32) - np.asarray(fb, np.float32)).max() <= 1e-5
            assert ca == cb, name
    return a, b


def _index(col_dir: Path, root: Path, engine: str, **kw) -> IndexReport:
    from cbir.extract.ray_engine import RayOptions

    with Collection.create_or_open(col_dir) as col, col.writer_lock():
        return index_paths(col, [root], progress=False, engine=engine,
                           ray_options=RayOptions(actors=2), **kw)


def _problems(report: IndexReport) -> dict[str, str]:
    return {Path(p).name: r for p, r in report.problems}


@needs_ray
def test_ray_engine_matches_local_and_resumes(ray_cluster, photos: Path, tmp_path: Path) -> None:
    local = _index(tmp_path / "local", photos, "local", batch_size=4)
    assert (local.added, len(local.failed)) == (N_GOOD, 2)

    # an interrupted Ray run: stop after the first committed batch of 4
    stop = threading.Event()
    done: list[int] = []

    def on_progress(n: int, _total: int) -> None:
        done.append(n)
        if n >= 4:
            stop.set()

    first = _index(tmp_path / "ray", photos, "ray", batch_size=4, commit_every=4,
                   stop=stop, on_progress=on_progress)
    assert 4 <= first.processed < N_GOOD + 2
    # the rest on a second run, plus a copy of an indexed photo (reused, not embedded again)
    shutil.copy(photos / "p03.jpg", photos / "z_copy_of_p03.jpg")
    try:
        second = _index(tmp_path / "ray", photos, "ray", batch_size=4)
        local2 = _index(tmp_path / "local", photos, "local", batch_size=4)
    finally:
        (photos / "z_copy_of_p03.jpg").unlink()
    assert first.processed + second.processed == N_GOOD + 2 + 1
    assert second.unchanged == first.processed
    assert local2.duplicates == 1 and second.duplicates >= 1

    # bad files: skipped and reported with the local pipeline's reasons, not fatal
    reported = _problems(first) | _problems(second)
    assert reported == _problems(local) and set(reported) == {"truncated.jpg", "notes.jpg"}

    # features identical to the local pipeline's
    assert_same_features(tmp_path / "local", tmp_path / "ray", N_GOOD + 3)

    # a third run has nothing to do (Ray is not even asked)
    third = _index(tmp_path / "ray", photos, "ray", batch_size=4)
    assert (third.processed, third.added, third.unchanged) == (0, 0, N_GOOD + 2)


def _photo_meta(col_dir: Path) -> dict[str, tuple]:
    """file name -> (width, height, stored photo metadata) of every ok catalog row."""
    from cbir.store import photometa

    with Collection.open(col_dir) as col:
        return {Path(rec.path).name: (rec.width, rec.height, photometa.get(col.catalog, rec.id))
                for rec in col.catalog.iter_records() if rec.status == "ok"}


@needs_ray
def test_ray_workers_read_the_photo_metadata(ray_cluster, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """EXIF date, camera, GPS and size come back in the Ray result rows, equal to the local
    engine's, and the driver opens no photo (no second header read after the embedding)."""
    import builtins
    import os

    import cbir.indexing
    import cbir.io.saferead
    from photo_meta import exif_photo

    d = tmp_path / "exif"
    exif_photo(d / "a.jpg", seed=1, size=(96, 64), date="2019:05:01 10:11:12", make="Canon",
               model="Canon EOS 5D Mark IV", gps=True)
    exif_photo(d / "b.jpg", seed=2, size=(64, 96), date="2021:12:24 18:00:00", make="NIKON")
    exif_photo(d / "c.jpg", seed=3)  # no EXIF at all
    shutil.copy(d / "a.jpg", d / "a_copy.jpg")  # content already embedded: reused, still has meta
    local = _index(tmp_path / "local", d, "local", batch_size=2)

    # from the end of the planning walk (which opens each file once, without reading, to test
    # that it is readable) on, any open of a photo in this process is a second read
    opened: list[str] = []
    planned = threading.Event()
    photo_dir = os.fspath(d)

    def counting(real):
        def wrapper(path, *a, **kw):
            if planned.is_set() and isinstance(path, (str, os.PathLike)) \
                    and os.fspath(path).startswith(photo_dir) and os.fspath(path).endswith(".jpg"):
                opened.append(os.fspath(path))
            return real(path, *a, **kw)
        return wrapper

    def plan_then_count(*a, **kw):
        try:
            return real_plan(*a, **kw)
        finally:
            planned.set()

    real_plan = cbir.indexing.plan
    monkeypatch.setattr(cbir.indexing, "plan", plan_then_count)
    monkeypatch.setattr(os, "open", counting(os.open))
    monkeypatch.setattr(builtins, "open", counting(builtins.open))
    monkeypatch.setattr(cbir.io.saferead, "open_file", counting(cbir.io.saferead.open_file))
    monkeypatch.setattr(cbir.indexing, "read_meta", counting(cbir.indexing.read_meta))
    remote = _index(tmp_path / "ray", d, "ray", batch_size=2)
    monkeypatch.undo()

    assert (remote.added, remote.failed, remote.metadata_read) == (4, [], 0)
    assert local.metadata_read == 0
    assert planned.is_set() and opened == []  # the workers read the files, not the driver
    want = _photo_meta(tmp_path / "local")
    assert _photo_meta(tmp_path / "ray") == want
    assert want["a.jpg"] == (96, 64, {"taken_at": "2019-05-01T10:11:12", "make": "Canon",
                                      "model": "Canon EOS 5D Mark IV", "gps": True})
    assert want["a_copy.jpg"] == want["a.jpg"]
    assert want["b.jpg"][2]["make"] == "NIKON" and want["b.jpg"][:2] == (64, 96)
    assert want["c.jpg"][2] == {"taken_at": None, "make": None, "model": None, "gps": False}


@needs_ray
def test_cli_engine_ray(ray_cluster, photos: Path, tmp_path: Path, capsys) -> None:
    from cbir.cli import main

    col = tmp_path / "cli"
    code = main(["index", str(photos), "-c", str(col), "--engine", "ray", "--ray-actors", "1",
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1  # done, but two files were skipped
    assert (out["added"], out["skipped"]) == (N_GOOD, 2)
    assert main(["index", str(photos), "-c", str(col), "--ray-address", "auto"]) == 2
    assert "--engine ray" in capsys.readouterr().err


@needs_ray
def test_unreachable_cluster_fails_fast(photos: Path, tmp_path: Path, capsys) -> None:
    """A --ray-address nobody answers at: one line, in seconds (Ray alone retries for minutes)."""
    import socket

    from cbir.cli import main

    with socket.socket() as s:  # a free loopback port, closed again: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["index", str(photos), "-c", str(tmp_path / "c"), "--engine", "ray",
                 "--ray-address", f"127.0.0.1:{port}"])
    assert code == 2
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in capsys.readouterr().err


@needs_ray
def test_local_ray_is_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --ray-address the engine starts a Ray of its own, even when $RAY_ADDRESS is set
    or a cluster started on this machine left its address in /tmp/ray: plain ray.init() would
    join that cluster and refuse the num_cpus given (seen next to a ray.cluster_utils.Cluster)."""
    import ray

    from cbir.extract.ray_engine import RayOptions, _start

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert _start(RayOptions()) is True
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] >= 1


def test_cli_without_ray_names_the_extra_before_any_work(monkeypatch: pytest.MonkeyPatch,
                                                         photos: Path, tmp_path: Path,
                                                         capsys) -> None:
    from cbir.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    col = tmp_path / "never-made"
    assert main(["index", str(photos), "-c", str(col), "--engine", "ray"]) == 2
    assert "--engine ray needs the 'ray' extra (ray is missing): pip install 'cbir[ray]'" \
        in capsys.readouterr().err
    assert not col.exists()
