# PYTHON_ARGCOMPLETE_OK
"""The ``cbir`` command line: thin commands that wire the parts together.

Results go to stdout (tables, paths with ``-f``, or JSON with ``--json``); progress and errors
to stderr. Exit status: 0 success, 1 done but some files were skipped, 2 error (one line on
stderr; with ``--json`` one JSON object ``{"error": ..., "type": ...}``).

The global options (``-c``, ``--json``, ``-q``, ``--progress``, ``--debug``) are accepted before
or after the sub-command: ``cbir -c DIR --json search q.jpg`` = ``cbir search q.jpg -c DIR --json``.
Progress bars show on a terminal only (or with ``--progress``); ``-q`` hides them.
Shell completion: ``eval "$(register-python-argcomplete cbir)"`` (with argcomplete installed).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import Any

from cbir import __version__
from cbir.commands.common import (
    add_filenames_option,
    add_filter_options,
    create_or_open_collection,
    filter_notes,
    filters_from_args,
    log_for,
    open_collection,
    output_mode,
    positive_int,
    print_json,
    print_paths,
    show_progress,
)
from cbir.errors import CbirError, InvalidRequest

# OpenMP threads that spin while waiting steal the cores from decoding and from other
# processes on a small shared machine (measured: FAISS 2-thread searches 7x slower under
# load). Must be set before faiss/onnxruntime load; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2

#: modules under cbir.commands whose ``register(sub, parser_class)`` adds sub-commands
COMMAND_MODULES: list[str] = ["train", "serve", "concepts"]


#: the attribute a sub-command parser leaves on the namespace when it met arguments it does not know
_UNKNOWN_IN = "_cbir_unknown_in"
#: set by main() when --json is on the command line: usage errors are JSON on stderr too
_json_errors = False


def _error_json(message: str, kind: str) -> str:
    return json.dumps({"error": message, "type": kind}, ensure_ascii=False)


def _usage_error(prog: str, message: str) -> str:
    if _json_errors:
        return _error_json(f"{prog}: {message} (see `{prog} --help`)", "UsageError") + "\n"
    return f"{prog}: error: {message} (see `{prog} --help`)\n"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (and exits 2) without the usage dump,
    and points an unknown argument to the help of the sub-command it was given to."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, _usage_error(self.prog, message))

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extras = super().parse_known_args(args, namespace)
        if extras and not hasattr(ns, _UNKNOWN_IN):  # the innermost sub-command's parser runs first
            setattr(ns, _UNKNOWN_IN, self.prog)
        return ns, extras

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        where = vars(ns).pop(_UNKNOWN_IN, self.prog)
        if extras:
            plural = "s" if len(extras) > 1 else ""
            self.exit(EXIT_ERROR, _usage_error(where, f"unrecognized argument{plural}: {' '.join(extras)}"))
        return ns


def _collection_path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a collection folder, got an empty path")
    return Path(text)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers, comma-separated, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {v}")
    return v


def _cosine(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a cosine similarity between -1 and 1, got {text!r}") from None
    if not -1.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a cosine similarity between -1 and 1, got {v}")
    return v


def _open(args: argparse.Namespace):
    return open_collection(args.collection)


# -- commands -----------------------------------------------------------------------------
def _ray_options(args: argparse.Namespace) -> Any:
    """The RayOptions of ``--engine ray`` (its extra checked before any work); None for local."""
    if args.engine != "ray":
        if args.ray_address or args.ray_actors:
            raise InvalidRequest("--ray-address and --ray-actors need --engine ray")
        return None
    from cbir.extras import require

    require("--engine ray", "ray")
    from cbir.extract.ray_engine import RayOptions

    return RayOptions(address=args.ray_address, actors=args.ray_actors)


def cmd_index(args: argparse.Namespace) -> int:
    from cbir.indexing import index_paths

    for p in args.paths:
        if not os.path.lexists(p):
            raise InvalidRequest(f"{p}: no such file or folder")
    if args.index_type == "milvus" or args.milvus_uri:
        from cbir.extras import require

        require("--index-type milvus", "milvus")
        from cbir.index.milvus import URI_ENV, resolve_uri

        if args.milvus_uri or os.environ.get(URI_ENV):
            resolve_uri(args.milvus_uri)  # malformed, or a credential in it: before any work
    ray_options = _ray_options(args)
    with create_or_open_collection(args.collection, args.extractor) as col, col.writer_lock():
        if args.milvus_uri:
            col.set_milvus_uri(args.milvus_uri)
        if args.index_type:
            col.set_requested_index(args.index_type)
        report = index_paths(col, [Path(p) for p in args.paths], batch_size=args.batch_size,
                             commit_every=args.commit_every,
                             regions=args.regions, retry_errors=args.retry_errors,
                             progress=show_progress(args), engine=args.engine,
                             ray_options=ray_options)
    d = report.as_dict()
    if args.json:
        print_json(d)
    else:
        print(f"added {d['added']}, updated {d['updated']}, removed {d['removed']}, "
              f"unchanged {d['unchanged']}, duplicates {d['duplicates']}, "
              f"skipped {d['skipped']} in {d['seconds']:.1f} s "
              f"({d['images_per_second']:.1f} images/s); index: {d['index_type']}")
        for path, reason in report.problems[:20]:
            print(f"  skipped {path}: {reason}", file=sys.stderr)
        if len(report.problems) > 20:
            print(f"  ... and {len(report.problems) - 20} more (see `cbir info` or --json)",
                  file=sys.stderr)
    return EXIT_PARTIAL if report.problems else EXIT_OK


def _rerank_arg(text: str) -> int | str:
    """``--rerank``: a re-ranking method name, or (with --codes) a positive count."""
    from cbir.rerank import METHODS

    if text in METHODS:
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(METHODS)} or (with --codes) a "
                                         f"number of codes to re-score, got {text!r}") from None


def cmd_search(args: argparse.Namespace) -> int:
    from cbir.search import query_from_images, query_from_members, search

    if not args.images and not args.like:
        raise InvalidRequest("give a query image, or --like PATH for an image in the collection")
    if args.images and args.like:
        raise InvalidRequest("give query images or --like, not both")
    if args.codes and isinstance(args.rerank, str) and args.rerank != "none":
        raise InvalidRequest("with --codes, --rerank takes a number: the nearest codes re-scored by "
                             "their float features")
    if not args.codes and isinstance(args.rerank, int):
        raise InvalidRequest("--rerank N re-scores learned codes (with --codes); to re-rank a feature "
                             "search use --rerank qe or --rerank kr")
    output = output_mode(args)
    flt = filters_from_args(args)
    if flt is not None and args.codes:
        raise InvalidRequest("filters apply to feature searches; leave out --codes to filter")
    with _open(args) as col:
        need_regions = False
        if args.codes:
            from cbir import codes

            need_regions = getattr(codes.load(col, args.codes), "name", "") in codes.REGION_METHODS
        if args.like:
            query = query_from_members(col, args.like, exclude_self=not args.include_self,
                                       regions=need_regions)
        else:
            query = query_from_images(col, [Path(p) for p in args.images], regions=need_regions)
        if args.codes:
            hits = codes.hamming_search(col, args.codes, query, k=args.k,
                                        rerank=args.rerank if isinstance(args.rerank, int) else 0,
                                        query_regions=query.regions,
                                        min_similarity=args.min_similarity)
            return _print_hits(hits, output)
        kw: dict[str, Any] = {}
        if args.nprobe:
            kind = args.index_type or col.index().name
            knob = {"ivf": "nprobe", "class-partitioned": "n_partitions", "milvus": "n_partitions"}.get(kind)
            if knob is None:
                raise InvalidRequest(f"--nprobe applies to the ivf and class-partitioned indexes; "
                                     f"this search uses {kind!r}")
            kw[knob] = args.nprobe
        hits = search(col, query, k=args.k, min_similarity=args.min_similarity,
                      index_kind=args.index_type, rerank=args.rerank or "none",
                      rerank_depth=args.rerank_depth, min_match=args.min_match,
                      filters=flt, **kw)
        notes = filter_notes(col, flt)
    if output == "table":
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    return _print_hits(hits, output)


def _print_hits(hits: list, output: str) -> int:
    if output == "json":
        print_json({"hits": [h.as_dict() for h in hits]})
        return EXIT_OK
    if output == "filenames":
        return print_paths([h.path for h in hits])
    if not hits:
        print("no results", file=sys.stderr)
        return EXIT_OK
    ham = hits[0].hamming is not None
    print(f"{'rank':>4}  {'match':>6}  {'similarity':>10}  {'distance':>8}  {'cosine':>7}  "
          + ("hamming  " if ham else "") + "path")
    for h in hits:
        match = f"{h.match:>5.1f}%" if h.match is not None else f"{'':>6}"
        print(f"{h.rank:>4}  {match}  {h.similarity:>10.2%}  {h.distance:>8.4f}  {h.cosine:>7.4f}  "
              + (f"{h.hamming:>7}  " if ham else "") + h.path)
    return EXIT_OK


def cmd_hash_train(args: argparse.Namespace) -> int:
    from cbir import codes

    with _open(args) as col:
        res = codes.train(col, args.method, args.bits, name=args.name, tag_source=args.tags,
                          vectors=args.vectors, seed=args.seed, weak=args.weak,
                          progress=log_for(args),
                          warn=lambda m: print(f"cbir: warning: {m}", file=sys.stderr))
    if args.json:
        print_json(res.as_dict())
    else:
        if res.choice:
            print(f"auto chose {res.choice['reason']}")
        print(f"trained {res.name}: {res.method}, {res.bits} bits, {res.images} images, "
              f"{res.seconds:.1f} s; search with: cbir search IMAGE --codes {res.name}")
        if res.codes:
            from cbir.hashing.supervision import CodeStats

            print(f"codes: {CodeStats(**res.codes).summary()}")
    return EXIT_OK


def cmd_hash_list(args: argparse.Namespace) -> int:
    from cbir import codes

    with _open(args) as col:
        rows = codes.list_hashers(col)
    if args.json:
        print_json(rows)
    elif not rows:
        print("no codes trained yet; try: cbir hash train --method itq --bits 64", file=sys.stderr)
    else:
        for r in rows:
            print("  ".join(f"{k}={v}" for k, v in r.items()))
    return EXIT_OK


def cmd_hash_delete(args: argparse.Namespace) -> int:
    from cbir import codes

    with _open(args) as col, col.writer_lock():
        n = codes.delete(col, args.name)
    if args.json:
        print_json({"deleted": args.name, "codes": n})
    else:
        print(f"deleted {args.name} ({n} codes)")
    return EXIT_OK


def cmd_hash_methods(args: argparse.Namespace) -> int:
    from cbir.hashing import HASHERS

    if args.json:
        print_json(list(HASHERS.names()))
    else:
        print("\n".join(HASHERS.names()))
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    with _open(args) as col:
        info = col.info()
    if args.json:
        print_json(info)
        return EXIT_OK
    for key, value in info.items():
        if key == "error_reasons":
            for reason, n in value:
                print(f"  {n:>6} x {reason}")
        else:
            print(f"{key:>16}: {value}")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from cbir.indexing import remove_paths

    with _open(args) as col, col.writer_lock():
        n, missing = remove_paths(col, args.paths)
    if not args.json:
        for p in missing:
            print(f"cbir: {p} is not in the collection", file=sys.stderr)
    if args.json:
        print_json({"removed": n, "not_in_collection": missing})
    else:
        print(f"removed {n} image(s)")
    return EXIT_OK if n or not args.paths else EXIT_PARTIAL


def cmd_verify(args: argparse.Namespace) -> int:
    from cbir.verify import verify

    with _open(args) as col:
        if args.recount:
            with col.writer_lock():
                col.catalog.recount()
        result = verify(col, check_files=args.files, quick=args.quick)
    if args.json:
        print_json(result)
    else:
        print("consistent" if result["consistent"] else "INCONSISTENT")
        for p in result["problems"]:
            print(f"  problem: {p}")
        for n in result["notes"]:
            print(f"  note: {n}")
    return EXIT_OK if result["consistent"] else EXIT_ERROR


def cmd_eval_folder(args: argparse.Namespace) -> int:
    from cbir.eval.folder import evaluate_folder

    result = evaluate_folder(Path(args.dataset), extractor=args.extractor,
                             collection_dir=args.collection, ks=args.ks,
                             progress=show_progress(args), warn=lambda m: print(m, file=sys.stderr))
    if args.json:
        print_json(result)
    else:
        print(result["table"])
    return EXIT_OK


def cmd_eval_words(args: argparse.Namespace) -> int:
    from cbir.eval.words import evaluate_words

    result = evaluate_words(Path(args.dataset), extractor=args.extractor, collection_dir=args.collection,
                            ks=args.ks, progress=show_progress(args),
                            warn=lambda m: print(m, file=sys.stderr))
    if args.json:
        print_json(result)
    else:
        print(result["table"])
    return EXIT_OK


def cmd_eval_hashing(args: argparse.Namespace) -> int:
    from cbir.eval.hashing_benchmark import run, write_json

    log = log_for(args)
    dataset = args.dataset or ("folder" if args.root else None)
    if dataset is None:
        raise InvalidRequest("name a benchmark dataset, or give a folder-per-class dataset with "
                             "--root DIR")
    if dataset == "folder" and args.root is None:
        raise InvalidRequest("the folder dataset needs --root DIR (one sub-folder per class)")
    extra = {"extractor": args.extractor} if args.extractor else {}
    runs = []
    for seed in args.seed:
        if len(args.seed) > 1:
            log(f"-- seed {seed}")
        runs.append(run(dataset, args.root or Path(".data") / dataset,
                        methods=[m for m in args.methods.split(",") if m], bits=args.bits,
                        vectors=args.vectors, seed=seed,
                        relevance=[r for r in args.relevance.split(",") if r], plot=args.plot,
                        log=log, progress=show_progress(args), collection_dir=args.collection,
                        auto_weak=args.weak, **extra))
    result = runs[0]
    if len(runs) > 1:
        from cbir.eval.hashing_seeds import format_seed_tables, summarize_seeds

        summary = summarize_seeds([r["results"] for r in runs], args.metric, args.baseline)
        result = {"dataset": runs[0]["dataset"], "protocol": runs[0]["protocol"],
                  "seeds": args.seed, "metric": args.metric, "baseline": args.baseline,
                  "summary": summary, "runs": runs,
                  "tables": {k: format_seed_tables(summary, k, args.metric, args.baseline)
                             for k in summary}}
    if args.out:
        write_json(result, args.out)
    if args.json:
        print_json(result)
    else:
        print(f"{result['dataset']}: {result['protocol']}")
        for kind, table in result["tables"].items():
            print(f"\n== relevance: {kind} ==\n{table}")
        for r in runs:
            if r.get("auto"):
                print(f"\nauto (seed {r['seed']}) chose {r['auto']['reason']}")
    return EXIT_OK


def cmd_duplicates(args: argparse.Namespace) -> int:
    from cbir.duplicates import find_duplicates

    if args.csv and args.json:
        raise InvalidRequest("--csv and --json are two output formats: give one of them")
    with _open(args) as col:
        groups = find_duplicates(col, args.threshold, near=not args.exact_only,
                                 filters=filters_from_args(args))
    if args.json:
        print_json({"threshold": args.threshold, "groups": [g.as_dict() for g in groups]})
        return EXIT_OK
    if args.csv:
        import csv

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["group", "path", "keeper", "similarity"])
        for g in groups:
            for m in g.members:
                w.writerow([g.number, m.path, int(m.keeper), f"{m.similarity:.4f}"])
        return EXIT_OK
    if not groups:
        print("no duplicates found", file=sys.stderr)
        return EXIT_OK
    for g in groups:
        print(f"group {g.number} ({g.kind}, {len(g.members)} images)")
        for m in g.members:
            res = f"{m.width}x{m.height}" if m.width and m.height else "?"
            print(f"  {'keep' if m.keeper else '    '}  {m.similarity:>6.3f}  {res:>11}  "
                  f"{m.size:>10}  {m.path}")
    n = sum(len(g.members) - 1 for g in groups)
    print(f"{len(groups)} group(s); {n} image(s) besides the suggested keepers (nothing deleted)",
          file=sys.stderr)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from cbir.demo import run_demo

    return run_demo(Path(args.dir), progress=show_progress(args))


# -- parser -------------------------------------------------------------------------------
class _VersionAction(argparse.Action):
    """``--version``: the package, the default extractor and the on-disk format versions."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(version_text() + "\n")
        parser.exit(EXIT_OK)


