"""Safe zip extraction: traversal, links, bombs, lying headers, limits."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from cbir.service.safezip import UnsafeArchive, ZipLimits, check_zip, safe_extract


def _zip(entries: dict[str, bytes], *, method: int = zipfile.ZIP_DEFLATED) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    buf.seek(0)
    return buf


def test_extracts_class_folders(tmp_path):
    src = _zip({"cats/a.jpg": b"1" * 10, "dogs/b.jpg": b"2" * 10, "dogs/sub/": b""})
    files = safe_extract(src, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == ["cats/a.jpg", "dogs/b.jpg"]
    assert (tmp_path / "out" / "cats" / "a.jpg").read_bytes() == b"1" * 10


@pytest.mark.parametrize("name", [
    "../evil.txt", "cats/../../evil.txt", "/etc/evil.txt", "C:/evil.txt", "cats\\..\\evil.txt", "..",
])
def test_refuses_paths_outside(tmp_path, name):
    src = _zip({"ok.txt": b"fine", name: b"evil"})
    with pytest.raises(UnsafeArchive):
        safe_extract(src, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())  # nothing left behind
    assert not (tmp_path / "evil.txt").exists()


def test_refuses_symlinks(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    buf.seek(0)
    with pytest.raises(UnsafeArchive, match="link"):
        safe_extract(buf, tmp_path / "out")


def test_refuses_a_zip_bomb_by_ratio(tmp_path):
    src = _zip({"bomb.bin": b"\0" * (5 * 1024 * 1024)})
    with pytest.raises(UnsafeArchive, match="zip bomb"):
        safe_extract(src, tmp_path / "out")


def test_refuses_too_much_in_total_or_too_many_files(tmp_path):
    src = _zip({f"f{i}.bin": bytes(range(256)) * 4 for i in range(10)}, method=zipfile.ZIP_STORED)
    with pytest.raises(UnsafeArchive, match="more than"):
        safe_extract(src, tmp_path / "a", ZipLimits(max_total_bytes=5000))
    src.seek(0)
    with pytest.raises(UnsafeArchive, match="entries"):
        safe_extract(src, tmp_path / "b", ZipLimits(max_files=5))


def test_a_header_that_lies_about_the_size_is_caught(tmp_path):
    data = bytes(range(256)) * 400  # 102400 bytes, stored
    raw = _zip({"x.bin": data}, method=zipfile.ZIP_STORED).getvalue()
    # claim 100 bytes in both the local and the central header
    size = len(data).to_bytes(4, "little")
    forged = raw.replace(size + size, (100).to_bytes(4, "little") * 2)
    assert forged != raw
    with pytest.raises(UnsafeArchive):
        safe_extract(io.BytesIO(forged), tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_duplicates_and_garbage(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", b"1")
        zf.writestr("A.txt", b"2")  # the same name on a case-insensitive file system
    buf.seek(0)
    with pytest.raises(UnsafeArchive, match="twice"):
        check_zip(zipfile.ZipFile(buf))
    with pytest.raises(UnsafeArchive, match="not a readable zip"):
        safe_extract(io.BytesIO(b"PK\x03\x04 not really"), tmp_path / "g")


def test_target_must_be_empty(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(Exception, match="not empty"):
        safe_extract(_zip({"a.txt": b"1"}), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").exists()


def test_path_helper_is_posix(tmp_path: Path):
    assert safe_extract(_zip({"./a/./b.txt": b"1"}), tmp_path / "o")[0].name == "b.txt"
