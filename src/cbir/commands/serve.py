"""``cbir serve``: the web page and REST API over one collection (uvicorn + FastAPI).

Binds 127.0.0.1 by default. Any other address needs an API token (``--token-file`` or
``$CBIR_API_TOKEN``), for reads as well as writes unless ``--public-read``, and answers only
to Host names it knows (``--allowed-host``). Folders may only be indexed from the web under
``--allow-root`` folders.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from cbir.errors import BackendUnavailable, InvalidRequest
from cbir.service.config import is_loopback  # stdlib only: no FastAPI at import time

MiB = 1024 * 1024


def _collection_path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a collection folder, got an empty path")
    return Path(text)


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; others need --token-file)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    s.add_argument("--collection", dest="serve_collection", type=_collection_path, default=None,
                   metavar="DIR",
                   help="collection directory (same as the global --collection)")
    s.add_argument("--allow-root", action="append", default=[], metavar="DIR", type=Path,
                   help="a folder the web page may index (with its sub-folders); repeatable. Without "
                   "it a loopback server allows your home folder and the collection's indexed "
                   "folders; any other --host allows none")
    s.add_argument("--no-default-roots", action="store_true",
                   help="on loopback without --allow-root: allow no folder (indexing from the page is off)")
    s.add_argument("--token-file", type=Path, default=None,
                   help="file with API token hashes (see --create-token); also $CBIR_API_TOKEN")
    s.add_argument("--public-read", action="store_true",
                   help="with a non-loopback --host: let searches, images, jobs and /metrics go "
                   "without the token (by default every endpoint but /api/health, the page and "
                   "the docs needs it there)")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host header name the server answers to besides the bound address and "
                   "localhost (e.g. its DNS name, or a reverse proxy's); repeatable")
    s.add_argument("--create-token", type=Path, default=None, metavar="FILE",
                   help="write a new token's hash to FILE, print the token once, and exit")
    s.add_argument("--extractor", default=None,
                   help="extractor for a collection the first indexing job creates")
    s.add_argument("--max-upload-mb", type=float, default=20.0, help="largest query upload (MB)")
    s.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="refuse uploaded or thumbnailed images with more pixels than this")
    s.add_argument("--request-threads", type=int, default=None, metavar="N",
                   help="requests handled at once (default: one per core, at least 2; "
                   "$CBIR_REQUEST_THREADS)")
    s.add_argument("--job-nice", type=int, default=None, metavar="0-19",
                   help="niceness of the indexing/training process (default 19: searches first; "
                   "$CBIR_JOB_NICE)")
    s.add_argument("--job-cpus", type=int, default=None, metavar="N",
                   help="CPUs the indexing/training process may use, 0 = all (default: all but one, "
                   "so searches keep a core; $CBIR_JOB_CPUS)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default info)")
    s.add_argument("--no-access-log", action="store_true", help="do not log every request")


def register(sub: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``serve`` to the ``cbir`` parser."""
    s = sub.add_parser("serve", help="web page and REST API (http://127.0.0.1:8000)")
    add_arguments(s)
    s.set_defaults(func=cmd_serve)


