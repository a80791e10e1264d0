"""Settings of one running service: which collection, what may be indexed, limits, tokens."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024

#: hosts a loopback-bound server answers to (a DNS-rebinding page sends its own name)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: bind addresses that mean "every interface"
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_header_name(name: str) -> str:
    """How ``name`` (a bind address or an --allowed-host value) appears in a Host header, without
    the port and lower-cased: ``fe80::1`` -> ``[fe80::1]``, ``Example.org:8000`` -> ``example.org``."""
    name = name.strip().lower()
    if name.startswith("["):
        return name.split("]")[0] + "]"
    if name.count(":") > 1:  # a bare IPv6 address
        return f"[{name}]"
    return name.rsplit(":", 1)[0] if ":" in name else name


def accepted_hosts(host: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Host header names a server bound to ``host`` answers to: the localhost names, ``host``
    itself (unless it is a wildcard such as 0.0.0.0) and the ``extra`` names (--allowed-host)."""
    names = list(LOOPBACK_HOSTS)
    for name in ([] if host in WILDCARD_HOSTS else [host]) + list(extra):
        n = host_header_name(name)
        if n and n not in names:
            names.append(n)
    return names


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
    #: Host header names accepted (None: any; the default for a loopback ``host``); against DNS
    #: rebinding. For a non-loopback ``host`` the default is ``accepted_hosts(host)``.
    allowed_hosts: list[str] | None = None
    #: the address the server binds. A non-loopback one (0.0.0.0, a LAN address) makes every
    #: read need a token too (unless ``public_read``) and turns the Host header check on; on a
    #: wildcard bind the address a connection came in on is accepted as Host as well
    host: str = "127.0.0.1"
    #: on a non-loopback ``host``: let reads (search, images, jobs, metrics) go without a token
    public_read: bool = False
    #: the most a training zip upload may unpack to, in bytes (besides 10 x its own size)
    max_unzip_bytes: int = 2048 * MiB
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
        if self.allowed_hosts is None and not is_loopback(self.host):
            self.allowed_hosts = accepted_hosts(self.host)

    @property
    def reads_need_token(self) -> bool:
        """Whether reads need a token as writes do: tokens exist, the bind is not loopback, and
        ``public_read`` is off."""
        return bool(self.token_hashes) and not self.public_read and not is_loopback(self.host)

    @property
    def wildcard_bind(self) -> bool:
        return self.host in WILDCARD_HOSTS


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be a whole number, got {value!r}") from None
