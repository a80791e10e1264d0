"""Load test of ``cbir serve``: concurrent searchers while an indexing job runs.

    python bench/bench_service.py                      # 20 searchers, 20 s, colorhist
    python bench/bench_service.py --searchers 20 --seconds 30 --index-images 4000
    python bench/bench_service.py --url http://127.0.0.1:8000 --index-path /abs/folder
    python bench/bench_service.py --fuzz 300           # schemathesis over the OpenAPI schema

Builds a collection of generated images (cheap ``colorhist`` extractor by default),
starts the real server (``python -m cbir.commands.serve``) on a free loopback port,
starts an indexing job over a second folder, and runs ``--searchers`` asyncio clients
(each one keep-alive connection; ``--client httpx`` for httpx, which costs the load generator
more CPU per request than the server spends, on the same cores) that upload query images (and,
one request in four, search by image id) for ``--warmup`` seconds not counted, then until
``--seconds`` pass or ``--max-requests`` are sent. Reports latency p50/p90/p99/max and
errors while the job ran and after it finished, and the CPU time of the server, the job and
the load generator, as a table on stdout and JSON in bench/results/service.json. Only
loopback addresses are ever contacted.
Targets: zero errors, p99 < 500 ms. ``--fuzz SECONDS`` instead runs schemathesis (every
check, coverage + fuzzing + stateful phases) against the same kind of server for that long
and reports how many cases ran and what failed (bench/results/service-fuzz.json).

Side by side (the machine is shared and noisy: compare within one run, as ratios)::

    python bench/bench_service.py --compare-head --rounds 3
    python bench/bench_service.py --variant "default:" --variant "old-job:CBIR_JOB_NICE=10,CBIR_JOB_CPUS=0" \
        --variant "8-threads:CBIR_REQUEST_THREADS=8" --rounds 3

Each ``--variant NAME:ENV=VALUE,...`` starts its own server with those environment variables
(``--compare-head`` adds ``HEAD``: the last commit's ``src/``, exported with ``git archive``,
as the first, reference variant). Rounds run the variants in turn on fresh copies of the same
collection, so a burst of load from elsewhere hits them alike; the tables pool every round
and the last one gives each variant's p50/p99 relative to the first.
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


def start_server(coll: Path, root: Path, extractor: str, logfile: Path,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    out = open(logfile, "w+")  # noqa: SIM115 - the server's log, kept open with it
    full_env = {**os.environ, **(env or {})}
    if env and env.get("PYTHONPATH"):  # a variant's own source tree goes first
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (env["PYTHONPATH"],
                                                             os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "cbir.commands.serve", "--collection", str(coll),
                             "--allow-root", str(root), "--port", "0", "--no-access-log",
                             "--extractor", extractor], stdout=out, stderr=subprocess.STDOUT, text=True,
                            env=full_env)
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


BOUNDARY = "cbir-bench-7d1f0c"


def multipart(data: bytes, k: int = 10) -> bytes:
    """The body of an upload search (file + k), encoded once per query image."""
    b = BOUNDARY.encode()
    return (b"--" + b + b'\r\nContent-Disposition: form-data; name="k"\r\n\r\n' + str(k).encode() + b"\r\n"
            b"--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--" + b + b"--\r\n")


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client over one asyncio connection (one per searcher).

    httpx costs the load generator more CPU per request than the server spends answering
    it (bench runs on the server's 2 cores), which inflates the latencies measured; this
    client does ~10x less work: a prebuilt request, the status line, Content-Length, body.
    """

    def __init__(self, url: str, headers: dict[str, str]):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def request(self, method: str, target: str, body: bytes = b"",
                      content_type: str | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.extra}"
                f"Content-Length: {len(body)}\r\n"
                + (f"Content-Type: {content_type}\r\n" if content_type else "") + "\r\n")
        try:
            self.writer.write(head.encode() + body)
            status = int((await self.reader.readline()).split(b" ", 2)[1])
            length, close = 0, False
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            data = await self.reader.readexactly(length)
        except BaseException:
            await self.close()
            raise
        if close:
            await self.close()
        return status, data


