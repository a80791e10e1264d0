"""Load test of ``cbir serve``: concurrent searchers while an indexing job runs.

    python bench/bench_service.py                      # 20 searchers, 20 s, colorhist
    python bench/bench_service.py --searchers 20 --seconds 30 --index-images 4000
    python bench/bench_service.py --url http://127.0.0.1:8000 --index-path /abs/folder
    python bench/bench_service.py --fuzz 300           # schemathesis over the OpenAPI schema

Builds a collection of generated images (cheap ``colorhist`` extractor by default),
starts the real server (``python -m cbir.commands.serve``) on a free loopback port,
starts an indexing job over a second folder, and runs ``--searchers`` asyncio clients
(httpx) that upload query images (and, one request in four, search by image id) until
``--seconds`` pass or ``--max-requests`` are sent. Reports latency p50/p90/p99/max and
errors while the job ran and after it finished, as a table on stdout and JSON in
bench/results/service.json. Only loopback addresses are ever contacted.
Targets: zero errors, p99 < 500 ms. ``--fuzz SECONDS`` instead runs schemathesis (every
check, coverage + fuzzing + stateful phases) against the same kind of server for that long
and reports how many cases ran and what failed (bench/results/service-fuzz.json).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_images(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    """``n`` distinct JPEGs of random colour blocks, ``size`` px square."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        blocks = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        arr = blocks.repeat(size // 6 + 1, 0).repeat(size // 6 + 1, 1)[:size, :size]
        arr = np.clip(arr.astype(np.int16) + rng.integers(-12, 13, arr.shape), 0, 255).astype(np.uint8)
        p = folder / f"img_{i:05d}.jpg"
        Image.fromarray(arr).save(p, quality=85)
        out.append(p)
    return out


