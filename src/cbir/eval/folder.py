"""``cbir eval folder``: a folder-per-class dataset, every image querying all the others.

The dataset is indexed into its own collection (cached, so a second run only re-reads
the stored features), then P@K and mAP are computed on the stored vectors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbir.collection import Collection
from cbir.eval.protocols import format_table, leave_one_out_retrieval
from cbir.extract import DEFAULT_EXTRACTOR
from cbir.indexing import index_paths
from cbir.io.datasets import read_class_folders


def eval_collection_dir(dataset: Path, extractor: str) -> Path:
    """Where the dataset's own collection is cached (per dataset path and extractor)."""
    import platformdirs

    base = Path(os.environ.get("CBIR_CACHE_DIR") or platformdirs.user_cache_dir("cbir"))
    key = hashlib.sha1(f"{dataset.resolve()}|{extractor}".encode()).hexdigest()[:16]
    return base / "eval" / f"{dataset.resolve().name}-{extractor}-{key}"


def load_labelled_features(dataset: Path, *, extractor: str = DEFAULT_EXTRACTOR,
                           collection_dir: Path | None = None, progress: bool = True
                           ) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Index ``dataset`` (incrementally) and return (features (n,d), labels (n,), classes, failed)."""
    feats, labels, classes, problems = _load(dataset, extractor=extractor,
                                             collection_dir=collection_dir, progress=progress)
    return feats, labels, classes, len(problems)


def _load(dataset: Path, *, extractor: str, collection_dir: Path | None, progress: bool
          ) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, str]]]:
    """Like load_labelled_features, with (path, reason) of each dataset image left out."""
    paths, labels, classes = read_class_folders(dataset)
    cdir = collection_dir or eval_collection_dir(dataset, extractor)
    with Collection.create_or_open(cdir, extractor) as col:
        with col.writer_lock(wait=True):
            report = index_paths(col, [dataset], progress=progress)
        ids, feats = col.catalog.features()
        by_path, errors = {}, {}
        for r in col.catalog.iter_records():
            if r.status == "ok":
                by_path[r.path] = r.id
            else:  # failed in an earlier run too: the cached collection remembers why
                errors[r.path] = r.error or r.status
    reasons = {**errors, **{os.path.abspath(p): r for p, r in report.problems}}
    row_of = {int(i): n for n, i in enumerate(ids)}
    keep, keep_labels, problems = [], [], []
    for p, lab in zip(paths, labels, strict=True):
        path = os.path.abspath(p)
        rid = by_path.get(path)
        if rid is not None:
            keep.append(row_of[rid])
            keep_labels.append(lab)
        else:
            problems.append((str(p), reasons.get(path, "not indexed")))
    return feats[keep], np.asarray(keep_labels, dtype=np.int64), classes, problems


def folder_warnings(problems: list[tuple[str, str]], labels: np.ndarray, classes: list[str],
                    *, limit: int = 20) -> list[str]:
    """One line per unreadable image (up to ``limit``) and per class left with one image."""
    lines = [f"warning: skipped {p}: {r}" for p, r in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"warning: ... and {len(problems) - limit} more unreadable images (see --json)")
    if problems:
        lines.append(f"warning: {len(problems)} image(s) could not be read and are left out "
                     "of the evaluation")
    counts = _counts(labels, classes)
    for c in np.flatnonzero(counts == 1):
        lines.append(f"warning: class {classes[c]!r} has a single image: as a query it has no "
                     "relevant image to find, so it scores 0 and lowers P@k and mAP")
    for c in np.flatnonzero(counts == 0):
        lines.append(f"warning: class {classes[c]!r} has no readable image: left out")
    return lines


def _counts(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    return np.bincount(labels, minlength=len(classes))


def evaluate_folder(dataset: Path, *, extractor: str = DEFAULT_EXTRACTOR,
                    collection_dir: Path | None = None, ks: Sequence[int] = (1, 5, 10, 20),
                    progress: bool = True, warn: Callable[[str], None] | None = None
                    ) -> dict[str, Any]:
    """P@k and mAP of ``dataset``; ``warn`` gets each warning line (unreadable images, classes
    of one image) before the evaluation runs; the result lists them too."""
    feats, labels, classes, problems = _load(
        dataset, extractor=extractor, collection_dir=collection_dir, progress=progress)
    warnings = folder_warnings(problems, labels, classes)
    for line in warnings if warn else ():
        warn(line)
    metrics = leave_one_out_retrieval(feats, labels, ks=tuple(ks))
    name = dataset.resolve().name
    if name == "dataset":  # Wang's tar wraps its classes in dataset/: name it by its parent
        name = dataset.resolve().parent.name + "/" + name
    row = {"dataset": name, "extractor": extractor, "images": len(labels),
           "classes": len(classes), **{k: v if isinstance(v, int) else round(float(v), 4)
              for k, v in metrics.items()}}
    columns = list(row)
    return {**row, "failed": len(problems),
            "failed_files": [{"path": p, "reason": r} for p, r in problems],
            "single_image_classes": [classes[c] for c in np.flatnonzero(_counts(labels, classes) == 1)],
            "warnings": warnings, "table": format_table([row], columns)}
