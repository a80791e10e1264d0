"""Consistency check of a collection: catalog, features, index and (optionally) files.

Two depths (bench/bench_cold.py has the figures at 10k-1M images):

* ``quick``: the running counts against the status index, the index file (memory-mapped,
  so it costs no read of its vectors) against the catalog's ids, hash codes, models and
  leftovers. Seconds at 1M images; what ``cbir verify --quick`` runs.
* full (the default): all of that, plus SQLite's page-by-page integrity check, the
  duplicate count, and every stored feature decoded and checked (finite, unit length).
  It reads the whole catalog: about a minute per million images.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cbir.collection import Collection
from cbir.index import load_index

#: folders a quick check does not walk for leftover temporary files (may hold 1M thumbnails)
_BULK_DIRS = {"thumbnails", "uploads"}


def verify(collection: Collection, *, check_files: bool = False, quick: bool = False) -> dict[str, Any]:
    """Return {"consistent": bool, "problems": [...], "notes": [...], "quick": bool}.

    Problems break the store (corrupt SQLite, bad feature rows, an index that claims to
    be current but is not). Notes are normal states: an index behind the catalog is
    brought up to date on the next search; leftover temp files of a killed writer are
    harmless.
    """
    cat = collection.catalog
    problems = list(cat.integrity_problems(quick=quick))
    notes: list[str] = []
    generation = cat.generation()
    state = collection.index_state()
    if state is None:
        notes.append("no index saved yet; it is built on the first search")
    else:
        path = collection.index_dir / f"{state.kind}.faiss"
        try:
            idx = load_index(path, mmap=True)
        except Exception as e:  # noqa: BLE001
            problems.append(f"index {path.name} cannot be loaded ({e}); "
                            "delete it and it is rebuilt from the catalog")
        else:
            want, have = cat.ok_ids(), idx.ids()
            missing = np.setdiff1d(want, have, assume_unique=True)
            extra = np.setdiff1d(have, want, assume_unique=True)
            # rows with a damaged feature are left out of the index on purpose (the feature
            # check names them, searches skip them): only check the few ids that differ
            damaged = set(cat.damaged_among(missing.tolist(), warn=False)) if missing.size else set()
            unexplained = [i for i in missing.tolist() if i not in damaged]
            if state.generation == generation:
                if extra.size or unexplained:
                    problems.append(
                        f"index {state.kind} claims to be current but holds {len(have)} ids "
                        f"where the catalog has {len(want) - len(damaged)}"
                    )
            else:
                notes.append(
                    f"index {state.kind} is behind the catalog ({len(unexplained)} "
                    f"to add, {extra.size} to drop); it is synced on the next search"
                )
    # learned hash codes against their hasher, and the collection's trained models
    from cbir.codes import verify_codes
    from cbir.train.registry import ModelRegistry, default_models_dir

    for more_problems, more_notes in (verify_codes(collection),
                                      ModelRegistry(default_models_dir(collection.directory)).verify()):
        problems += more_problems
        notes += more_notes
    leftovers = _temp_files(collection, skip=_BULK_DIRS if quick else set())
    if leftovers:
        notes.append(f"{len(leftovers)} temporary file(s) left by an interrupted writer "
                     "(harmless): " + ", ".join(leftovers[:5]))
    if check_files:
        changed = missing_files = 0
        for rec in cat.iter_records():
            try:
                st = os.stat(rec.path)
            except OSError:
                missing_files += 1
                continue
            if st.st_size != rec.size or st.st_mtime_ns != rec.mtime_ns:
                changed += 1
        if missing_files or changed:
            notes.append(f"{missing_files} indexed file(s) are gone and {changed} changed on disk; "
                         "run `cbir index` on their folders to update")
    if quick:
        notes.append("quick check: SQLite's page check, the duplicate count and the stored "
                     "features were not read (run `cbir verify` without --quick for those)")
    return {"consistent": not problems, "problems": problems, "notes": notes,
            "images": cat.count("ok"), "generation": generation, "quick": quick}


def _temp_files(collection: Collection, skip: set[str]) -> list[str]:
    """Names of ``*.tmp`` files under the collection, not descending into ``skip`` folders."""
    out: list[str] = []
    for root, dirs, files in os.walk(collection.directory):
        if root == str(collection.directory):
            dirs[:] = [d for d in dirs if d not in skip]
        out += [f for f in files if f.endswith(".tmp")]
    return out
