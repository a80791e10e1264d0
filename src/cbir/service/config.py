"""Settings of one running service: which collection, what may be indexed, limits, tokens."""

from __future__ import annotations

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
    #: contention); $CBIR_REQUEST_THREADS overrides it
    request_threads: int = 8
    #: run indexing and training in a child process (keeps the server responsive; False: a thread)
    isolate_jobs: bool = True
    #: the fastest a shared in-memory index is rebuilt while the catalog keeps changing
    index_refresh_seconds: float = 0.5

    def __post_init__(self) -> None:
        self.collection = Path(self.collection)
        self.allow_roots = [Path(r) for r in self.allow_roots]
