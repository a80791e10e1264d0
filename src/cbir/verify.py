"""Consistency check of a collection: catalog, features, index and (optionally) files."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cbir.collection import Collection
from cbir.index import load_index


def verify(collection: Collection, *, check_files: bool = False) -> dict[str, Any]:
    """Return {"consistent": bool, "problems": [...], "notes": [...]}.

    Problems break the store (corrupt SQLite, bad feature rows, an index that claims to
    be current but is not). Notes are normal states: an index behind the catalog is
    brought up to date on the next search; leftover temp files of a killed writer are
    harmless.
    """
    problems = list(collection.catalog.integrity_problems())
    notes: list[str] = []
    generation = collection.catalog.generation()
    state = collection.index_state()
    if state is None:
        notes.append("no index saved yet; it is built on the first search")
    else:
        path = collection.index_dir / f"{state.kind}.faiss"
        try:
            idx = load_index(path)
        except Exception as e:  # noqa: BLE001
            problems.append(f"index {path.name} cannot be loaded ({e}); "
                            "delete it and it is rebuilt from the catalog")
        else:
            # rows with a damaged feature: integrity_problems names them, searches skip them
            damaged = collection.catalog.damaged_feature_ids()
            want = np.setdiff1d(collection.catalog.ok_ids(), damaged)
            have = np.setdiff1d(idx.ids(), damaged)
            if state.generation == generation:
                if not np.array_equal(np.sort(have), want):
                    problems.append(
                        f"index {state.kind} claims to be current but holds {len(have)} ids "
                        f"where the catalog has {len(want)}"
                    )
            else:
                notes.append(
                    f"index {state.kind} is behind the catalog ({len(np.setdiff1d(want, have))} "
                    f"to add, {len(np.setdiff1d(have, want))} to drop); it is synced on the "
                    "next search"
                )
    # learned hash codes against their hasher, and the collection's trained models
    from cbir.codes import verify_codes
    from cbir.train.registry import ModelRegistry, default_models_dir

    for more_problems, more_notes in (verify_codes(collection),
                                      ModelRegistry(default_models_dir(collection.directory)).verify()):
        problems += more_problems
        notes += more_notes
    leftovers = [p.name for p in collection.directory.rglob("*.tmp")]
    if leftovers:
        notes.append(f"{len(leftovers)} temporary file(s) left by an interrupted writer "
                     "(harmless): " + ", ".join(leftovers[:5]))
    if check_files:
        changed = missing = 0
        for rec in collection.catalog.iter_records():
            try:
                st = os.stat(rec.path)
            except OSError:
                missing += 1
                continue
            if st.st_size != rec.size or st.st_mtime_ns != rec.mtime_ns:
                changed += 1
        if missing or changed:
            notes.append(f"{missing} indexed file(s) are gone and {changed} changed on disk; "
                         "run `cbir index` on their folders to update")
    return {"consistent": not problems, "problems": problems, "notes": notes,
            "images": collection.catalog.count("ok"), "generation": generation}
