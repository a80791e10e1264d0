"""read_class_folders on small folder trees (empty files: nothing is decoded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbir.errors import InvalidRequest
from cbir.io.datasets import read_class_folders


def _touch(root: Path, *rel: str) -> None:
    for r in rel:
        p = root / r
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_class_folders(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "zebra/2.jpg", "zebra/1.JPG", "ant/b.png", "ant/a.jpeg", "ant/notes.txt",
        "ant/.hidden.jpg", "ant/sub/c.jpg", "empty/readme.md", ".git/x.jpg",
    )
    paths, labels, names = read_class_folders(tmp_path)
    assert names == ["ant", "zebra"]  # "empty" has no image; hidden folders skipped
    rel = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert rel == ["ant/a.jpeg", "ant/b.png", "ant/sub/c.jpg", "zebra/1.JPG", "zebra/2.jpg"]
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1])


def test_single_wrapper_folder(tmp_path: Path) -> None:
    # Like wang1k.tar: dataset/<class>/<id>.jpg
    _touch(tmp_path, "dataset/buses/0.jpg", "dataset/africans/1.jpg", "dataset/africans/0.jpg")
    paths, labels, names = read_class_folders(tmp_path)
    assert names == ["africans", "buses"]
    assert [p.name for p in paths] == ["0.jpg", "1.jpg", "0.jpg"]
    np.testing.assert_array_equal(labels, [0, 0, 1])
    assert paths[0] == tmp_path / "dataset" / "africans" / "0.jpg"


def test_fewer_than_two_classes(tmp_path: Path) -> None:
    _touch(tmp_path, "only/1.jpg", "other/readme.txt")
    with pytest.raises(InvalidRequest, match="at least 2"):
        read_class_folders(tmp_path)
    with pytest.raises(InvalidRequest, match="not a directory"):
        read_class_folders(tmp_path / "missing")
    with pytest.raises(InvalidRequest):
        read_class_folders(tmp_path / "only")  # images but no class folders
