"""``cbir index --engine ray --ray-address ADDR`` on a real Ray cluster of two nodes.

``ray.cluster_utils.Cluster`` (Ray's own utility for this) starts a head node and a second
raylet on this machine as separate processes, one CPU and an 80 MB object store each; cbir joins
it by its address, as it would join a cluster of machines. The test checks that

* the stored features equal the local pipeline's (max abs diff <= 1e-5) and the bad files are
  reported with the same reasons;
* the work ran on both nodes: the actor pool (one actor per CPU of the cluster, placed
  ``SPREAD``) has one actor on each node, and both nodes read and embedded files (the engine's
  ``ray_nodes`` log record), so the read tasks also took the "other node" identity check
  (inode only) as well as the driver's node one;
* cbir leaves the cluster running (it only disconnects) and none of its actors alive: what
  stays alive are Ray Data's detached per-cluster service actors, which every Ray Data job
  shares (a second job creates no new ones).

The cluster runs for this module only (its own fixture, shut down even on failure); Ray is
initialised once per process, so it is not connected while test_ray_engine's in-process Ray
runs. About 20 s on a 2-core machine (cluster ~5 s, the Ray run ~6-10 s).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_ray_engine import N_GOOD, _features, assert_same_features, make_photos

from cbir.extras import available

pytestmark = pytest.mark.skipif(not available("ray"),
                                reason="the 'ray' extra is not installed: pip install 'cbir[ray]'")

NODE_STORE = 80 * 1024 * 1024  # object store per node (Ray's minimum is ~75 MB)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[Any, set[str]]]:
    """(cluster, {node ids}): a head node and one more raylet, 1 CPU each, on this machine."""
    import ray
    from ray._common.utils import reset_ray_address
    from ray.cluster_utils import Cluster

    ray.shutdown()  # no in-process Ray of another module still connected
    cluster = Cluster()
    try:
        head = cluster.add_node(num_cpus=1, object_store_memory=NODE_STORE,
                                include_dashboard=False)
        # the head wrote its address to /tmp/ray/ray_current_cluster, where any ray.init()
        # without an address on this machine would find it and join: cbir is given the
        # address explicitly, nobody else should land here
        reset_ray_address()
        other = cluster.add_node(num_cpus=1, object_store_memory=NODE_STORE)
        cluster.wait_for_nodes(timeout=60)
        yield cluster, {head.node_id, other.node_id}
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos"))


def _cli_index(photos: Path, col: Path, capsys: pytest.CaptureFixture[str], *engine: str,
               code: int = 1) -> dict[str, Any]:
    from cbir.cli import main

    got = main(["index", str(photos), "-c", str(col), "--batch-size", "2", "--json", *engine])
    out = json.loads(capsys.readouterr().out)
    assert got == code, out  # 1: done, but files were skipped
    return out


def _skipped(report: dict[str, Any]) -> dict[str, str]:
    return {Path(f["path"]).name: f["reason"] for f in report["skipped_files"]}


def _pool_states(cluster: Any) -> list[str]:
    """States of every decode + embed actor the cluster has had, once none is ending (<= 20 s:
    Ray marks the actors of a disconnected driver dead asynchronously)."""
    deadline = time.monotonic() + 20
    while True:
        states = [a["State"] for a in cluster.global_state.actor_table(None).values()
                  if "_Embedder" in a["ActorClassName"]]
        if all(s == "DEAD" for s in states) or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def _alive_actors(cluster: Any) -> dict[str, dict[str, Any]]:
    return {k: a for k, a in cluster.global_state.actor_table(None).items()
            if a["State"] != "DEAD"}


def test_index_on_a_two_node_cluster(two_nodes, photos: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str],
                                     caplog: pytest.LogCaptureFixture) -> None:
    import ray
    import ray.data

    cluster, nodes = two_nodes
    local = _cli_index(photos, tmp_path / "local", capsys)
    ray_args = ("--engine", "ray", "--ray-address", cluster.address)

    # Ray Data hands batches to the pool's actors as soon as the first is up; with 14 small
    # files on a busy machine that one can finish them all before the other has loaded its
    # model. Wait for the whole pool here, so that where the work runs is what is tested
    ctx = ray.data.DataContext.get_current()
    wait = ctx.wait_for_min_actors_s
    ctx.wait_for_min_actors_s = 60
    caplog.set_level(logging.INFO, logger="cbir.extract.ray_engine")
    try:
        remote = _cli_index(photos, tmp_path / "ray", capsys, *ray_args)
    finally:
        ctx.wait_for_min_actors_s = wait

    # (1) the local pipeline's results: counts, bad files and their reasons, features
    assert (remote["added"], remote["skipped"]) == (local["added"], local["skipped"]) == (N_GOOD, 2)
    assert _skipped(remote) == _skipped(local)
    assert set(_skipped(local)) == {"truncated.jpg", "notes.jpg"}
    _, b = assert_same_features(tmp_path / "local", tmp_path / "ray", N_GOOD + 2)

    # (2) the work ran on both nodes: one actor each (pool = the cluster's 2 CPUs), and both
    # nodes read and embedded some of the files
    pool = [a for a in cluster.global_state.actor_table(None).values()
            if "_Embedder" in a["ActorClassName"]]
    assert len(pool) == 2 and {p["Address"]["NodeID"] for p in pool} == nodes
    [spread] = [r.ray_nodes for r in caplog.records if hasattr(r, "ray_nodes")]
    assert set(spread["embedded"]) == nodes and sum(spread["embedded"].values()) == N_GOOD + 2
    assert set(spread["read"]) == nodes and sum(spread["read"].values()) == N_GOOD + 2

    # (3) the cluster is still up (cbir only disconnected) and none of cbir's actors is alive
    assert not ray.is_initialized()
    assert cluster.remaining_processes_alive()
    assert {n["NodeID"] for n in cluster.global_state.node_table() if n["Alive"]} == nodes
    assert _pool_states(cluster) == ["DEAD", "DEAD"]
    alive = _alive_actors(cluster)
    # Ray Data's own service actors (stats, autoscaling coordinator...): detached, one set per
    # cluster, reused by the next Ray Data job
    assert alive and all(act["IsDetached"] for act in alive.values()), alive

    # cbir joins the same cluster again: a copy of an indexed photo is found by its sha256 in
    # the catalog's set the actors get through the object store, and not embedded again; Ray
    # Data's service actors are reused, and again no actor of cbir's stays
    (photos / "z_copy.jpg").write_bytes((photos / "p03.jpg").read_bytes())
    try:
        again = _cli_index(photos, tmp_path / "ray", capsys, *ray_args, code=0)
    finally:
        (photos / "z_copy.jpg").unlink()
    assert (again["added"], again["duplicates"], again["unchanged"]) == (1, 1, N_GOOD + 2)
    copy = _features(tmp_path / "ray")["z_copy.jpg"]
    assert copy[2] == "ok" and np.array_equal(copy[0], b["p03.jpg"][0])
    assert _pool_states(cluster) == ["DEAD"] * 4
    assert set(_alive_actors(cluster)) == set(alive)
    assert cluster.remaining_processes_alive()