def loopback_only(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host != "localhost":
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = False
        if not ok:
            raise SystemExit(f"refusing to load-test {url}: only loopback addresses (127.0.0.0/8, ::1)")


def start_server(coll: Path, root: Path, extractor: str, logfile: Path) -> tuple[subprocess.Popen, str]:
    out = open(logfile, "w+")  # noqa: SIM115 - the server's log, kept open with it
    proc = subprocess.Popen([sys.executable, "-m", "cbir.commands.serve", "--collection", str(coll),
                             "--allow-root", str(root), "--port", "0", "--no-access-log",
                             "--extractor", extractor], stdout=out, stderr=subprocess.STDOUT, text=True)
    t_end = time.monotonic() + 60
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            break
        out.seek(0)
        m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", out.read())
        if m:
            return proc, m.group(1)
        time.sleep(0.1)
    proc.kill()
    out.seek(0)
    raise SystemExit(f"the server did not start:\n{out.read()}")


def percentiles(ms: list[float]) -> dict[str, float | None]:
    if not ms:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(ms)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p90": round(float(np.percentile(a, 90)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1)}


async def run_load(url: str, queries: list[bytes], searchers: int, seconds: float, max_requests: int,
                   index_path: str, token: str | None, n_ids: int, baseline: float) -> dict[str, Any]:
    """Searchers run ``seconds``; the indexing job starts after ``baseline`` seconds."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=searchers + 4, max_keepalive_connections=searchers + 4)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits, headers=headers) as client:
        r = await client.post("/api/search", files={"file": ("warm.jpg", queries[0])}, data={"k": "10"})
        r.raise_for_status()
        phase = {"now": "before"}
        job: dict[str, Any] = {}
        samples: list[tuple[float, float, int, str, str]] = []  # (t, ms, status, phase, kind)
        sent = 0
        t0 = time.monotonic()
        deadline = t0 + seconds
        rng = random.Random(0)

        async def run_job() -> None:
            await asyncio.sleep(baseline)
            r = await client.post("/api/index-jobs", json={"path": index_path})
            if r.status_code != 202:
                raise SystemExit(f"could not start the indexing job: {r.status_code} {r.text}")
            job_id = r.json()["id"]
            job["started_at"] = time.monotonic() - t0
            phase["now"] = "during"
            while True:
                j = (await client.get(f"/api/jobs/{job_id}")).json()
                job.update(j)
                if j["status"] not in ("queued", "running"):
                    job["finished_at"] = time.monotonic() - t0
                    phase["now"] = "after"
                    return
                await asyncio.sleep(0.25)

        async def searcher(i: int) -> None:
            nonlocal sent
            while time.monotonic() < deadline and sent < max_requests:
                sent += 1
                started_in = phase["now"]
                t = time.perf_counter()
                try:
                    if rng.random() < 0.25 and n_ids:
                        kind = "by-id"
                        resp = await client.get("/api/search", params={"id": rng.randint(1, n_ids), "k": 10})
                    else:
                        kind = "upload"
                        q = queries[rng.randrange(len(queries))]
                        resp = await client.post("/api/search", files={"file": ("q.jpg", q)},
                                                 data={"k": "10"})
                    status = resp.status_code
                    if status == 200:
                        resp.json()["hits"]  # noqa: B018 - the body must parse
                except Exception as e:  # noqa: BLE001 - count transport errors too
                    status = -1
                    log(f"searcher {i}: {type(e).__name__}: {e}")
                ms = (time.perf_counter() - t) * 1000
                # a request belongs to "during" if the job ran at its start or its end
                where = "during" if "during" in (started_in, phase["now"]) else started_in
                samples.append((time.monotonic() - t0, ms, status, where, kind))

        jobber = asyncio.create_task(run_job())
        await asyncio.gather(*(searcher(i) for i in range(searchers)))
        elapsed = time.monotonic() - t0
        try:
            await asyncio.wait_for(jobber, timeout=300)
        except TimeoutError:
            jobber.cancel()
        metrics = (await client.get("/metrics")).text
    return {"samples": samples, "job": job, "elapsed": elapsed, "metrics": metrics}


def summarise(samples: list[tuple[float, float, int, str, str]], elapsed: float) -> list[dict[str, Any]]:
    rows = []
    groups = {
        "all": samples,
        "before indexing": [s for s in samples if s[3] == "before"],
        "while indexing": [s for s in samples if s[3] == "during"],
        "after indexing": [s for s in samples if s[3] == "after"],
        "upload search": [s for s in samples if s[4] == "upload"],
        "search by id": [s for s in samples if s[4] == "by-id"],
    }
    for name, rows_ in groups.items():
        if not rows_:
            continue
        ms = [s[1] for s in rows_]
        errors = sum(1 for s in rows_ if s[2] != 200)
        span = (max(s[0] for s in rows_) - min(s[0] for s in rows_)) or elapsed
        rows.append({"phase": name, "requests": len(rows_), "errors": errors,
                     "rps": round(len(rows_) / span, 1), **percentiles(ms)})
    return rows


def timeline(samples: list[tuple[float, float, int, str, str]]) -> list[dict[str, Any]]:
    """Per second of the run: requests finished, errors, p50/p99, and whether the job ran."""
    out = []
    for sec in range(int(max((s[0] for s in samples), default=0)) + 1):
        rows = [s for s in samples if sec <= s[0] < sec + 1]
        if rows:
            out.append({"second": sec, "requests": len(rows), "errors": sum(s[2] != 200 for s in rows),
                        "indexing": any(s[3] == "during" for s in rows),
                        **percentiles([s[1] for s in rows])})
    return out


def fuzz(url: str, seconds: float, examples: int, out_dir: Path) -> dict[str, Any]:
    """Run the schemathesis CLI against ``url`` for ``seconds``; parse its summary."""
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all",
           "-n", str(examples), "-w", "1", "--max-time", str(int(seconds)), "--request-timeout", "30",
           "--report", "junit", "--report-dir", str(out_dir)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 600)
    text = proc.stdout + proc.stderr
    m = re.search(r"(\d+) generated(?:, (\d+) found (\d+) unique failures)?", text)
    failures = dict(re.findall(r"❌ (ST\d+ [^:\n]+): (\d+)", text))
    summary = text[text.find("SUMMARY"):] if "SUMMARY" in text else text[-3000:]
    return {"cases": int(m.group(1)) if m else None, "failures": {k: int(v) for k, v in failures.items()},
            "server_errors": int(failures.get("ST101 Server error", 0)), "exit_code": proc.returncode,
            "seconds": round(time.perf_counter() - t, 1), "summary": summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--searchers", type=int, default=20)
    p.add_argument("--seconds", type=float, default=20.0, help="how long the searchers run (max 300)")
    p.add_argument("--baseline", type=float, default=5.0,
                   help="seconds of searching before the indexing job starts")
    p.add_argument("--max-requests", type=int, default=20_000, help="stop after this many requests")
    p.add_argument("--base-images", type=int, default=1000, help="images in the collection at start")
    p.add_argument("--index-images", type=int, default=3000, help="images the indexing job adds")
    p.add_argument("--size", type=int, default=256, help="side of the generated images (px)")
    p.add_argument("--extractor", default="colorhist")
    p.add_argument("--url", default=None, help="test a running server instead (loopback only); "
                   "needs --index-path under its --allow-root")
    p.add_argument("--index-path", default=None)
    p.add_argument("--token", default=os.environ.get("CBIR_API_TOKEN"))
    p.add_argument("--fuzz", type=float, default=0.0, metavar="SECONDS",
                   help="fuzz the API with schemathesis for this long instead of the load test")
    p.add_argument("--fuzz-examples", type=int, default=30, help="examples per operation and phase")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON results (default bench/results/service.json or service-fuzz.json)")
    args = p.parse_args(argv)
    if args.fuzz:
        args.base_images, args.index_images = min(args.base_images, 60), min(args.index_images, 30)
        args.size = min(args.size, 96)
    default_out = "bench/results/service-fuzz.json" if args.fuzz else "bench/results/service.json"
    args.out = args.out or Path(default_out)
    args.seconds = min(max(args.seconds, 1.0), 300.0)
    args.max_requests = min(max(args.max_requests, 1), 200_000)

    with tempfile.TemporaryDirectory(prefix="cbir-bench-service-") as tmp:
        tmpd = Path(tmp)
        proc = None
        t = time.perf_counter()
        base = make_images(tmpd / "root" / "base", args.base_images, args.size, seed=1)
        queries = [p_.read_bytes() for p_ in base[:50]]
        if args.url:
            loopback_only(args.url)
            if not args.index_path:
                raise SystemExit("--url needs --index-path (a folder under the server's --allow-root)")
            url, index_path, n_ids = args.url, args.index_path, 0
        else:
            make_images(tmpd / "root" / "new", args.index_images, args.size, seed=2)
            log(f"generated {args.base_images} + {args.index_images} images "
                f"in {time.perf_counter() - t:.1f} s")
            from cbir.collection import Collection
            from cbir.indexing import index_paths

            t = time.perf_counter()
            with Collection.create_or_open(tmpd / "coll", args.extractor) as col, col.writer_lock():
                index_paths(col, [tmpd / "root" / "base"], progress=False)
            log(f"indexed the base collection in {time.perf_counter() - t:.1f} s")
            proc, url = start_server(tmpd / "coll", tmpd / "root", args.extractor, tmpd / "server.log")
            index_path, n_ids = str(tmpd / "root" / "new"), args.base_images
        if args.fuzz:
            try:
                res = fuzz(url, min(args.fuzz, 3600), args.fuzz_examples, args.out.parent / "fuzz-report")
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(30)
            print(res["summary"])
            print(f"schemathesis: {res['cases']} cases in {res['seconds']} s; server errors (5xx): "
                  f"{res['server_errors']}; failures by check: {res['failures'] or 'none'}")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({k: v for k, v in res.items()}, indent=2))
            log(f"wrote {args.out}")
            return 0 if res["server_errors"] == 0 else 1
        log(f"server at {url}; {args.searchers} searchers for {args.seconds:.0f} s while indexing "
            f"{args.index_images} images")
        try:
            res = asyncio.run(run_load(url, queries, args.searchers, args.seconds, args.max_requests,
                                       index_path, args.token, n_ids, args.baseline))
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    rows = summarise(res["samples"], res["elapsed"])
    job = res["job"]
    print(f"{'phase':<16} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>7} {'p90 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7}")
    for r in rows:
        print(f"{r['phase']:<16} {r['requests']:>8} {r['errors']:>6} {r['rps']:>7} {r['p50']:>7} "
              f"{r['p90']:>7} {r['p99']:>7} {r['max']:>7}")
    jr = job.get("result") or {}
    print(f"indexing job: {job.get('status')}, {jr.get('added', '?')} added in {jr.get('seconds', '?')} s "
          f"({jr.get('images_per_second', '?')} images/s), ran from t={job.get('started_at', 0):.1f} "
          f"to t={job.get('finished_at', 0):.1f} s")
    allrow = rows[0] if rows else {}
    during = next((r for r in rows if r["phase"] == "while indexing"), {})
    ok = allrow.get("errors", 1) == 0 and (during.get("p99") or 1e9) < 500
    print(f"target (0 errors, p99 < 500 ms while indexing): {'met' if ok else 'NOT met'}; "
          f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "token"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "load_average": os.getloadavg(),
        "rows": rows, "job": {k: job.get(k) for k in ("status", "done", "total", "result", "started_at",
                                                      "finished_at")},
        "target_met": ok,
        "timeline": timeline(res["samples"])}, indent=2))
    log(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
