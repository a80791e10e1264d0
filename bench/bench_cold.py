"""Cold CLI commands on large synthetic collections: wall time, peak RSS, bytes per image.

    python bench/bench_cold.py                       # 10k (auto=exact), 100k and 1M (hnsw)
    python bench/bench_cold.py --sizes 100000 --hnsw-dtype float16 --rebuild-index --recall 200
    python bench/bench_cold.py --sizes 10000 --repeat 5
    python bench/bench_cold.py --sizes 10000,100000 --out bench/results/cold.json

Each size's collection is built once through the store API (catalog rows with synthetic
CNN-like float16 features from bench_index.FeatureModel, no image decoding; ~1 % of the
rows share a sha256 with another, so ``cbir info`` has duplicates to count) and cached
under ``--root`` (default /tmp/cbir-cold), so reruns only measure. The index is built
directly (``--index`` picks the backend per size; IVF at 1M with nlist=1024) and saved
as the collection's own index, as ``cbir index`` would leave it (HNSW: 8-bit codes re-scored
from the catalog, or ``--hnsw-dtype float16`` to compare with the float16 copy it replaced).

Then every command runs ``--repeat`` times as a fresh ``cbir`` process: wall time, and
the peak RSS of that child (``os.wait4`` rusage, ru_maxrss). The page cache is NOT
dropped (that needs root): figures are "warm page cache, cold process"; the first run
after a build or a reboot pays the disk reads on top. Prints a table, writes JSON.
Children run with byte-code caching on (``PYTHONPYCACHEPREFIX`` under ``--root``), as an
installed cbir would. ``--pythonpath DIR`` runs them with another checkout's ``src`` first on the path
(how the "before" figures were taken: ``git archive HEAD src | tar -x -C /tmp/before``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import FeatureModel  # noqa: E402

CHUNK = 50_000
BUILD_MARK = "bench-built.json"
DEFAULT_INDEX = {10_000: "auto", 100_000: "hnsw", 1_000_000: "hnsw"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def image_path(i: int) -> str:
    return f"/synthetic/{i // 1000:05d}/img{i:07d}.jpg"


def build(directory: Path, n: int, seed: int) -> dict[str, Any]:
    """Create (or reuse) a catalog of ``n`` synthetic images (no index yet)."""
    mark = directory / BUILD_MARK
    if mark.exists():
        return json.loads(mark.read_text())
    from cbir.collection import Collection
    from cbir.store.catalog import ImageRecord

    if directory.exists():
        raise SystemExit(f"{directory} exists but was not finished by this benchmark; delete it")
    t0 = time.perf_counter()
    col = Collection.create_or_open(directory)
    dim = col.manifest.dim
    model = FeatureModel.make(dim, 100, seed=seed)
    rng = np.random.default_rng(seed + 7)
    labels = [("tabby", 0.61), ("tiger cat", 0.22), ("Egyptian cat", 0.08)]
    now_ns = time.time_ns()
    with col.writer_lock():
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            x, cls, _ = model.sample(m, seed=seed + 1 + start)
            f16 = x.astype(np.float16)
            dup = rng.random(m) < 0.01  # ~1 %: the content of an earlier image
            recs = []
            for j in range(m):
                i = start + j
                src = int(rng.integers(0, i)) if dup[j] and i else i
                recs.append(ImageRecord(
                    path=image_path(i), size=50_000 + i % 7919, mtime_ns=now_ns,
                    sha256=hashlib.sha256(src.to_bytes(8, "little")).hexdigest(),
                    width=640, height=480, labels=labels, top_class=int(cls[j]),
                    feature=f16[j]))
            for lo in range(0, m, 5_000):
                col.catalog.commit_batch(recs[lo:lo + 5_000])
            log(f"n={n}: {start + m} rows ({time.perf_counter() - t0:.0f} s)")
    col.close()
    info = {"n": n, "catalog_build_s": round(time.perf_counter() - t0, 1)}
    mark.write_text(json.dumps(info) + "\n")
    return info


def build_index(directory: Path, n: int, kind: str, rebuild: bool,
                hnsw_dtype: str | None = None) -> dict[str, Any]:
    """Build the collection's ``kind`` index from its catalog, as `cbir index` leaves it."""
    mark = directory / "bench-index.json"
    if mark.exists() and not rebuild:
        return json.loads(mark.read_text())
    from cbir.collection import Collection
    from cbir.index import choose_index, create_index
    from cbir.store.manifest import write_json_atomic

    t0 = time.perf_counter()
    col = Collection.open(directory)
    target = choose_index(n) if kind == "auto" else kind
    params: dict[str, Any] = {"nlist": 1024} if target == "ivf" else {}
    params.update(getattr(col, "_index_params", lambda *a: {})(target, n))  # as a collection has it
    if target == "hnsw" and hnsw_dtype:
        params["dtype"] = hnsw_dtype
    idx = create_index(target, col.manifest.dim, **params)
    with col.writer_lock():
        col.drop_index()
        col.set_requested_index(kind)
        all_ids = col.catalog.ok_ids()
        for lo in range(0, len(all_ids), 100_000):
            ids, feats = col.catalog.features(all_ids[lo:lo + 100_000])
            idx.add(ids, feats)
            log(f"n={n}: {target} index holds {len(idx)} ({time.perf_counter() - t0:.0f} s)")
        col.index_dir.mkdir(exist_ok=True)
        idx.save(col.index_dir / f"{target}.faiss")
        write_json_atomic(col.index_dir / "state.json",
                          {"kind": target, "generation": col.catalog.generation(),
                           "requested": col.requested_index()})
        from cbir.store import matchscale

        matchscale.store(col.catalog)  # as an index sync in `cbir index` leaves it
    col.close()
    info = {"index": target, "params": params, "index_build_s": round(time.perf_counter() - t0, 1)}
    mark.write_text(json.dumps(info) + "\n")
    log(f"n={n}: built the {target} index in {info['index_build_s']} s")
    return info