async def run_load(url: str, queries: list[bytes], searchers: int, seconds: float, max_requests: int,
                   index_path: str, token: str | None, n_ids: int, baseline: float,
                   client_kind: str = "raw", warmup: float = 0.0) -> dict[str, Any]:
    """Searchers run ``warmup`` (not counted) + ``seconds``; the job starts ``baseline`` s after warm-up."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=searchers + 4, max_keepalive_connections=searchers + 4)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits, headers=headers) as client:
        r = await client.post("/api/search", files={"file": ("warm.jpg", queries[0])}, data={"k": "10"})
        r.raise_for_status()
        phase = {"now": "warmup" if warmup > 0 else "before"}
        job: dict[str, Any] = {}
        samples: list[tuple[float, float, int, str, str]] = []  # (t, ms, status, phase, kind)
        sent = 0
        t0 = time.monotonic()
        deadline = t0 + warmup + seconds
        rng = random.Random(0)

        async def run_job() -> None:
            if warmup > 0:
                await asyncio.sleep(warmup)
                phase["now"] = "before"
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

        bodies = [multipart(q) for q in queries]
        form = f"multipart/form-data; boundary={BOUNDARY}"

        async def searcher(i: int) -> None:
            nonlocal sent
            raw = RawConnection(url, headers) if client_kind == "raw" else None
            while time.monotonic() < deadline and sent < max_requests:
                sent += 1
                started_in = phase["now"]
                by_id = rng.random() < 0.25 and n_ids
                image_id, qi = rng.randint(1, max(1, n_ids)), rng.randrange(len(queries))
                kind = "by-id" if by_id else "upload"
                t = time.perf_counter()
                try:
                    if raw is not None:
                        status, body = await (raw.request("GET", f"/api/search?id={image_id}&k=10") if by_id
                                              else raw.request("POST", "/api/search", bodies[qi], form))
                    else:
                        resp = await (client.get("/api/search", params={"id": image_id, "k": 10}) if by_id
                                      else client.post("/api/search", files={"file": ("q.jpg", queries[qi])},
                                                       data={"k": "10"}))
                        status, body = resp.status_code, resp.content
                    if status == 200:
                        json.loads(body)["hits"]  # noqa: B018 - the body must parse
                except Exception as e:  # noqa: BLE001 - count transport errors too
                    status = -1
                    log(f"searcher {i}: {type(e).__name__}: {e}")
                ms = (time.perf_counter() - t) * 1000
                # a request belongs to "during" if the job ran at its start or its end
                where = "during" if "during" in (started_in, phase["now"]) else started_in
                samples.append((time.monotonic() - t0, ms, status, where, kind))
            if raw is not None:
                await raw.close()

        jobber = asyncio.create_task(run_job())
        await asyncio.gather(*(searcher(i) for i in range(searchers)))
        elapsed = time.monotonic() - t0
        try:
            await asyncio.wait_for(jobber, timeout=300)
        except TimeoutError:
            jobber.cancel()
        metrics = (await client.get("/metrics")).text
    return {"samples": samples, "job": job, "elapsed": elapsed, "metrics": metrics}


Sample = tuple[float, float, int, str, str]  # (t, ms, status, phase, kind)


def summarise(runs: list[list[Sample]]) -> list[dict[str, Any]]:
    """Rows per phase and kind, pooled over runs (req/s: requests over the runs' summed spans).

    Requests sent during the warm-up are left out of every row.
    """
    rows = []
    groups = {
        "all": lambda s: True,
        "before indexing": lambda s: s[3] == "before",
        "while indexing": lambda s: s[3] == "during",
        "after indexing": lambda s: s[3] == "after",
        "upload search": lambda s: s[4] == "upload",
        "search by id": lambda s: s[4] == "by-id",
    }
    for name, keep in groups.items():
        per_run = [[s for s in run if s[3] != "warmup" and keep(s)] for run in runs]
        rows_ = [s for run in per_run for s in run]
        if not rows_:
            continue
        ms = [s[1] for s in rows_]
        errors = sum(1 for s in rows_ if s[2] != 200)
        span = sum(max(s[0] for s in run) - min(s[0] for s in run) for run in per_run if run)
        rows.append({"phase": name, "requests": len(rows_), "errors": errors,
                     "rps": round(len(rows_) / span, 1) if span else None, **percentiles(ms)})
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


def proc_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of the process, of its reaped children) from /proc; (0, 0) elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME:ENV=VALUE,ENV=VALUE`` -> (name, env)."""
    name, _, rest = spec.partition(":")
    env = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise SystemExit(f"--variant {spec!r}: write NAME:ENV=VALUE,ENV=VALUE")
        env[k] = v
    return name or "current", env


def export_head(dest: Path) -> Path:
    """The last commit's src/ (git archive), for ``--compare-head``; returns the src folder."""
    repo = Path(__file__).resolve().parents[1]
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", "HEAD", "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def one_run(args: argparse.Namespace, tmpd: Path, name: str, env: dict[str, str], rnd: int,
            queries: list[bytes]) -> dict[str, Any]:
    """A fresh copy of the base collection, a server with ``env``, the load, the server stopped."""
    import shutil

    coll = tmpd / f"coll-{name}-{rnd}"
    shutil.copytree(tmpd / "coll", coll)
    proc, url = start_server(coll, tmpd / "root", args.extractor, tmpd / f"server-{name}-{rnd}.log", env)
    cpu0, client0 = proc_cpu(proc.pid), time.process_time()
    try:
        res = asyncio.run(run_load(url, queries, args.searchers, args.seconds, args.max_requests,
                                   str(tmpd / "root" / "new"), args.token, args.base_images, args.baseline,
                                   args.client, args.warmup))
        cpu1 = proc_cpu(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(coll, ignore_errors=True)
    res["cpu"] = {"server_s": round(cpu1[0] - cpu0[0], 2), "job_s": round(cpu1[1] - cpu0[1], 2),
                  "client_s": round(time.process_time() - client0, 2)}
    return res


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"{'phase':<16} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>7} {'p90 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7}")
    for r in rows:
        print(f"{r['phase']:<16} {r['requests']:>8} {r['errors']:>6} {r['rps']:>7} {r['p50']:>7} "
              f"{r['p90']:>7} {r['p99']:>7} {r['max']:>7}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--searchers", type=int, default=20)
    p.add_argument("--seconds", type=float, default=20.0, help="how long the searchers run (max 300)")
    p.add_argument("--baseline", type=float, default=5.0,
                   help="seconds of searching before the indexing job starts")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of searching first that are not counted (a fresh server's first "
                   "requests load its index and warm its caches)")
    p.add_argument("--max-requests", type=int, default=50_000, help="stop after this many requests")
    p.add_argument("--base-images", type=int, default=1000, help="images in the collection at start")
    p.add_argument("--index-images", type=int, default=3000, help="images the indexing job adds")
    p.add_argument("--size", type=int, default=256, help="side of the generated images (px)")
    p.add_argument("--extractor", default="colorhist")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:ENV=VALUE,...",
                   help="a server configuration to measure (repeatable; its environment variables, "
                   "e.g. CBIR_JOB_NICE=0 or PYTHONPATH=/other/src); default one plain server")
    p.add_argument("--compare-head", action="store_true",
                   help="add the last commit's code (git archive HEAD src) as the first variant")
    p.add_argument("--rounds", type=int, default=1, help="runs of every variant, taken in turn")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw",
                   help="the searchers' HTTP client: a minimal keep-alive one (default; it leaves the "
                   "CPU to the server) or httpx (as before: ~5 ms of CPU per request on 2 cores)")
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
    args.rounds = min(max(args.rounds, 1), 20)
    variants = [parse_variant(v) for v in args.variant] or [("current", {})]
    if len({n for n, _ in variants}) != len(variants):
        raise SystemExit("give every --variant its own name")
    if args.url and (args.compare_head or args.variant or args.rounds > 1):
        raise SystemExit("--url measures one running server: no --variant, --compare-head or --rounds")

    with tempfile.TemporaryDirectory(prefix="cbir-bench-service-") as tmp:
        tmpd = Path(tmp)
        if args.compare_head:
            variants.insert(0, ("HEAD", {"PYTHONPATH": str(export_head(tmpd / "head"))}))
        t = time.perf_counter()
        base = make_images(tmpd / "root" / "base", args.base_images, args.size, seed=1)
        queries = [p_.read_bytes() for p_ in base[:50]]
        if args.url:
            loopback_only(args.url)
            if not args.index_path:
                raise SystemExit("--url needs --index-path (a folder under the server's --allow-root)")
            log(f"{args.searchers} searchers for {args.seconds:.0f} s against {args.url}")
            res = asyncio.run(run_load(args.url, queries, args.searchers, args.seconds, args.max_requests,
                                       args.index_path, args.token, 0, args.baseline, args.client,
                                       args.warmup))
            runs = {"current": [res]}
            variants = [("current", {})]
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
            if args.fuzz:
                proc, url = start_server(tmpd / "coll", tmpd / "root", args.extractor, tmpd / "server.log",
                                         variants[0][1])
                try:
                    res = fuzz(url, min(args.fuzz, 3600), args.fuzz_examples,
                               args.out.parent / "fuzz-report")
                finally:
                    proc.terminate()
                    proc.wait(30)
                print(res["summary"])
                print(f"schemathesis: {res['cases']} cases in {res['seconds']} s; server errors (5xx): "
                      f"{res['server_errors']}; failures by check: {res['failures'] or 'none'}")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({k: v for k, v in res.items()}, indent=2))
                log(f"wrote {args.out}")
                return 0 if res["server_errors"] == 0 else 1
            runs = {name: [] for name, _ in variants}
            for rnd in range(args.rounds):
                for name, env in variants:
                    log(f"round {rnd + 1}/{args.rounds}, {name}: {args.searchers} searchers for "
                        f"{args.seconds:.0f} s, indexing {args.index_images} images from "
                        f"t={args.baseline:.0f} s (load average {os.getloadavg()[0]:.1f})")
                    res = one_run(args, tmpd, name, env, rnd, queries)
                    runs[name].append(res)
                    log(f"  p99 while indexing {summarise_phase(res, 'during')} ms; cpu {res['cpu']}")
    report: dict[str, Any] = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "token"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "load_average": os.getloadavg(), "variants": {}}
    ok_all = True
    for name, env in variants:
        rows = summarise([r["samples"] for r in runs[name]])
        if len(variants) > 1:
            print(f"\n== {name} {env or ''} ({len(runs[name])} run(s))")
        print_rows(rows)
        jobs = [r["job"] for r in runs[name]]
        for job in jobs:
            jr = job.get("result") or {}
            print(f"indexing job: {job.get('status')}, {jr.get('added', '?')} added in "
                  f"{jr.get('seconds', '?')} s ({jr.get('images_per_second', '?')} images/s), ran from "
                  f"t={job.get('started_at', 0):.1f} to t={job.get('finished_at', 0):.1f} s")
        n = sum(r["requests"] for r in rows[:1]) or 1
        cpu = {k: round(sum(r["cpu"][k] for r in runs[name]), 2) for k in ("server_s", "job_s", "client_s")}
        cpu["server_ms_per_request"] = round(1000 * cpu["server_s"] / n, 2)
        print(f"CPU: server {cpu['server_s']} s ({cpu['server_ms_per_request']} ms/request), indexing job "
              f"{cpu['job_s']} s, load generator {cpu['client_s']} s")
        allrow = rows[0] if rows else {}
        during = next((r for r in rows if r["phase"] == "while indexing"), {})
        ok = allrow.get("errors", 1) == 0 and (during.get("p99") or 1e9) < 500
        ok_all &= ok
        print(f"target (0 errors, p99 < 500 ms while indexing): {'met' if ok else 'NOT met'}")
        report["variants"][name] = {
            "env": env, "rows": rows, "cpu": cpu, "target_met": ok,
            "jobs": [{k: job.get(k) for k in ("status", "done", "total", "result", "started_at",
                                              "finished_at")} for job in jobs],
            "timeline": [timeline(r["samples"]) for r in runs[name]]}
    if len(variants) > 1:
        ref = variants[0][0]
        print(f"\nrelative to {ref} (ratio < 1: faster); pooled over {args.rounds} round(s)")
        print(f"{'variant':<10} {'phase':<16} {'p50 ms':>7} {'p99 ms':>7} {'x p50':>6} {'x p99':>6} "
              f"{'req/s':>6}")
        base_rows = {r["phase"]: r for r in report["variants"][ref]["rows"]}
        for name, _ in variants:
            for r in report["variants"][name]["rows"]:
                if r["phase"] not in ("before indexing", "while indexing", "after indexing", "all"):
                    continue
                b = base_rows.get(r["phase"])
                x50 = f"{r['p50'] / b['p50']:.2f}" if b and b["p50"] else "-"
                x99 = f"{r['p99'] / b['p99']:.2f}" if b and b["p99"] else "-"
                print(f"{name:<10} {r['phase']:<16} {r['p50']:>7} {r['p99']:>7} {x50:>6} {x99:>6} "
                      f"{r['rps']:>6}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if len(variants) == 1:  # the single-run layout, as before
        only = report["variants"][variants[0][0]]
        report.update(rows=only["rows"], job=only["jobs"][-1], target_met=only["target_met"],
                      timeline=only["timeline"][-1], cpu=only["cpu"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    log(f"wrote {args.out}")
    return 0 if ok_all else 1


def summarise_phase(res: dict[str, Any], phase: str) -> float | None:
    return percentiles([s[1] for s in res["samples"] if s[3] == phase])["p99"]


if __name__ == "__main__":
    sys.exit(main())
