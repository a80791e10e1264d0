"""Helpers shared by ``cbir.cli`` and the command modules: argument types, output, opening.

They live here, not in ``cbir.cli``, so that command modules never import the CLI entry point.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cbir.errors import InvalidRequest

EXIT_OK = 0


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def print_paths(paths: list[str]) -> int:
    """``-f/--filenames``: one path per line, nothing else (for ``xargs``, ``feh`` ...)."""
    for p in paths:
        sys.stdout.write(p + "\n")
    return EXIT_OK


def output_mode(args: argparse.Namespace) -> str:
    """"json", "filenames" or "table" for a command that prints hits."""
    if getattr(args, "filenames", False):
        if args.json:
            raise InvalidRequest("--filenames prints paths only and --json prints JSON: give one of them")
        return "filenames"
    return "json" if args.json else "table"


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars: on a terminal or with --progress, never with -q."""
    if getattr(args, "quiet", False):
        return False
    if getattr(args, "progress", False):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def log_for(args: argparse.Namespace) -> Any:
    """Messages about the work going on (on stderr), unless -q."""
    return (lambda m: None) if getattr(args, "quiet", False) else (lambda m: print(m, file=sys.stderr))


def add_filenames_option(s: argparse.ArgumentParser) -> None:
    """``-f/--filenames`` (as rclip has) for a command that prints hits."""
    s.add_argument("-f", "--filenames", action="store_true",
                   help="print only the hits' paths, one per line (for piping)")


def install_partitioning() -> None:
    """Let trained models partition collections (`cbir models use`): cbir.collection cannot
    import the training code, so the top layer installs it before opening a collection."""
    import cbir.train.apply  # noqa: F401  (installs the partition provider on import)


def open_collection(directory: Path | str | None) -> Any:
    """``Collection.open`` with the trained-model partition provider installed."""
    install_partitioning()
    from cbir.collection import Collection

    return Collection.open(directory)  # type: ignore[arg-type]


def create_or_open_collection(directory: Path | str | None, extractor: str | None) -> Any:
    """``Collection.create_or_open`` with the trained-model partition provider installed."""
    install_partitioning()
    from cbir.collection import Collection

    return Collection.create_or_open(directory, extractor)  # type: ignore[arg-type]


def add_filter_options(s: argparse.ArgumentParser) -> None:
    """``--folder --after --before --camera --min-width --min-height --tag --geotagged``."""
    g = s.add_argument_group("filters (every one narrows the results)")
    g.add_argument("--folder", action="append", default=[], metavar="DIR",
                   help="only images under this folder (repeat for several)")
    g.add_argument("--after", metavar="DATE", default=None,
                   help="only photos taken on or after this date (EXIF): 2021, 2021-07 or 2021-07-04")
    g.add_argument("--before", metavar="DATE", default=None,
                   help="only photos taken before this date (EXIF)")
    g.add_argument("--camera", metavar="TEXT", default=None,
                   help="only photos whose camera make or model contains this (any case)")
    g.add_argument("--min-width", type=int, default=None, metavar="PX",
                   help="only images at least this wide")
    g.add_argument("--min-height", type=int, default=None, metavar="PX",
                   help="only images at least this tall")
    g.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="only images with this tag (repeat: all of them)")
    g.add_argument("--geotagged", action="store_true", default=None,
                   help="only photos with GPS coordinates in their EXIF")


def filters_from_args(args: argparse.Namespace) -> Any:
    """The parsed filter options as a :class:`~cbir.store.photometa.Filters` (None if none given)."""
    from cbir.store.photometa import Filters

    f = Filters(folder=args.folder, after=args.after, before=args.before, camera=args.camera,
                min_width=args.min_width, min_height=args.min_height, tags=args.tag,
                gps=True if args.geotagged else None)
    return f if f.active else None


def filter_notes(col: Any, f: Any) -> list[str]:
    """What a filtered search should tell: the filters, and images a metadata filter cannot see."""
    if f is None:
        return []
    from cbir.store.photometa import without_metadata

    notes = [f"filters: {f.describe()}"]
    if f.needs_metadata:
        n = without_metadata(col.catalog)
        if n:
            notes.append(f"{n} image(s) have no photo metadata yet and are left out by date/camera/GPS "
                         "filters; `cbir index FOLDER` reads it")
    return notes