def recall(directory: Path, n_queries: int, seed: int, index_path: Path | None = None,
           **search_kw: Any) -> dict:
    """Tie-tolerant recall@10 of the saved index (as searches use it: re-scored from the
    catalog when it keeps 8-bit codes) against brute force over the catalog's float16
    features, for ``n_queries`` stored images (self excluded); also the warm in-process
    latency of one query (p50, ms) with ``search_kw``."""
    from cbir.collection import Collection
    from cbir.index import load_index

    col = Collection.open(directory)
    path = index_path or col.index_dir / f"{col.index_state().kind}.faiss"
    idx = load_index(path)
    if hasattr(idx, "use_vector_source"):
        idx.use_vector_source(col.vector_source)
    all_ids = col.catalog.ok_ids()
    qids = np.sort(np.random.default_rng(seed).choice(all_ids, n_queries, replace=False))
    _, q = col.catalog.features(qids)
    best = np.full((n_queries, 11), -np.inf, dtype=np.float32)
    best_ids = np.full((n_queries, 11), -1, dtype=np.int64)
    for lo in range(0, len(all_ids), 100_000):
        ids, x = col.catalog.features(all_ids[lo:lo + 100_000])
        s = q @ x.T
        s = np.concatenate([best, s], axis=1)
        cand = np.concatenate([best_ids, np.broadcast_to(ids, (n_queries, len(ids)))], axis=1)
        top = np.argsort(-s, axis=1)[:, :11]
        best, best_ids = np.take_along_axis(s, top, 1), np.take_along_axis(cand, top, 1)
    kth = np.array([row[ids != qid][9] for row, ids, qid in zip(best, best_ids, qids, strict=True)])
    _, found = idx.search(q, 11, **search_kw)
    lat = []
    for qi in range(n_queries):
        t0 = time.perf_counter()
        idx.search(q[qi:qi + 1], 11, **search_kw)
        lat.append((time.perf_counter() - t0) * 1e3)
    hits = 0
    for qi, qid in enumerate(qids):
        got = [i for i in found[qi] if i != qid][:10]
        _, fx = col.catalog.features(got)
        hits += int((fx @ q[qi] >= kth[qi] - 1e-5).sum())
    col.close()
    return {"recall_at_10": round(hits / (10 * n_queries), 4), "queries": n_queries,
            "index": str(path.name), "params": idx.params, "search_kw": search_kw,
            "p50_ms": round(statistics.median(lat), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3)}


