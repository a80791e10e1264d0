"""Searching while indexing: incremental index snapshots, no waiting on a busy writer, a capped job."""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cbir.collection import Collection
from cbir.index import ExactIndex
from cbir.service import state as state_mod
from cbir.service.config import ServiceConfig
from cbir.service.state import IndexCache, LayeredIndex, Readers
from cbir.store import ImageRecord
from conftest import build_collection, make_other_images


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_layered_index_searches_like_one_exact_index():
    rng = np.random.default_rng(0)
    dim = 16
    base_x, tail_x = _unit(rng, 50, dim), _unit(rng, 30, dim)
    base_ids, tail_ids = np.arange(1, 51), np.arange(100, 130)
    base = ExactIndex(dim)
    base.add(base_ids, base_x)
    gone = np.array([3, 7, 11, 104, 120])
    layered = LayeredIndex(base, tail_ids, tail_x, gone)
    ref = ExactIndex(dim)
    keep_b, keep_t = ~np.isin(base_ids, gone), ~np.isin(tail_ids, gone)
    ref.add(np.concatenate([base_ids[keep_b], tail_ids[keep_t]]),
            np.concatenate([base_x[keep_b], tail_x[keep_t]]))
    assert len(layered) == len(ref) == 75
    assert np.array_equal(layered.ids(), ref.ids())
    q = np.concatenate([_unit(rng, 5, dim), base_x[[2, 6]], tail_x[[4]]])  # ids 3, 7, 104 are gone
    for k in (1, 10, 80):
        s1, i1 = layered.search(q, k)
        s2, i2 = ref.search(q, k)
        assert np.array_equal(i1, i2) and np.allclose(s1, s2, atol=1e-5)
    assert not np.isin(layered.search(q, 80)[1], gone).any()


def _add_rows(coll: Path, folder: Path, n: int, seed: int) -> list[Path]:
    """Commit ``n`` new images to the catalog the way the indexer does (one batch)."""
    paths = make_other_images(folder, n, seed=seed)
    with Collection.open(coll) as col, col.writer_lock():
        ext = col.extractor
        from cbir.io.images import load_image

        recs = []
        for p in paths:
            image = load_image(p, target_size=ext.input_size)
            feat = ext.embed(np.stack([ext.preprocess(image)])).features[0]
            recs.append(ImageRecord(path=str(p), size=p.stat().st_size, mtime_ns=p.stat().st_mtime_ns,
                                    sha256=f"{seed}-{p.name}", feature=feat))
        col.catalog.commit_batch(recs)
    return paths


def _reference(coll: Path) -> ExactIndex:
    with Collection.open(coll) as col:
        ids, x = col.catalog.features()
    ref = ExactIndex(x.shape[1])
    ref.add(ids, x)
    return ref


@pytest.fixture
def cache_env(tmp_path: Path, roots: Path):
    coll = tmp_path / "coll"
    build_collection(coll, roots / "photos")
    readers = Readers(coll)
    busy = threading.Event()
    cache = IndexCache(readers, refresh_seconds=0.0, writer_busy=busy.is_set)
    reader = readers.get()
    yield coll, readers, reader, cache, busy, tmp_path
    cache.invalidate()
    readers.close()


def _same_results(cache_index, ref: ExactIndex) -> None:
    rng = np.random.default_rng(1)
    q = _unit(rng, 8, ref.dim)
    s1, i1 = cache_index.search(q, 10)
    s2, i2 = ref.search(q, 10)
    assert np.array_equal(i1, i2) and np.allclose(s1, s2, atol=1e-5)


def test_refreshes_append_new_rows_without_rebuilding(cache_env):
    coll, _, reader, cache, _, tmp = cache_env
    first = cache.get(reader, None)
    assert cache.full_builds == 1 and len(first) == 12
    _add_rows(coll, tmp / "a", 5, seed=1)
    second = cache.get(reader, None)
    assert isinstance(second, LayeredIndex) and len(second) == 17 and second.base is first
    _add_rows(coll, tmp / "b", 4, seed=2)
    third = cache.get(reader, None)
    assert cache.full_builds == 1 and len(third) == 21 and third.base is first
    assert len(second) == 17  # an older snapshot (maybe still searched) does not change
    _same_results(third, _reference(coll))
    # removed rows disappear from the results without a rebuild
    with Collection.open(coll) as col, col.writer_lock():
        gone = sorted((tmp / "a").iterdir())[:2] + sorted((coll.parent / "allowed" / "photos").iterdir())[:1]
        col.catalog.remove_paths([str(p) for p in gone])
    fourth = cache.get(reader, None)
    assert cache.full_builds == 1 and len(fourth) == 18
    _same_results(fourth, _reference(coll))
    assert cache.get(reader, None) is fourth  # nothing committed since: the same snapshot


def test_a_big_tail_or_many_removals_build_a_new_base(cache_env, monkeypatch):
    coll, _, reader, cache, _, tmp = cache_env
    cache.get(reader, None)
    monkeypatch.setattr(state_mod, "TAIL_MAX_BYTES", 4 * 128 * 6)  # room for 6 colorhist vectors
    _add_rows(coll, tmp / "a", 5, seed=1)
    assert isinstance(cache.get(reader, None), LayeredIndex) and cache.full_builds == 1
    _add_rows(coll, tmp / "b", 3, seed=2)
    idx = cache.get(reader, None)
    assert cache.full_builds == 2 and not isinstance(idx, LayeredIndex) and len(idx) == 20
    _same_results(idx, _reference(coll))
    monkeypatch.setattr(state_mod, "GONE_MAX", 2)
    with Collection.open(coll) as col, col.writer_lock():
        col.catalog.remove_paths([str(p) for p in sorted((tmp / "a").iterdir())[:3]])
    idx = cache.get(reader, None)
    assert cache.full_builds == 3 and len(idx) == 17
    _same_results(idx, _reference(coll))