def build_config(args: argparse.Namespace):
    """The ServiceConfig for parsed arguments (checks roots, tokens and the bind address)."""
    from cbir.collection import default_collection_dir
    from cbir.service.config import ServiceConfig, accepted_hosts
    from cbir.service.security import load_token_hashes

    collection = args.serve_collection or getattr(args, "collection", None) or default_collection_dir()
    roots = []
    for r in args.allow_root:
        if not r.is_dir():
            raise InvalidRequest(f"--allow-root {r}: no such folder")
        roots.append(r.resolve())
    hashes = load_token_hashes(args.token_file)
    loopback = is_loopback(args.host)
    if not roots and loopback and not getattr(args, "no_default_roots", False):
        roots = default_roots(Path(collection))
    if not loopback and not hashes:
        raise InvalidRequest(f"--host {args.host} lets other machines reach the server: give "
                             "--token-file (make one with --create-token FILE) or set $CBIR_API_TOKEN")
    if args.port < 0 or args.port > 65535:
        raise InvalidRequest(f"--port must be 0..65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0:
        raise InvalidRequest("--max-upload-mb and --max-pixels must be positive")
    request_threads = getattr(args, "request_threads", None)
    job_nice = getattr(args, "job_nice", None)
    job_cpus = getattr(args, "job_cpus", None)
    if request_threads is not None and request_threads < 1:
        raise InvalidRequest(f"--request-threads must be at least 1, got {request_threads}")
    if job_nice is not None and not 0 <= job_nice <= 19:
        raise InvalidRequest(f"--job-nice must be 0..19, got {job_nice}")
    if job_cpus is not None and job_cpus < 0:
        raise InvalidRequest(f"--job-cpus must be 0 (all) or more, got {job_cpus}")
    tuning = {k: v for k, v in (("request_threads", request_threads), ("job_nice", job_nice),
                                ("job_cpus", job_cpus)) if v is not None}
    if args.extractor:
        from cbir.extract import EXTRACTORS

        if args.extractor not in EXTRACTORS.names():
            raise InvalidRequest(f"unknown --extractor {args.extractor!r}; choose one of: "
                                 + ", ".join(EXTRACTORS.names()))
    return ServiceConfig(collection=Path(collection), allow_roots=roots, token_hashes=hashes,
                         extractor=args.extractor, max_upload_bytes=int(args.max_upload_mb * MiB),
                         max_pixels=args.max_pixels, host=args.host,
                         public_read=bool(getattr(args, "public_read", False)),
                         allowed_hosts=accepted_hosts(args.host, getattr(args, "allowed_host", None) or []),
                         **tuning)


def default_roots(collection: Path) -> list[Path]:
    """What a loopback server may index without --allow-root: the user's home and the folders
    already indexed into the collection (so a first run can index a folder the user names).
    Off loopback nothing is allowed by default."""
    out: list[Path] = []
    with contextlib.suppress(RuntimeError, KeyError, OSError):
        home = Path.home().resolve()
        if home.is_dir() and home != Path(home.anchor):  # never the whole file system
            out.append(home)
    for r in _indexed_folders(collection):
        p = Path(r)
        if p.is_dir() and not any(p == q or q in p.parents for q in out):
            out.append(p)
    return out


def _indexed_folders(collection: Path) -> list[str]:
    """The folders recorded in the collection's catalog (empty without a collection)."""
    from cbir.store.catalog import CATALOG_NAME

    path = collection / CATALOG_NAME
    if not path.is_file():
        return []
    import sqlite3

    from cbir.indexing import ROOTS_META

    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT value FROM meta WHERE key=?", (ROOTS_META,)).fetchone()
        finally:
            db.close()
        roots = json.loads(row[0]) if row and row[0] else []
    except (sqlite3.Error, ValueError):
        return []
    return [r for r in roots if isinstance(r, str)] if isinstance(roots, list) else []


def check_not_served(directory: Path) -> None:
    """Refuse, before uvicorn starts, a collection path that is not a usable folder or that
    another ``cbir serve`` already serves (the same checks fail in the app's lifespan too, but
    an error there escapes through uvicorn as a traceback and exit status 3)."""
    import fcntl

    from cbir.collection import check_collection_path
    from cbir.errors import CollectionError
    from cbir.service.state import SERVICE_LOCK

    check_collection_path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / SERVICE_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return  # never served
    except OSError as e:
        raise CollectionError(f"cannot use {directory} as a collection: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CollectionError(f"another `cbir serve` is already serving {directory}; "
                              "stop it or choose another --collection") from None
    finally:
        os.close(fd)  # releases the probe's lock; the service takes its own in start()


def cmd_serve(args: argparse.Namespace) -> int:
    if args.create_token:
        from cbir.service.security import write_token_file

        try:
            token = write_token_file(args.create_token)
        except FileExistsError:
            raise InvalidRequest(f"{args.create_token} exists; choose a new file") from None
        if getattr(args, "json", False):
            json.dump({"token": token, "token_file": str(args.create_token)}, sys.stdout)
            sys.stdout.write("\n")
            return 0
        print(token)
        print(f"saved its hash to {args.create_token}; start with: cbir serve --token-file "
              f"{args.create_token}  (send the token as 'Authorization: Bearer TOKEN')", file=sys.stderr)
        return 0
    try:
        import uvicorn

        from cbir.service import create_app
    except ImportError as e:
        raise BackendUnavailable(f"the web service needs the 'service' extra ({e.name} is missing): "
                                 "pip install 'cbir[service]'") from None
    from cbir.service.httpserver import uvicorn_options
    from cbir.service.security import token_file_warning

    config = build_config(args)
    check_not_served(config.collection)
    warning = token_file_warning(args.token_file)
    if warning:
        print(warning, file=sys.stderr)
    app = create_app(config)
    where = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}"
    print(f"cbir: serving {config.collection} on {where} (API docs at {where}/docs); "
          f"indexable roots: {', '.join(map(str, config.allow_roots)) or 'none (use --allow-root)'}",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port,
                **uvicorn_options(log_level=args.log_level, access_log=not args.no_access_log))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m cbir.commands.serve`` (the same options, plus --collection)."""
    from cbir.errors import CbirError

    p = argparse.ArgumentParser(prog="cbir serve", description=__doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return cmd_serve(args)
    except CbirError as e:
        print(f"cbir: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