def version_text() -> str:
    from cbir.extract import DEFAULT_EXTRACTOR
    from cbir.store.catalog import SCHEMA_VERSION
    from cbir.store.manifest import FORMAT_VERSION

    return (f"cbir {__version__}\n"
            f"default extractor: {DEFAULT_EXTRACTOR}\n"
            f"catalog schema: {SCHEMA_VERSION}\n"
            f"manifest format: {FORMAT_VERSION}")


#: the options every command accepts, before or after its name: (flags, add_argument keywords,
#: the default the top-level parser gives)
GLOBAL_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any], Any]] = [
    (("-c", "--collection"),
     {"type": _collection_path, "metavar": "DIR",
      "help": "collection directory (default: $CBIR_COLLECTION or the per-user data dir)"}, None),
    (("--json",), {"action": "store_true",
                   "help": "results as JSON on stdout; errors as JSON on stderr"}, False),
    (("-q", "--quiet"), {"action": "store_true",
                         "help": "no progress bars and no progress messages"}, False),
    (("--progress",), {"action": "store_true",
                       "help": "show progress bars even when stderr is not a terminal"}, False),
    (("--debug",), {"action": "store_true", "help": "show tracebacks"}, False),
]


def _dest(flags: tuple[str, ...]) -> str:
    return flags[-1].lstrip("-").replace("-", "_")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    seen: dict[int, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                seen.setdefault(id(child), child)
    return list(seen.values())


def _add_global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The global options on ``parser``. The top-level parser holds the defaults; a sub-command's
    copy defaults to SUPPRESS, so it only sets what was given after the sub-command name. A
    sub-command's own option of the same name wins (``serve --collection``); its own option
    with the same destination loses its default, for the same reason."""
    dests = {_dest(flags) for flags, _, _ in GLOBAL_OPTIONS}
    if not top:
        for action in parser._actions:
            if action.dest in dests:
                action.default = argparse.SUPPRESS
    group = parser.add_argument_group("global options (also before the command)" if not top
                                      else "global options (also after the command)")
    for flags, kw, default in GLOBAL_OPTIONS:
        free = [f for f in flags if f not in parser._option_string_actions]
        if free:
            group.add_argument(*free, **kw, dest=_dest(flags),
                               default=default if top else argparse.SUPPRESS)
    for child in _subparsers(parser):
        _add_global_options(child, top=False)


def build_parser() -> argparse.ArgumentParser:
    from cbir.extract import DEFAULT_EXTRACTOR, EXTRACTORS
    from cbir.index import INDEXES

    index_types = ["auto", *INDEXES.names()]
    p = _Parser(prog="cbir", description="Content-based image retrieval: index a folder, "
                "search by example image.",
                epilog="Shell completion: eval \"$(register-python-argcomplete cbir)\"")
    p.add_argument("--version", action=_VersionAction,
                   help="show the version, the default extractor and the store's format versions")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND",
                           help="one of these; `cbir COMMAND --help` for its options")

    s = sub.add_parser("index", help="build or update the collection from folders or files")
    s.add_argument("paths", nargs="+", help="folders or image files")
    s.add_argument("--extractor", choices=EXTRACTORS.names(), default=None,
                   help=f"feature extractor for a new collection (default {DEFAULT_EXTRACTOR})")
    s.add_argument("--index-type", choices=index_types, default=None,
                   help="vector index (default auto: chosen by collection size)")
    s.add_argument("--milvus-uri", default=None, metavar="URI",
                   help="Milvus server for --index-type milvus, e.g. http://host:19530 (kept in the "
                        "collection; default $CBIR_MILVUS_URI; token from $CBIR_MILVUS_TOKEN)")
    s.add_argument("--regions", action="store_true",
                   help="also store 7x7 region features (needed by IDEA hashing; ~125 KB/image)")
    s.add_argument("--retry-errors", action="store_true",
                   help="try again files that failed before even if unchanged")
    s.add_argument("--batch-size", type=positive_int, default=32, help="images per inference batch")
    s.add_argument("--commit-every", type=positive_int, default=256,
                   help="images per committed transaction (a crash loses at most one)")
    s.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="where files are read, decoded and embedded: this process (default) or a "
                        "Ray cluster (needs the 'ray' extra; the catalog stays here)")
    s.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join, e.g. auto or ray://HOST:10001 (default: start a "
                        "local Ray for this run)")
    s.add_argument("--ray-actors", type=positive_int, default=None, metavar="N",
                   help="decode + embed actors (default: one per CPU of the Ray cluster)")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("search", help="find the images most like a query image")
    s.add_argument("images", nargs="*", help="query image file(s); several are averaged")
    s.add_argument("--like", nargs="+", metavar="PATH",
                   help="query by image(s) already in the collection (no re-extraction)")
    s.add_argument("-k", type=positive_int, default=10, help="number of results (default 10)")
    s.add_argument("--min-similarity", type=_fraction, default=0.0,
                   help="drop hits with similarity 1/(1+distance) below this")
    s.add_argument("--min-match", type=float, default=0.0, metavar="PCT",
                   help="drop hits whose match (0-100: 0 = as alike as two random photos of the "
                        "collection, 100 = the same image) is below this")
    s.add_argument("--index-type", choices=index_types[1:], default=None,
                   help="search with this index instead of the collection's")
    s.add_argument("--nprobe", type=positive_int, default=None,
                   help="partitions/lists to scan (ivf, class-partitioned): more = better recall")
    s.add_argument("--include-self", action="store_true",
                   help="with --like, keep the query images themselves in the results")
    s.add_argument("--codes", metavar="NAME", default=None,
                   help="search by learned binary codes (see `cbir hash list`) in Hamming space")
    s.add_argument("--rerank", type=_rerank_arg, default=None, metavar="qe|kr|N",
                   help="qe: alpha query expansion, kr: k-reciprocal re-ranking of the first "
                        "--rerank-depth hits (see docs/reranking.md); with --codes, N: re-score "
                        "the N nearest codes by their float features")
    s.add_argument("--rerank-depth", type=positive_int, default=100, metavar="N",
                   help="with --rerank qe|kr: how many first hits are re-ordered (default 100)")
    add_filter_options(s)
    add_filenames_option(s)
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("hash", help="learned binary hash codes: train, list, delete")
    hsub = s.add_subparsers(dest="hash_command", required=True, parser_class=_Parser,
                            metavar="COMMAND", help="what to do with hash codes")
    h = hsub.add_parser("train", help="learn codes from the collection's features (and tags)")
    h.add_argument("--method", required=True, help="lsh, pcah, itq, sh, wdht, ws-dsh, "
                   "ws-hashnet, idea, idea-l, idea-a (see `cbir hash methods`), or auto: ITQ "
                   "when the tags carry less than the features (e.g. machine tags only), else "
                   "the --weak method")
    h.add_argument("--weak", default="wdht", metavar="METHOD",
                   help="with --method auto: the weakly supervised method it may choose "
                        "(default wdht)")
    h.add_argument("--bits", type=positive_int, default=32, help="code length, 8 to 128")
    h.add_argument("--name", default=None, help="name of the codes (default METHOD-BITS)")
    h.add_argument("--tags", choices=["auto", "user", "machine"], default="auto",
                   help="weak supervision: user tags, the ImageNet labels, or user tags where "
                        "an image has them and ImageNet labels elsewhere (default)")
    h.add_argument("--vectors", choices=["word2vec", "glove", "minilm"], default="glove",
                   help="tag vectors: packaged GloVe 6B-50d (default), packaged MiniLM, or "
                        "skip-gram word2vec trained on the collection's own tags (needs many tags)")
    h.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    h.set_defaults(func=cmd_hash_train)
    h = hsub.add_parser("list", help="the codes trained in this collection")
    h.set_defaults(func=cmd_hash_list)
    h = hsub.add_parser("delete", help="delete trained codes")
    h.add_argument("name", help="the codes' name (see `cbir hash list`)")
    h.set_defaults(func=cmd_hash_delete)
    h = hsub.add_parser("methods", help="the hashing methods available")
    h.set_defaults(func=cmd_hash_methods)

    s = sub.add_parser("info", help="collection statistics")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("remove", help="drop images (files or whole folders) from the collection")
    s.add_argument("paths", nargs="+", help="indexed image files, or folders: all images under them")
    s.set_defaults(func=cmd_remove)

    s = sub.add_parser("verify", help="check the collection's consistency")
    s.add_argument("--files", action="store_true",
                   help="also check that indexed files still exist unchanged on disk")
    s.add_argument("--quick", action="store_true",
                   help="seconds at 1M images: counts, index against catalog ids, codes, models; "
                        "skips SQLite's page check and reading every stored feature (the full "
                        "check takes about a minute per million images)")
    s.add_argument("--recount", action="store_true",
                   help="first rewrite the catalog's running counts (images, errors, duplicates) "
                        "from its rows")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("eval", help="evaluate retrieval on a labelled dataset")
    esub = s.add_subparsers(dest="protocol", required=True, parser_class=_Parser, metavar="PROTOCOL",
                            help="the evaluation protocol")
    e = esub.add_parser("folder", help="folder-per-class dataset: every image queries all others")
    e.add_argument("dataset", help="folder with one sub-folder per class (e.g. Wang/Corel-1K)")
    e.add_argument("--extractor", choices=EXTRACTORS.names(), default=DEFAULT_EXTRACTOR,
                   help=f"feature extractor (default {DEFAULT_EXTRACTOR})")
    e.add_argument("--ks", type=lambda t: [positive_int(x) for x in t.split(",")],
                   default=[1, 5, 10, 20], help="cut-offs, comma-separated (default 1,5,10,20)")
    e.set_defaults(func=cmd_eval_folder)
    e = esub.add_parser("words", help="folder-per-class dataset searched by its class names "
                        "(built-in concepts, no training): P@K and AP per class")
    e.add_argument("dataset", help="folder with one sub-folder per class; the folder names are the queries")
    e.add_argument("--extractor", choices=EXTRACTORS.names(), default=DEFAULT_EXTRACTOR,
                   help="feature extractor (built-in concepts need efficientnet-lite0's classes)")
    e.add_argument("--ks", type=lambda t: [positive_int(x) for x in t.split(",")],
                   default=[10, 20], help="cut-offs, comma-separated (default 10,20)")
    e.set_defaults(func=cmd_eval_words)

    for module in COMMAND_MODULES:
        import importlib

        importlib.import_module(f"cbir.commands.{module}").register(sub, _Parser)

    e = esub.add_parser("hashing", help="the papers' hashing tables (mAP@K, P@N, P within "
                        "radius 2, PR curves) on a benchmark dataset")
    e.add_argument("dataset", nargs="?", default=None,
                   choices=["corel5k", "cifar10", "wang", "mirflickr25k", "nuswide", "folder"],
                   help="a benchmark; omit it (or say folder) to evaluate any folder-per-class "
                        "dataset given by --root, held out like Wang (machine tags as the weak "
                        "supervision, the folder as the class)")
    e.add_argument("--root", type=Path, default=None,
                   help="the extracted dataset (default .data/DATASET; see README: Evaluation), "
                        "or any folder with one sub-folder of images per class")
    e.add_argument("--extractor", choices=EXTRACTORS.names(), default=None,
                   help="feature extractor (default efficientnet-lite0)")
    e.add_argument("--methods", default="lsh,pcah,itq,sh,wdht,idea,idea-l,idea-a",
                   help="comma-separated hashing methods (see `cbir hash methods`), and auto "
                        "(what `cbir hash train --method auto` would train)")
    e.add_argument("--weak", default="wdht", metavar="METHOD",
                   help="the weakly supervised method auto may choose (default wdht)")
    e.add_argument("--bits", type=lambda t: [positive_int(x) for x in t.split(",")],
                   default=[12, 16, 24, 32, 48, 64], help="code lengths, comma-separated")
    e.add_argument("--vectors", choices=["word2vec", "glove", "minilm"], default="glove",
                   help="tag vectors (default glove; word2vec on a few thousand short tag lists "
                        "puts nearly every pair above the similarity threshold)")
    e.add_argument("--relevance", default="labels",
                   help="labels (the class/category), and for Corel-5K also keywords; comma-separated")
    e.add_argument("--seed", type=_seeds, default=[0],
                   help="seed, or comma-separated seeds: then also mean ± sd per cell and the "
                        "paired difference of each method to --baseline")
    e.add_argument("--metric", default="mAP@5000", help="the metric summarised over seeds")
    e.add_argument("--baseline", default="itq", help="the method others are paired with over seeds")
    e.add_argument("--out", type=Path, default=None, help="write all metrics as JSON here")
    e.add_argument("--plot", type=Path, default=None, help="PR curves PNG at the largest bit length")
    e.set_defaults(func=cmd_eval_hashing)

    from cbir.commands.concepts import add_eval_parser

    add_eval_parser(esub)

    from cbir.duplicates import DEFAULT_THRESHOLD

    s = sub.add_parser("duplicates", help="exact and near-duplicate images, grouped, with a "
                       "suggested keeper (deletes nothing)")
    s.add_argument("--threshold", type=_cosine, default=DEFAULT_THRESHOLD,
                   help="near duplicates: cosine similarity of the L2-normalised features at or "
                        f"above this (default {DEFAULT_THRESHOLD}, from bench/bench_duplicates.py; "
                        "higher finds fewer)")
    s.add_argument("--exact-only", action="store_true", help="only byte-identical files (sha256)")
    s.add_argument("--csv", action="store_true", help="CSV: group, path, keeper (1/0), similarity")
    add_filter_options(s)
    s.set_defaults(func=cmd_duplicates)

    s = sub.add_parser("demo", help="index scikit-image's sample photos and run a search")
    s.add_argument("--dir", default=".demo", help="where to put the photos and the collection")
    s.set_defaults(func=cmd_demo)

    _add_global_options(p, top=True)
    _add_completers(p)
    return p


def _add_completers(parser: argparse.ArgumentParser) -> None:
    """Folder completion for -c/--collection (used only when argcomplete is installed)."""
    try:
        from argcomplete.completers import DirectoriesCompleter
    except ImportError:
        return
    for action in parser._actions:
        if "--collection" in action.option_strings or "-c" in action.option_strings:
            action.completer = DirectoriesCompleter()  # type: ignore[attr-defined]
    for child in _subparsers(parser):
        _add_completers(child)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning for the CLI: one line, without the source line Python adds."""
    print(f"cbir: warning: {_one_line(str(message))}", file=file or sys.stderr)


def _route_warnings(args: argparse.Namespace) -> None:
    """Inside ``warnings.catch_warnings()``: a warning prints as one line (with --debug, as
    Python prints it); under --quiet/--json, Pillow's (decompression bomb, corrupt EXIF...)
    are dropped: every file they concern is reported as indexed or skipped anyway."""
    if not getattr(args, "debug", False):
        warnings.showwarning = _show_warning
    if getattr(args, "quiet", False) or getattr(args, "json", False):
        warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")


def main(argv: list[str] | None = None) -> int:
    global _json_errors
    argv = sys.argv[1:] if argv is None else list(argv)
    _json_errors = "--json" in (argv[:argv.index("--")] if "--" in argv else argv)
    parser = build_parser()
    try:
        import argcomplete
    except ImportError:
        pass
    else:
        argcomplete.autocomplete(parser)  # returns at once unless the shell asks for completions
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        _route_warnings(args)
        return _run(args)


def _fail(args: argparse.Namespace, message: str, kind: str, code: int = EXIT_ERROR,
          prefix: str = "cbir: error: ") -> int:
    """One line on stderr: text, or with --json ``{"error": ..., "type": ...}``."""
    if getattr(args, "json", False):
        print(_error_json(_one_line(message), kind), file=sys.stderr)
    else:
        print(f"{prefix}{_one_line(message)}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except CbirError as e:
        if args.debug:
            raise
        return _fail(args, str(e), type(e).__name__)
    except KeyboardInterrupt:
        return _fail(args, "interrupted (committed work is kept; run the same command to resume)",
                     "KeyboardInterrupt", 130, prefix="cbir: ")
    except BrokenPipeError:
        return EXIT_OK
    except sqlite3.DatabaseError as e:  # a catalog damaged beyond what opening it checks
        if args.debug:
            raise
        return _fail(args, f"the collection's catalog cannot be read ({_one_line(str(e))}); "
                     "check it with `cbir verify`", "CatalogError")
    except OSError as e:  # a file or folder the command needs: the OS says what is wrong
        if args.debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        return _fail(args, f"{e.strerror or e}{where}", type(e).__name__)
    except MemoryError:
        if args.debug:
            raise
        return _fail(args, "not enough memory for this command", "MemoryError")
    except Exception as e:  # noqa: BLE001 — one line, not a traceback, unless --debug
        if args.debug:
            raise
        return _fail(args, f"{type(e).__name__}: {e} (rerun with --debug for details)", "InternalError",
                     prefix="cbir: internal error: ")


if __name__ == "__main__":
    sys.exit(main())