def test_searches_never_wait_for_a_refresh_while_a_job_writes(cache_env, monkeypatch):
    coll, _, reader, cache, busy, tmp = cache_env
    first = cache.get(reader, None)
    entered, release = threading.Event(), threading.Event()
    real = IndexCache._incremental

    def slow(self, *a, **kw):  # a refresh that takes as long as the test wants
        entered.set()
        release.wait(10)
        return real(self, *a, **kw)

    monkeypatch.setattr(IndexCache, "_incremental", slow)
    busy.set()
    _add_rows(coll, tmp / "a", 3, seed=1)
    t = time.perf_counter()
    assert cache.get(reader, None) is first  # stale, at once; the refresh runs in the background
    assert entered.wait(5)
    assert cache.get(reader, None) is first and time.perf_counter() - t < 2
    release.set()
    t_end = time.monotonic() + 10
    while len(cache.get(reader, None)) != 15:
        assert time.monotonic() < t_end, "the background refresh did not land"
        time.sleep(0.02)
    # with no job writing, a search waits for the refresh and sees every committed row
    busy.clear()
    _add_rows(coll, tmp / "b", 2, seed=2)
    assert len(cache.get(reader, None)) == 17


def report_limits(*, progress, stop) -> dict:
    """Runs in the job process (run_in_child): what it was given."""
    aff = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    from cbir.extract import pipeline

    return {"nice": os.nice(0), "affinity": aff, "omp": os.environ.get("OMP_NUM_THREADS"),
            "decode_workers": pipeline.default_decode_workers()}


def test_the_job_process_is_niced_and_confined(monkeypatch):
    from cbir.service import workers

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    got = workers.run_in_child("test_service_snapshots:report_limits", {}, stop=threading.Event(),
                               on_progress=lambda *a: None, nice=15, cpus=1)
    assert got["nice"] >= 15 and got["omp"] == "1" and got["decode_workers"] == 1
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
        assert len(got["affinity"]) == 1


def test_config_defaults_and_environment(monkeypatch, tmp_path):
    for var in ("CBIR_JOB_NICE", "CBIR_JOB_CPUS", "CBIR_REQUEST_THREADS"):
        monkeypatch.delenv(var, raising=False)
    cfg = ServiceConfig(collection=tmp_path)
    cores = os.cpu_count() or 1
    assert cfg.job_nice == 19 and cfg.job_cpus == max(1, cores - 1)
    assert cfg.request_threads == max(2, cores)
    monkeypatch.setenv("CBIR_JOB_NICE", "5")
    monkeypatch.setenv("CBIR_JOB_CPUS", "0")
    monkeypatch.setenv("CBIR_REQUEST_THREADS", "3")
    cfg = ServiceConfig(collection=tmp_path)
    assert (cfg.job_nice, cfg.job_cpus, cfg.request_threads) == (5, 0, 3)
    # a value given in code (or on the command line) wins over the environment
    cfg = ServiceConfig(collection=tmp_path, job_nice=12, job_cpus=1, request_threads=6)
    assert (cfg.job_nice, cfg.job_cpus, cfg.request_threads) == (12, 1, 6)
    monkeypatch.setenv("CBIR_JOB_CPUS", "two")
    with pytest.raises(ValueError, match="CBIR_JOB_CPUS"):
        ServiceConfig(collection=tmp_path)


def test_serve_tuning_options(tmp_path, monkeypatch):
    from cbir.commands import serve
    from cbir.errors import InvalidRequest

    for var in ("CBIR_JOB_NICE", "CBIR_JOB_CPUS", "CBIR_REQUEST_THREADS"):
        monkeypatch.delenv(var, raising=False)
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    cfg = serve.build_config(p.parse_args(["--collection", str(tmp_path), "--job-nice", "7",
                                           "--job-cpus", "0", "--request-threads", "4"]))
    assert (cfg.job_nice, cfg.job_cpus, cfg.request_threads) == (7, 0, 4)
    assert serve.build_config(p.parse_args(["--collection", str(tmp_path)])).job_nice == 19
    for bad in (["--job-nice", "20"], ["--job-cpus", "-1"], ["--request-threads", "0"]):
        with pytest.raises(InvalidRequest, match=bad[0]):
            serve.build_config(p.parse_args(["--collection", str(tmp_path), *bad]))


def test_stop_does_not_close_the_connection_the_index_warm_up_is_using(coll: Path, monkeypatch):
    """Regression (a SIGSEGV in CI): the server warms the index in a thread at start; stop()
    closed every registered reader, including the one that thread was querying. The warm-up
    now reads through its own, unregistered connection, and stop() waits for it."""
    from cbir.service.state import ServiceState

    seen: dict[str, object] = {}
    started, release = threading.Event(), threading.Event()
    real_get = IndexCache.get

    def slow_get(self, reader, kind):
        seen["registered"] = reader in self.readers._opened
        started.set()
        release.wait(5)
        seen["generation"] = reader.catalog.generation()  # the connection is still open
        return real_get(self, reader, kind)

    monkeypatch.setattr(IndexCache, "get", slow_get)
    state = ServiceState(ServiceConfig(collection=coll))
    state.start()
    assert started.wait(10)
    threading.Timer(0.3, release.set).start()
    t0 = time.monotonic()
    state.stop()  # waits for the warm-up, which finishes on its own connection
    assert seen["registered"] is False
    assert isinstance(seen["generation"], int) and time.monotonic() - t0 >= 0.25
    assert state._warm is not None and not state._warm.is_alive()
