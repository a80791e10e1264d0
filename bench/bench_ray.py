"""``cbir index --engine ray`` vs the local pipeline on 1,000 Wang photos, start-up included.

Each configuration runs in a fresh process indexing into a fresh collection, as ``cbir index``
would: (a) the local pipeline (``--engine local``), (b) Ray Data with 1 decode + embed actor,
(c) with 2 actors (a local Ray of 2 CPUs started for the run: actors at 0.5 CPU, read tasks at
0.25). Measured per run, from the parent:

- img/s: images / the child process's wall time (Python start, imports, ray.init, actors
  loading the model, the run, the index build, ray.shutdown: everything);
- peak memory: every 0.2 s the parent sums, over the child and all its descendants (the Ray
  GCS, raylet, workers, actors), RSS and PSS from /proc/PID/smaps_rollup; the peak of each sum
  is kept. RSS counts Ray's shared object store once per process that maps it; PSS divides
  shared pages among the processes that share them, so the PSS sum is the honest total;
- CPU seconds of the whole tree (utime + stime, last value seen per process), and of the
  driver alone, with the driver's time in ``Catalog.commit_batch`` (its per-image commit cost,
  the serial part that bounds scaling out);
- steady img/s: from the 101st result to the last (start-up and ramp-up excluded), the
  driver's CPU per image over that stretch (for Ray: the serial cost per image that bounds
  scaling out), and the time to the first result.

The machine may be shared: the configurations interleave over ``--repeats`` rounds and the
fastest round of each is kept; compare the ratios of one run. Features of every Ray run are
checked against the local run's (max abs diff).

    .venv/bin/python bench/bench_ray.py --images /tmp/wang/dataset --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WANG_TARS = [HERE.parent.parent / "shared/datasets/wang1k.tar",
             Path("/work/shared/datasets/wang1k.tar")]
MODES = {"local": None, "ray-1": 1, "ray-2": 2}


def ensure_images(root: Path) -> Path:
    """The Wang-1K folder, extracted from ../shared/datasets/wang1k.tar when absent."""
    if root.is_dir():
        return root
    tar = next((t for t in WANG_TARS if t.is_file()), None)
    if tar is None or root.name != "dataset":
        sys.exit(f"no images at {root}; pass --images DIR")
    root.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "xf", str(tar), "-C", str(root.parent)], check=True)
    return root


# -- child: one indexing run ----------------------------------------------------------------
def child(mode: str, images: Path, col_dir: Path, batch: int) -> None:
    t_start = time.perf_counter()
    from cbir.collection import Collection
    from cbir.indexing import index_paths

    out: dict[str, Any] = {"mode": mode}
    options = None
    if mode != "local":
        from cbir.extract import ray_engine

        options = ray_engine.RayOptions(actors=MODES[mode])
        t0 = time.perf_counter()
        ray_engine._start(options)  # started here only to time it; the run reuses it
        out["ray_init_s"] = round(time.perf_counter() - t0, 2)
    with Collection.create_or_open(col_dir) as col, col.writer_lock():
        commit = {"s": 0.0, "n": 0}
        real_commit = col.catalog.commit_batch

        def timed_commit(records, *a, **kw):  # the driver's serial part: SQLite commits
            t = time.perf_counter()
            ids = real_commit(records, *a, **kw)
            commit["s"] += time.perf_counter() - t
            commit["n"] += len(records)
            return ids

        col.catalog.commit_batch = timed_commit  # type: ignore[method-assign]
        seen: list[tuple[float, float]] = []  # (wall, driver CPU) at results 1, 101, last

        def on_progress(done: int, _total: int) -> None:
            if done in (1, 101) or done == _total:
                seen.append((time.perf_counter(), time.process_time()))

        cpu0 = time.process_time()
        report = index_paths(col, [images], batch_size=batch, progress=False, on_progress=on_progress,
                             engine="local" if mode == "local" else "ray", ray_options=options)
        # steady state: from the 101st result to the last (start-up and ramp excluded)
        steady_n = report.processed - 101
        out["first_result_s"] = round(seen[0][0] - t_start, 2)
        out["steady_images_per_s"] = round(steady_n / (seen[-1][0] - seen[1][0]), 1)
        out["steady_driver_cpu_ms_per_image"] = round(
            1000 * (seen[-1][1] - seen[1][1]) / steady_n, 2)
        out["driver_cpu_ms_per_image"] = round(
            1000 * (time.process_time() - cpu0) / max(report.processed, 1), 2)
        out["commit_ms_per_image"] = round(1000 * commit["s"] / max(commit["n"], 1), 3)
    if mode != "local":
        import ray

        t0 = time.perf_counter()
        ray.shutdown()
        out["ray_shutdown_s"] = round(time.perf_counter() - t0, 2)
    out.update(added=report.added, failed=len(report.problems),
               index_paths_s=round(report.seconds, 2),
               in_process_s=round(time.perf_counter() - t_start, 2),
               driver_maxrss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    print(json.dumps(out), flush=True)


# -- parent: spawn, sample memory, compare ----------------------------------------------------
def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _sample(pid: int) -> tuple[int, int, float] | None:
    """(RSS kB, PSS kB, CPU s) of one process, None if it is gone."""
    try:
        rss = pss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return rss, pss, cpu
    except (OSError, ValueError, IndexError):
        return None


def run_one(mode: str, images: Path, work: Path, batch: int) -> dict[str, Any]:
    col = work / f"col-{mode}"
    shutil.rmtree(col, ignore_errors=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, "--images", str(images),
                             "--collection", str(col), "--batch", str(batch)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak_rss = peak_pss = 0
    cpu: dict[int, float] = {}
    procs = 0
    while proc.poll() is None:
        rss = pss = 0
        pids = _descendants(proc.pid)
        procs = max(procs, len(pids))
        for pid in pids:
            s = _sample(pid)
            if s:
                rss, pss = rss + s[0], pss + s[1]
                cpu[pid] = s[2]
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"{mode} failed ({proc.returncode}):\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    n = res["added"]
    res.update(wall_s=round(wall, 2), images_per_s=round(n / wall, 1),
               peak_rss_mb=round(peak_rss / 1024), peak_pss_mb=round(peak_pss / 1024),
               processes=procs, tree_cpu_s=round(sum(cpu.values()), 1),
               tree_cpu_ms_per_image=round(1000 * sum(cpu.values()) / max(n, 1), 1),
               load_avg_1m_at_start=round(load, 1), collection=str(col))
    return res


def max_diff(a: Path, b: Path) -> float:
    import numpy as np

    from cbir.collection import Collection

    def feats(p: Path) -> dict[str, Any]:
        with Collection.open(p) as col:
            ids, x = col.catalog.features()
            recs = col.catalog.records(list(map(int, ids)))
            return {recs[int(i)].path: x[k] for k, i in enumerate(ids)}

    fa, fb = feats(a), feats(b)
    assert set(fa) == set(fb), "the two runs indexed different files"
    return float(max(np.abs(np.asarray(fa[p], np.float32) - np.asarray(fb[p], np.float32)).max()
                     for p in fa))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=Path("/tmp/wang/dataset"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ray.json")
    ap.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--collection", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.images, args.collection, args.batch)
        return 0
    images = ensure_images(args.images)
    modes = args.modes.split(",")
    best: dict[str, dict[str, Any]] = {}
    rounds: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="cbir-bench-ray-") as tmp:
        for r in range(args.repeats):
            row = []
            for mode in modes:
                res = run_one(mode, images, Path(tmp) / f"r{r}", args.batch)
                print(f"round {r + 1} {mode}: {res['images_per_s']} img/s, "
                      f"peak PSS {res['peak_pss_mb']} MB", file=sys.stderr, flush=True)
                row.append(res)
                if mode not in best or res["wall_s"] < best[mode]["wall_s"]:
                    best[mode] = res
            rounds.append(row)
        if "local" in best:
            for mode, res in best.items():
                if mode != "local":
                    res["max_abs_diff_vs_local"] = max_diff(Path(best["local"]["collection"]),
                                                            Path(res["collection"]))
    base = best.get("local", {}).get("images_per_s")
    hdr = (f"{'engine':<8} {'img/s':>6} {'x local':>7} {'wall s':>7} {'ray.init s':>10} "
           f"{'peak RSS MB':>11} {'peak PSS MB':>11} {'procs':>5} {'CPU ms/img':>10} "
           f"{'driver CPU ms/img':>17} {'commit ms/img':>13} {'1st result s':>12} "
           f"{'steady img/s':>12} {'steady drv ms/img':>17} {'max |diff|':>10}")
    print(hdr)
    for mode in modes:
        r = best[mode]
        ratio = f"{r['images_per_s'] / base:.2f}" if base else "-"
        diff = r.get("max_abs_diff_vs_local")
        print(f"{mode:<8} {r['images_per_s']:>6} {ratio:>7} {r['wall_s']:>7} "
              f"{r.get('ray_init_s', '-'):>10} {r['peak_rss_mb']:>11} {r['peak_pss_mb']:>11} "
              f"{r['processes']:>5} {r['tree_cpu_ms_per_image']:>10} "
              f"{r['driver_cpu_ms_per_image']:>17} {r['commit_ms_per_image']:>13} "
              f"{r['first_result_s']:>12} {r['steady_images_per_s']:>12} "
              f"{r['steady_driver_cpu_ms_per_image']:>17} "
              f"{'-' if diff is None else f'{diff:.1e}':>10}")
    for r in best.values():
        r.pop("collection", None)
    for row in rounds:
        for r in row:
            r.pop("collection", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "images": str(args.images), "batch": args.batch, "repeats": args.repeats,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_end": os.getloadavg()},
        "best": best, "rounds": rounds,
    }, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
