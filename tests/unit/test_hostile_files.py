"""Files that change under the indexer: links, FIFOs, devices and growth between walk and read.

The race is made deterministic by swapping the files right after the walk (``plan``) and
before the pipeline reads them. Each test would hang, read ``/etc/passwd`` or read
``/dev/zero`` without the descriptor checks of cbir.io.saferead.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from badfiles import make_good_images
from cbir import indexing
from cbir.collection import Collection
from cbir.errors import InvalidImage
from cbir.io import saferead
from cbir.io.saferead import FileRefused, open_file, read_file
from cbir.io.tags import read_tags

pytestmark = pytest.mark.timeout(60)  # a regression here is a hang: fail instead


# -- saferead on its own -------------------------------------------------------------------------
def test_read_file_refuses_link_fifo_device_and_size(tmp_path: Path) -> None:
    f = tmp_path / "a.jpg"
    f.write_bytes(b"x" * 100)
    assert read_file(f, max_bytes=100) == b"x" * 100
    with pytest.raises(FileRefused, match="more than the limit 99"):
        read_file(f, max_bytes=99)
    link = tmp_path / "link.jpg"
    link.symlink_to("/etc/passwd")
    with pytest.raises(FileRefused, match="symbolic link"):
        read_file(link, max_bytes=10**6)
    # a link the user typed is followed, but only to a regular file
    assert read_file(link, max_bytes=10**6, follow_symlinks=True) == Path("/etc/passwd").read_bytes()
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(FileRefused, match="named pipe"):
        read_file(fifo, max_bytes=10**6)  # would block forever in open() without O_NONBLOCK
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    with pytest.raises(FileRefused, match="device"):
        read_file(zero, max_bytes=10**6, follow_symlinks=True)  # would read forever


def test_read_file_checks_identity_and_roots(tmp_path: Path) -> None:
    a, b = tmp_path / "in" / "a.jpg", tmp_path / "b.jpg"
    a.parent.mkdir()
    a.write_bytes(b"aaa")
    b.write_bytes(b"bbb")
    st = a.stat()
    os.replace(b, a)  # another file now at the same path
    with pytest.raises(FileRefused, match="replaced"):
        read_file(a, max_bytes=100, identity=(st.st_dev, st.st_ino))
    assert read_file(a, max_bytes=100, roots=[tmp_path / "in"]) == b"bbb"
    with pytest.raises(FileRefused, match="outside"):
        read_file(a, max_bytes=100, roots=[tmp_path / "elsewhere"])
    # a sub-folder swapped for a link to outside the root is caught on the descriptor
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.jpg").write_bytes(b"secret")
    (tmp_path / "in" / "sub").symlink_to(outside)
    with pytest.raises(FileRefused, match="outside"):
        read_file(tmp_path / "in" / "sub" / "a.jpg", max_bytes=100, roots=[tmp_path / "in"])


def test_file_growing_past_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "grow.jpg"
    f.write_bytes(b"x" * 10)
    real_read = os.read

    def growing(fd: int, n: int) -> bytes:  # the file grows after the fstat size check
        with open(f, "ab") as g:
            g.write(b"y" * 50)
        return real_read(fd, n)

    monkeypatch.setattr(saferead.os, "read", growing)
    with pytest.raises(FileRefused, match="grew past the limit of 20"):
        read_file(f, max_bytes=20)


def test_open_file_does_not_open_a_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(saferead.os, "open", lambda p, *a: opened.append(p) or real_open(p, *a))
    with pytest.raises(InvalidImage), open_file("/dev/null", max_bytes=10):
        pass
    assert opened == []  # refused from lstat: opening some devices has side effects


def test_tag_sidecar_link_and_fifo_are_not_read(tmp_path: Path) -> None:
    img = make_good_images(tmp_path, 1)[0]
    side = img.with_name(img.name + ".txt")
    side.symlink_to("/etc/passwd")
    assert read_tags(img) == []  # not the lines of /etc/passwd as "tags"
    side.unlink()
    os.mkfifo(side)
    assert read_tags(img) == []  # and no hang


# -- indexing: files swapped between the walk and the read ---------------------------------------
def _index_with_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap) -> tuple[dict, Collection]:
    photos = tmp_path / "photos"
    paths = make_good_images(photos, 6)
    real_plan = indexing.plan

    def plan_then_swap(*a, **kw):
        out = real_plan(*a, **kw)
        swap(paths)  # the walk has seen regular files; now they change
        return out

    monkeypatch.setattr(indexing, "plan", plan_then_swap)
    col = Collection.create_or_open(tmp_path / "coll", "colorhist")
    with col.writer_lock():
        rep = indexing.index_paths(col, [photos], progress=False, max_bytes=10_000)
    return {p: r for p, r in rep.problems}, col


def test_index_file_turned_into_fifo_is_skipped_not_hung(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    def swap(paths: list[Path]) -> None:
        paths[0].unlink()
        os.mkfifo(paths[0])

    problems, col = _index_with_swap(tmp_path, monkeypatch, swap)
    with col:
        assert "named pipe" in problems[str(paths_of(col, tmp_path)[0])]
        assert col.catalog.count("ok") == 5


def test_index_file_turned_into_link_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def swap(paths: list[Path]) -> None:
        paths[0].unlink()
        paths[0].symlink_to("/dev/zero")
        paths[1].unlink()
        paths[1].symlink_to("/etc/passwd")
        paths[2].write_bytes(paths[2].read_bytes() * 100)  # grew past max_bytes after the walk

    problems, col = _index_with_swap(tmp_path, monkeypatch, swap)
    p = paths_of(col, tmp_path)
    with col:
        assert "symbolic link" in problems[str(p[0])]
        assert "symbolic link" in problems[str(p[1])]
        assert "more than the limit 10000" in problems[str(p[2])]
        assert col.catalog.count("ok") == 3


def test_index_file_replaced_by_another_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def swap(paths: list[Path]) -> None:
        tmp = paths[0].with_name("tmp.bin")
        tmp.write_bytes(paths[1].read_bytes())
        os.replace(tmp, paths[0])

    problems, col = _index_with_swap(tmp_path, monkeypatch, swap)
    with col:
        assert "replaced" in problems[str(paths_of(col, tmp_path)[0])]


def test_duplicates_within_one_run_are_counted(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    paths = make_good_images(photos, 3)
    for i in range(4):  # four copies of the first image, all new in the same run
        (photos / f"copy{i}{paths[0].suffix}").write_bytes(paths[0].read_bytes())
    with Collection.create_or_open(tmp_path / "coll", "colorhist") as col, col.writer_lock():
        rep = indexing.index_paths(col, [photos], progress=False)
        assert rep.duplicates == 4 == col.catalog.duplicate_groups()


def test_stop_ends_indexing_within_a_batch(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    make_good_images(photos, 40)
    stop = threading.Event()
    seen: list[int] = []

    def on_progress(done: int, total: int) -> None:
        seen.append(done)
        if done == 3:
            stop.set()

    with Collection.create_or_open(tmp_path / "coll", "colorhist") as col, col.writer_lock():
        rep = indexing.index_paths(col, [photos], progress=False, on_progress=on_progress, stop=stop,
                                   commit_every=1000, batch_size=2)
        # stopped right after the 3rd result, not at the next commit (which was 1000 away)
        assert rep.processed == 3 and col.catalog.count("ok") == 3


def test_indexed_roots_are_recorded(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    make_good_images(photos, 2)
    with Collection.create_or_open(tmp_path / "coll", "colorhist") as col, col.writer_lock():
        indexing.index_paths(col, [photos], progress=False)
        assert indexing.indexed_roots(col.catalog) == [os.path.realpath(photos)]


def paths_of(col: Collection, tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "photos").iterdir())
