"""Extract user-supplied zip files without zip bombs, path traversal or links.

Every member name is checked before anything is written: no absolute paths, drive
letters, backslashes, ``..`` parts, links or device files, no duplicates. Sizes are
checked twice: the declared sizes up front (total, count, compression ratio), and the
bytes actually written while streaming (a lying header cannot exceed the limits).

The limits (``ZipLimits``; the service sets ``max_total_bytes`` from its
``max_unzip_bytes`` setting, 2 GiB by default):

- at most 10,000 entries;
- each member unpacks to at most 10 times its compressed size (members under 64 KiB are
  exempt) and to at most 256 MiB;
- the whole archive unpacks to at most 10 times the archive's own size (this also catches
  members that share their compressed data) and to at most ``max_total_bytes``.

Photos hardly compress (JPEG, PNG, WebP: about 1 : 1), so 10 : 1 leaves room for
uncompressed formats such as BMP while a zip bomb (1000 : 1 and more) is refused before a
byte is written.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cbir.errors import InvalidRequest

MiB = 1024 * 1024


class UnsafeArchive(InvalidRequest):
    """The zip is malformed, too big, or names a path outside the target folder."""


@dataclass(frozen=True)
class ZipLimits:
    max_files: int = 10_000
    max_total_bytes: int = 2048 * MiB
    max_file_bytes: int = 256 * MiB
    #: uncompressed / compressed, per member and for the whole archive (images hardly compress)
    max_ratio: float = 10.0
    #: members (and archives) that unpack to at most this many bytes skip the ratio check
    ratio_exempt_bytes: int = 64 * 1024


def _member_parts(name: str) -> tuple[str, ...]:
    if not name or "\x00" in name:
        raise UnsafeArchive("the zip holds an entry with an empty name or a NUL character")
    if "\\" in name:
        raise UnsafeArchive(f"zip entry {name!r} uses backslashes; zip paths must use '/'")
    p = PurePosixPath(name)
    if p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"zip entry {name!r} is an absolute path; entries must be relative")
    parts = tuple(x for x in p.parts if x not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(f"zip entry {name!r} contains '..'; entries must stay inside the archive")
    if not parts:
        raise UnsafeArchive(f"zip entry {name!r} has no file name")
    return parts


def _is_link_or_special(info: zipfile.ZipInfo) -> bool:
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0: the zip tool recorded no Unix file type
    return kind not in (0, stat.S_IFREG, stat.S_IFDIR)


def check_zip(zf: zipfile.ZipFile, limits: ZipLimits = ZipLimits(),
              archive_bytes: int | None = None) -> list[zipfile.ZipInfo]:
    """Validate every member's name, kind and declared size; return the file members.

    ``archive_bytes`` is the zip file's size, for the whole-archive ratio (unknown: the sum of
    the members' compressed sizes).
    """
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise UnsafeArchive(f"the zip has {len(infos)} entries, more than the limit {limits.max_files}")
    seen: set[tuple[str, ...]] = set()
    files: list[zipfile.ZipInfo] = []
    total = 0
    for info in infos:
        parts = _member_parts(info.filename)
        if _is_link_or_special(info):
            raise UnsafeArchive(f"zip entry {info.filename!r} is a link or device file; only plain "
                                "files and folders are accepted")
        if info.flag_bits & 0x1:
            raise UnsafeArchive(f"zip entry {info.filename!r} is encrypted; upload an unencrypted zip")
        key = tuple(x.casefold() for x in parts)
        if key in seen:
            raise UnsafeArchive(f"zip entry {info.filename!r} appears twice")
        seen.add(key)
        if info.is_dir():
            continue
        if info.file_size > limits.max_file_bytes:
            raise UnsafeArchive(f"zip entry {info.filename!r} unpacks to {info.file_size} bytes, "
                                f"more than the per-file limit {limits.max_file_bytes}")
        if info.file_size > limits.ratio_exempt_bytes \
                and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise UnsafeArchive(f"zip entry {info.filename!r} is compressed {info.file_size} : "
                                f"{info.compress_size}, more than {limits.max_ratio:.0f} : 1 "
                                "(a zip bomb?)")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise UnsafeArchive(f"the zip unpacks to more than {limits.max_total_bytes} bytes")
        files.append(info)
    if archive_bytes is None:
        archive_bytes = sum(info.compress_size for info in files)
    if total > limits.ratio_exempt_bytes and total > limits.max_ratio * max(archive_bytes, 1):
        raise UnsafeArchive(f"the zip ({archive_bytes} bytes) unpacks to {total} bytes, more than "
                            f"{limits.max_ratio:.0f} times its size (a zip bomb?)")
    return files


def _size_of(source: str | Path | BinaryIO) -> int | None:
    """The byte size of a zip given by path or as a seekable file; None if unknown."""
    if isinstance(source, (str, Path)):
        try:
            return os.path.getsize(source)
        except OSError:
            return None
    try:
        pos = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(pos)
        return end
    except (OSError, AttributeError, ValueError):
        return None


def safe_extract(source: str | Path | BinaryIO, dest: Path, limits: ZipLimits = ZipLimits()) -> list[Path]:
    """Extract the zip ``source`` into the new or empty folder ``dest``; return the files written.

    On any problem nothing is left behind in ``dest`` and UnsafeArchive says why.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InvalidRequest(f"{dest} is not empty")
    root = os.path.realpath(dest)
    archive_bytes = _size_of(source)
    written: list[Path] = []
    try:
        try:
            zf = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise UnsafeArchive(f"not a readable zip file ({e})") from None
        with zf:
            total = 0
            for info in check_zip(zf, limits, archive_bytes):
                target = Path(root, *_member_parts(info.filename))
                if os.path.commonpath([os.path.realpath(target.parent), root]) != root:
                    raise UnsafeArchive(f"zip entry {info.filename!r} leads outside the target folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                size = 0
                try:
                    with zf.open(info) as src, open(target, "xb") as out:
                        written.append(target)
                        while chunk := src.read(1024 * 1024):
                            size += len(chunk)
                            total += len(chunk)
                            if size > min(info.file_size, limits.max_file_bytes) \
                                    or total > limits.max_total_bytes:
                                raise UnsafeArchive(f"zip entry {info.filename!r} unpacks to more "
                                                    "bytes than its header declares (a zip bomb?)")
                            out.write(chunk)
                except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as e:
                    raise UnsafeArchive(f"zip entry {info.filename!r} is corrupt ({e})") from None
    except BaseException:
        for child in list(dest.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        raise
    return written
