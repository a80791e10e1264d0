"""Settings of one running service: which collection, what may be indexed, limits, tokens."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024

#: hosts a loopback-bound server answers to (a DNS-rebinding page sends its own name)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class ServiceConfig:
    """Everything ``create_app`` needs; ``cbir serve`` fills it from the command line."""

    collection: Path
    #: folders the API may index (and their sub-folders); empty = indexing from the web is off
    allow_roots: list[Path] = field(default_factory=list)
    #: "sha256:<hex>" hashes of accepted API tokens; empty = mutating endpoints are open
    token_hashes: list[str] = field(default_factory=list)
    #: extractor for a collection the first indexing job creates (None: the default backbone)
    extractor: str | None = None
    #: the largest request body (a query image upload), in bytes
    max_upload_bytes: int = 20 * MiB
    #: the largest training zip upload, in bytes
    max_zip_bytes: int = 512 * MiB
    #: uploads and thumbnails refuse images with more pixels than this (checked from the header)
    max_pixels: int = 50_000_000
    max_k: int = 1000
    thumb_size: int = 256
    #: images per committed batch in indexing jobs (searches see each batch once committed)
    commit_every: int = 64
    #: Host header names accepted (None: any); set for loopback binds against DNS rebinding
    allowed_hosts: list[str] | None = None
    #: threads serving blocking requests at once (searches are CPU-bound: more only adds GIL
    #: contention; bench/bench_service.py on 2 cores: 2 threads cut p99 by a third against 8);
    #: None: $CBIR_REQUEST_THREADS, else one per core, at least 2
    request_threads: int | None = None
    #: run indexing and training in a child process (keeps the server responsive; False: a thread)
    isolate_jobs: bool = True
    #: scheduling niceness of that process, 0-19 (19: it gets the CPU time searches leave idle);
    #: None: $CBIR_JOB_NICE, else 19
    job_nice: int | None = None
    #: CPUs that process may use: its CPU affinity, and the size of its thread pools (decoding,
    #: inference, BLAS, OpenMP); 0 = every CPU; None: $CBIR_JOB_CPUS, else all but one (so one
    #: core stays free for searches), at least 1
    job_cpus: int | None = None
    #: the fastest a shared in-memory index is rebuilt while the catalog keeps changing
    index_refresh_seconds: float = 0.5

    def __post_init__(self) -> None:
        self.collection = Path(self.collection)
        self.allow_roots = [Path(r) for r in self.allow_roots]
        cores = os.cpu_count() or 1
        if self.request_threads is None:
            self.request_threads = _env_int("CBIR_REQUEST_THREADS", max(2, cores))
        if self.job_nice is None:
            self.job_nice = _env_int("CBIR_JOB_NICE", 19)
        if self.job_cpus is None:
            self.job_cpus = _env_int("CBIR_JOB_CPUS", max(1, cores - 1))
        self.request_threads = max(1, self.request_threads)
        self.job_nice = min(19, max(0, self.job_nice))
        self.job_cpus = max(0, self.job_cpus)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be a whole number, got {value!r}") from None
