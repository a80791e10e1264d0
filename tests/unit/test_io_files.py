"""Tests of cbir.io.files.iter_files: order, filters, and every reported problem."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from PIL import Image

from badfiles import IS_ROOT, make_bad_files, make_good_images
from cbir.io import files as files_mod
from cbir.io.files import IMAGE_EXTENSIONS, FoundFile, SkippedFile, iter_files


def split(
    items: list[FoundFile | SkippedFile],
) -> tuple[list[FoundFile], dict[str, str]]:
    found = [i for i in items if isinstance(i, FoundFile)]
    skipped = {Path(i.path).name: i.reason for i in items if isinstance(i, SkippedFile)}
    return found, skipped


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, dict[str, Path], list[Path]]:
    root = tmp_path / "root"
    bad = make_bad_files(root)
    good = make_good_images(root / "sub", 3)
    return root, bad, good


def test_good_and_bad_files_reported(tree: tuple[Path, dict[str, Path], list[Path]]) -> None:
    root, bad, good = tree
    items = list(iter_files(root))
    found, skipped = split(items)
    names = {f.path.name for f in found}
    assert {p.name for p in good} <= names
    assert bad["long_name"].name in names  # 250-character names are fine
    assert "inside.png" in names
    assert sum(f.path.name == "inside.png" for f in found) == 1  # cycle walked once
    # decoding problems are load_image's job: the walker still lists these files
    assert {"corrupt.jpg", "truncated.jpg", "notes.jpg", "huge.png"} <= names
    assert skipped["empty.png"] == "empty file"
    assert "broken symbolic link" in skipped["broken.jpg"]
    assert "symbolic link loop" in skipped["loop_a.jpg"]
    assert "symbolic link loop" in skipped["loop_b.jpg"]
    assert "symbolic link cycle: the link points to a parent" in skipped["back"]
    if "non_utf8" in bad:
        assert skipped["bad\\xff.jpg"] == "file name is not valid UTF-8"
        assert all(s.path.isprintable() for s in items if isinstance(s, SkippedFile))
    if IS_ROOT:
        assert "unreadable.jpg" in names
    else:
        assert skipped["unreadable.jpg"] == "permission denied"
    for f in found:
        st = f.path.stat()
        assert (f.size, f.mtime_ns) == (st.st_size, st.st_mtime_ns) and f.size > 0


def test_order_is_sorted_and_deterministic(tmp_path: Path) -> None:
    for d in ("b", "a", "c/z", "c/y"):
        make_good_images(tmp_path / d, 2)
    first = [f.path for f in iter_files(tmp_path) if isinstance(f, FoundFile)]
    rel = [p.relative_to(tmp_path).parts for p in first]
    assert rel == sorted(rel) and len(rel) == 8
    assert first == [f.path for f in iter_files(tmp_path) if isinstance(f, FoundFile)]


def test_extensions_case_insensitive_and_sidecars_ignored(tmp_path: Path) -> None:
    for name in ("A.JPG", "b.Png", "c.TIFF", "d.webp"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    for name in ("A.JPG.txt", "b.json", "readme.md"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    found = {f.path.name for f in iter_files(tmp_path)}
    assert found == {"A.JPG", "b.Png", "c.TIFF", "d.webp"}
    assert ".txt" not in IMAGE_EXTENSIONS and ".json" not in IMAGE_EXTENSIONS
    only_png = {f.path.name for f in iter_files(tmp_path, extensions=frozenset({".PNG"}))}
    assert only_png == {"b.Png"}


def test_hidden_entries_skipped_by_default(tmp_path: Path) -> None:
    make_good_images(tmp_path / ".cache", 1)
    make_good_images(tmp_path / "vis", 1)
    assert [f.path.parent.name for f in iter_files(tmp_path)] == ["vis"]
    assert len(list(iter_files(tmp_path, include_hidden=True))) == 2


def test_single_file_root(tmp_path: Path) -> None:
    (p,) = make_good_images(tmp_path, 1)
    (item,) = iter_files(p)
    assert isinstance(item, FoundFile) and item.path == p
    txt = tmp_path / "x.txt"
    txt.write_text("x", encoding="utf-8")
    (item,) = iter_files(txt)
    assert isinstance(item, SkippedFile) and "extension" in item.reason
    (item,) = iter_files(tmp_path / "missing")
    assert isinstance(item, SkippedFile) and item.reason == "file not found"


def test_max_bytes(tmp_path: Path) -> None:
    (p,) = make_good_images(tmp_path, 1)
    (item,) = iter_files(tmp_path, max_bytes=100)
    size = p.stat().st_size
    assert item == SkippedFile(str(p), f"file is {size} bytes, more than the limit 100")


def test_no_follow_symlinks_ignores_links(tmp_path: Path) -> None:
    (p,) = make_good_images(tmp_path / "real", 1)
    (tmp_path / "link.jpg").symlink_to(p)
    (tmp_path / "linkdir").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere")
    items = list(iter_files(tmp_path, follow_symlinks=False))
    assert items == [FoundFile(p, p.stat().st_size, p.stat().st_mtime_ns)]
    followed, _ = split(list(iter_files(tmp_path)))
    assert {f.path.relative_to(tmp_path).as_posix() for f in followed} == {
        "link.jpg", "real/" + p.name,  # linkdir duplicates real/: walked once only
    }


def test_mutual_directory_links_terminate(tmp_path: Path) -> None:
    make_good_images(tmp_path / "a", 1)
    make_good_images(tmp_path / "b", 1)
    (tmp_path / "a" / "to_b").symlink_to(tmp_path / "b", target_is_directory=True)
    (tmp_path / "b" / "to_a").symlink_to(tmp_path / "a", target_is_directory=True)
    found, skipped = split(list(iter_files(tmp_path)))
    assert len(found) == 2
    assert skipped == {n: "link to a directory inside the tree (walked at its real path)"
                       for n in ("to_a", "to_b")}
    # walked from inside a/, b/ is outside the tree: followed once, then the cycle stops
    found, skipped = split(list(iter_files(tmp_path / "a")))
    assert [f.path.relative_to(tmp_path).as_posix() for f in found] == [
        "a/good_000.jpg", "a/to_b/good_000.jpg"]
    assert skipped == {"to_a": "symbolic link cycle: the link points to a parent directory"}


def test_outside_directory_linked_twice_walked_once(tmp_path: Path) -> None:
    make_good_images(tmp_path / "outside", 1)
    root = tmp_path / "root"
    root.mkdir()
    for name in ("l1", "l2"):
        (root / name).symlink_to(tmp_path / "outside", target_is_directory=True)
    found, skipped = split(list(iter_files(root)))
    assert [f.path.relative_to(root).as_posix() for f in found] == ["l1/good_000.jpg"]
    assert "already walked" in skipped["l2"]


@pytest.mark.skipif(IS_ROOT, reason="root can list chmod 000 directories")
def test_unreadable_directory_real(tmp_path: Path) -> None:
    make_good_images(tmp_path / "locked", 1)
    (tmp_path / "locked").chmod(0)
    try:
        items = list(iter_files(tmp_path))
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert items == [SkippedFile(str(tmp_path / "locked"),
                                 "permission denied: cannot list the directory")]


def test_unreadable_directory_and_file_simulated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_good_images(tmp_path / "locked", 1)
    (ok,) = make_good_images(tmp_path / "open", 1)
    secret = tmp_path / "open" / "secret.png"
    secret.write_bytes(ok.read_bytes())
    real_scandir, real_open = os.scandir, os.open

    def scandir(path: str) -> object:
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    def fake_open(path: str, flags: int, *args: int) -> int:
        if Path(path).name == "secret.png":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(files_mod.os, "scandir", scandir)
    monkeypatch.setattr(files_mod.os, "open", fake_open)
    found, skipped = split(list(iter_files(tmp_path)))
    assert [f.path for f in found] == [ok]
    assert skipped == {"locked": "permission denied: cannot list the directory",
                       "secret.png": "permission denied"}


def test_name_too_long_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (p,) = make_good_images(tmp_path, 1)

    def fake_open(path: str, flags: int, *args: int) -> int:
        raise OSError(errno.ENAMETOOLONG, "File name too long", path)

    monkeypatch.setattr(files_mod.os, "open", fake_open)
    (item,) = iter_files(tmp_path)
    assert item == SkippedFile(str(p), "file name is too long to open")


def test_fifo_with_image_name_is_skipped_not_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    (item,) = iter_files(tmp_path)
    assert isinstance(item, SkippedFile) and "not a regular file" in item.reason
