"""Labelled dataset layouts on disk (for evaluation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbir.errors import InvalidRequest
from cbir.io.files import IMAGE_EXTENSIONS

__all__ = ["IMAGE_EXTENSIONS", "read_class_folders"]


def _subdirs(path: Path) -> list[Path]:
    """Visible sub-directories of ``path``, sorted by name."""
    return sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` (hidden entries skipped), sorted by relative path."""
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def read_class_folders(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Read a folder-per-class dataset: ``root/<class>/<image>``.

    A single wrapper folder is accepted too: if ``root`` has exactly one sub-directory and
    that one has sub-directories of its own (``root/dataset/<class>/...``), the classes are
    read from it. Images are files with an extension in IMAGE_EXTENSIONS (any case), found
    recursively inside each class folder; hidden files and folders are skipped; class
    folders with no image are ignored. Classes are sorted by name, images by relative path.

    Returns (paths: list of n Paths, labels: (n,) int64 index into class names,
    class_names: list[str]). Raises InvalidRequest if root is not a directory or fewer
    than 2 classes with images are found.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidRequest(f"dataset root {root} is not a directory")
    base = root
    top = _subdirs(root)
    if len(top) == 1 and _subdirs(top[0]):
        base = top[0]

    paths: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    for folder in _subdirs(base):
        images = _images_under(folder)
        if not images:
            continue
        paths.extend(images)
        labels.extend([len(names)] * len(images))
        names.append(folder.name)

    if len(names) < 2:
        raise InvalidRequest(
            f"{root}: found {len(names)} class folder(s) with images; a class-folder dataset "
            "needs at least 2 (expected layout root/<class>/<image>, e.g. "
            f"root/cats/001.jpg; image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return paths, np.asarray(labels, dtype=np.int64), names