def cbir_command() -> list[str]:
    exe = Path(sys.executable).with_name("cbir")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cbir.cli"]


TIME = "/usr/bin/time"


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MiB, exit code, stdout) of one fresh child process.

    The peak RSS comes from GNU time (``%M``), which forks the command from its own small
    process: a child forked straight from this one would inherit this process's RSS
    high-water mark in ru_maxrss (Linux keeps it across fork and exec).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        use_time = os.path.exists(TIME)
        full = [TIME, "-q", "-o", tf.name, "-f", "%M", *cmd] if use_time else cmd
        t = time.perf_counter()
        p = subprocess.Popen(full, stdout=out, stderr=err, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        code = os.waitstatus_to_exitcode(status)
        rss_kib = float(tf.read().strip().splitlines()[-1]) if use_time else ru.ru_maxrss
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace")
        if code not in (0, 1):
            log(f"  exit {code}: {' '.join(cmd)}\n{err.read().decode(errors='replace')[-2000:]}")
    return wall, rss_kib / 1024, code, text


def disk_bytes(directory: Path) -> dict[str, int]:
    cat = sum(p.stat().st_size for p in directory.glob("catalog.sqlite*"))
    idx = sum(p.stat().st_size for p in (directory / "index").glob("*.faiss"))
    return {"catalog": cat, "index": idx}


def measure(directory: Path, n: int, args: argparse.Namespace, env: dict[str, str]) -> list[dict]:
    base = [*cbir_command(), "-c", str(directory)]
    like = image_path(n // 2)
    cmds: list[tuple[str, list[str]]] = [
        ("search --like", [*base, "search", "--like", like, "-k", "10", "--json"]),
        ("info", [*base, "info", "--json"]),
    ]
    if args.codes and n <= args.codes_max:
        cmds.insert(1, ("search --codes", [*base, "search", "--like", like, "--codes", "itq-64",
                                          "-k", "10", "--json"]))
    help_text = subprocess.run([*base, "verify", "--help"], capture_output=True, text=True,
                               env=env).stdout
    if "--quick" in help_text:
        cmds.append(("verify --quick", [*base, "verify", "--quick", "--json"]))
    if n <= args.verify_max:
        cmds.append(("verify", [*base, "verify", "--json"]))
    rows = []
    for label, cmd in cmds:
        walls, rss, code, out = [], [], 0, ""
        for _ in range(args.repeat):
            w, r, code, out = run_once(cmd, env)
            walls.append(w)
            rss.append(r)
        row = {"n": n, "command": label, "wall_s": round(statistics.median(walls), 3),
               "wall_first_s": round(walls[0], 3), "max_rss_mib": round(max(rss), 1),
               "exit": code, "runs": args.repeat}
        if label.startswith("search"):
            try:
                row["hits"] = len(json.loads(out)["hits"])
            except ValueError:
                row["hits"] = None
        rows.append(row)
        log(f"  {fmt(row)}")
    return rows


def serve_rss(directory: Path, n: int, env: dict[str, str], searches: int = 200) -> dict[str, Any]:
    """``cbir serve`` on the collection: time to the first answered search by id after start,
    then ``searches`` searches by random ids; the server's VmRSS / VmHWM (MiB) after them, and
    VmRSS split into RssAnon (its own memory) and RssFile (pages of the memory-mapped index
    and libraries: page cache the kernel can drop, counted in RSS once touched)."""
    import socket
    import urllib.request

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    cmd = [*cbir_command(), "-c", str(directory), "serve", "--port", str(port),
           "--no-default-roots", "--no-access-log", "--log-level", "warning"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(1)

    def get(path: str) -> dict[str, Any]:
        with urllib.request.urlopen(url + path, timeout=120) as r:
            return json.loads(r.read())

    try:
        while True:
            try:
                get("/api/health")
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"cbir serve exited: {proc.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.1)
        started = time.perf_counter() - t0
        hits = len(get(f"/api/search?id={n // 2}&k=10")["hits"])
        first = time.perf_counter() - t0
        lat = []
        for i in rng.integers(1, n + 1, searches):
            t = time.perf_counter()
            get(f"/api/search?id={int(i)}&k=10")
            lat.append((time.perf_counter() - t) * 1e3)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        mem = {k: int(line.split()[1]) / 1024 for line in status.splitlines()
               for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile") if line.startswith(k + ":")}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"n": n, "start_s": round(started, 2), "first_search_s": round(first, 2),
            "first_hits": hits, "searches": searches, "p50_ms": round(statistics.median(lat), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "rss_mib": round(mem["VmRSS"], 1), "hwm_mib": round(mem["VmHWM"], 1),
            "anon_mib": round(mem["RssAnon"], 1), "file_mib": round(mem["RssFile"], 1)}


def train_codes(directory: Path, env: dict[str, str]) -> None:
    mark = directory / "bench-codes.json"
    if mark.exists():
        return
    cmd = [*cbir_command(), "-c", str(directory), "-q", "hash", "train", "--method", "itq",
           "--bits", "64", "--name", "itq-64"]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    # the first search encodes the codes of every image; do it once here, not in the timing
    subprocess.run([*cbir_command(), "-c", str(directory), "search", "--like", image_path(0),
                    "--codes", "itq-64", "--json"], check=True, env=env, stdout=subprocess.DEVNULL)
    mark.write_text("{}\n")


HEADER = f"{'n':>9} {'index':<6} {'command':<16} {'wall s':>7} {'1st s':>7} {'RSS MiB':>8}  note"


def fmt(r: dict[str, Any]) -> str:
    note = f"exit {r['exit']}" + (f", {r['hits']} hits" if "hits" in r else "")
    return (f"{r['n']:>9} {r.get('index', ''):<6} {r['command']:<16} {r['wall_s']:>7.3f} "
            f"{r['wall_first_s']:>7.3f} {r['max_rss_mib']:>8.1f}  {note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--index", default=None,
                    help="backend per size, e.g. 10000:auto,100000:hnsw,1000000:ivf (the default)")
    ap.add_argument("--root", type=Path, default=Path("/tmp/cbir-cold"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--codes", action=argparse.BooleanOptionalAction, default=True,
                    help="also time `search --codes` (ITQ 64 bits) up to --codes-max images")
    ap.add_argument("--codes-max", type=int, default=10_000)
    ap.add_argument("--verify-max", type=int, default=1_000_000,
                    help="run the full `cbir verify` up to this size")
    ap.add_argument("--pythonpath", default=None,
                    help="put this directory first on the children's PYTHONPATH (another checkout)")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--rebuild-index", action="store_true",
                    help="build the cached collections' indexes again (after a format change)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hnsw-dtype", choices=["int8", "float16"], default=None,
                    help="how a built HNSW index keeps vectors (default: as a collection does, int8)")
    ap.add_argument("--k-factors", default="1,2,4",
                    help="with --recall on an int8 HNSW index: re-scoring depths to measure")
    ap.add_argument("--recall", type=int, default=0, metavar="Q",
                    help="also measure recall@10 of each saved index on Q stored images")
    ap.add_argument("--serve", action=argparse.BooleanOptionalAction, default=True,
                    help="also start `cbir serve` on each collection: first search, RSS")
    ap.add_argument("--out", type=Path, default=Path("bench/results/cold.json"))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    kinds = dict(DEFAULT_INDEX)
    if args.index:
        kinds.update({int(k): v for k, v in (x.split(":") for x in args.index.split(","))})
    env = dict(os.environ)
    # byte-compiled modules as an installed cbir has them (without writing into the tree)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(args.root / "pycache")
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    meta = {"command": " ".join(["python", *sys.argv]), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "pythonpath": args.pythonpath, "repeat": args.repeat,
            "page_cache": "warm page cache, cold process (not dropped: needs root)",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_start": os.getloadavg()}
    rows: list[dict[str, Any]] = []
    sizes_info = {}
    for n in sizes:
        directory = args.root / f"n{n}"
        info = build(directory, n, args.seed)
        info.update(build_index(directory, n, kinds.get(n, "auto"), args.rebuild_index,
                                args.hnsw_dtype))
        if args.build_only:
            continue
        if args.codes and n <= args.codes_max:
            train_codes(directory, env)
        disk = disk_bytes(directory)
        info.update({f"{k}_bytes": v for k, v in disk.items()},
                    bytes_per_image=round((disk["catalog"] + disk["index"]) / n, 1),
                    index_bytes_per_image=round(disk["index"] / n, 1))
        if args.recall:
            info["recall"] = recall(directory, args.recall, args.seed)
            if info.get("params", {}).get("dtype") == "int8":
                info["recall_by_k_factor"] = [
                    recall(directory, args.recall, args.seed, k_factor=float(kf))
                    for kf in args.k_factors.split(",")]
        if args.serve:
            info["serve"] = serve_rss(directory, n, env)
        sizes_info[n] = info
        log(f"n={n}: {info}")
        for r in measure(directory, n, args, env):
            r["index"] = info["index"]
            rows.append(r)
        meta["loadavg_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "collections": sizes_info, "rows": rows},
                                       indent=1) + "\n")
    if args.build_only:
        return 0
    print(HEADER)
    for r in rows:
        print(fmt(r))
    print()
    print(f"{'n':>9} {'index':<6} {'dtype':<8} {'catalog B/img':>14} {'index B/img':>12} "
          f"{'total B/img':>12} {'k_factor':>8} {'R@10':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for n, i in sizes_info.items():
        dtype = i.get("params", {}).get("dtype", "")
        head = (f"{n:>9} {i['index']:<6} {dtype:<8} {i['catalog_bytes'] / n:>14.0f} "
                f"{i['index_bytes'] / n:>12.0f} {i['bytes_per_image']:>12.0f}")
        recalls = i.get("recall_by_k_factor") or ([i["recall"]] if "recall" in i else [])
        if not recalls:
            print(head)
        for rc in recalls:
            kf = rc["search_kw"].get("k_factor", rc["params"].get("k_factor", ""))
            print(f"{head} {kf!s:>8} {rc['recall_at_10']:>6.3f} {rc['p50_ms']:>7.2f} {rc['p99_ms']:>7.2f}")
    served = [i["serve"] for i in sizes_info.values() if "serve" in i]
    if served:
        print()
        print(f"{'n':>9} {'serve: start s':>14} {'1st search s':>12} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'RSS MiB':>8} {'peak MiB':>8} {'anon MiB':>8} {'file MiB':>8}")
        for sv in served:
            print(f"{sv['n']:>9} {sv['start_s']:>14.2f} {sv['first_search_s']:>12.2f} "
                  f"{sv['p50_ms']:>7.2f} {sv['p99_ms']:>7.2f} {sv['rss_mib']:>8.1f} {sv['hwm_mib']:>8.1f}"
                  f" {sv['anon_mib']:>8.1f} {sv['file_mib']:>8.1f}")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
