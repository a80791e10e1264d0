"""File discovery for indexing: a deterministic, loop-safe walk that never raises.

Every problem a user can fix (broken link, link loop, permissions, bad file name, empty or
huge file) is reported as a :class:`SkippedFile` with a one-line reason; files that are
simply not images (other extensions, sidecars) are ignored silently.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cbir.io.formats import EXTENSIONS as _PLUGIN_EXTENSIONS
from cbir.io.saferead import os_reason as os_error_reason

# Extensions (lower case, with the dot) of formats Pillow opens without extra plugins, and
# HEIC/HEIF and camera RAW (cbir.io.formats: pillow-heif, rawpy; without them such a file
# is reported as skipped with the package to install).
IMAGE_EXTENSIONS: frozenset[str] = _PLUGIN_EXTENSIONS | frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo",
    ".png", ".apng", ".gif", ".webp", ".avif",
    ".bmp", ".dib", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".pfm",
    ".ico", ".jp2", ".j2k", ".jpx", ".jpf", ".j2c",
    ".tga", ".icb", ".vda", ".vst", ".pcx", ".sgi", ".rgb", ".bw",
    ".dds", ".qoi", ".psd", ".icns", ".xbm",
})  # fmt: skip

DEFAULT_MAX_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FoundFile:
    """An image file to index: its path (as walked, links not resolved), size and mtime.

    ident: ``(st_dev, st_ino)`` of the file the walk saw; target: its real path when
    ``path`` is a symbolic link that the walk followed. Readers open ``target or path``
    without following links and check ``ident`` (cbir.io.saferead), so a file swapped for
    a link, a FIFO or a device after the walk is refused, not read.
    """

    path: Path
    size: int
    mtime_ns: int
    ident: tuple[int, int] | None = field(default=None, compare=False)
    target: Path | None = field(default=None, compare=False)

    @property
    def read_path(self) -> Path:
        return self.target or self.path


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file or directory that could not be indexed, with a human reason.

    path is printable text: a non-UTF-8 name shows its bad bytes as ``\\xff`` escapes.
    """

    path: str
    reason: str


def iter_files(
    root: Path | str,
    *,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    follow_symlinks: bool = True,
    include_hidden: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[FoundFile | SkippedFile]:
    """Yield every image file under ``root`` in sorted (per-directory name) order.

    extensions: lower-case suffixes with the dot, matched case-insensitively.
    follow_symlinks: follow links to files, and to directories outside the tree (each
    directory is walked once, so link cycles terminate; links to directories inside the tree
    are reported, not followed: those are walked at their real path). When False, symbolic
    links are ignored.
    include_hidden: also walk names starting with '.' (hidden files and directories).
    max_bytes: larger files are skipped. A file given as root is checked by itself.
    """
    exts = frozenset(e.lower() for e in extensions)
    root_s = os.fspath(root)
    try:
        st = os.stat(root_s)
    except OSError as e:
        yield SkippedFile(_printable(root_s), os_error_reason(e, root_s))
        return
    if not stat.S_ISDIR(st.st_mode):
        if not stat.S_ISREG(st.st_mode):
            yield SkippedFile(_printable(root_s), "not a regular file")
        elif os.path.splitext(root_s)[1].lower() not in exts:
            yield SkippedFile(_printable(root_s), "not an image file extension")
        else:
            yield _check_file(root_s, os.path.basename(root_s), st, max_bytes,
                              is_link=os.path.islink(root_s))
        return

    root_real = os.path.realpath(root_s)
    visited = {(st.st_dev, st.st_ino)}
    stack: list[Iterator[os.DirEntry[str]]] = []
    open_dirs: list[str] = [root_real]  # real paths of the directories being walked
    listing = _list_dir(root_s)
    if isinstance(listing, SkippedFile):
        yield listing
        return
    stack.append(iter(listing))
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            open_dirs.pop()
            continue
        name = entry.name
        if name.startswith(".") and not include_hidden:
            continue
        try:
            is_link = entry.is_symlink()
            if is_link and not follow_symlinks:
                continue
            est = entry.stat(follow_symlinks=follow_symlinks)
        except OSError as e:
            if _looks_relevant(name, exts):
                yield SkippedFile(_printable(entry.path), _stat_reason(e, entry.path))
            continue
        if stat.S_ISDIR(est.st_mode):
            if not _utf8_ok(name):
                yield SkippedFile(_printable(entry.path), "directory name is not valid UTF-8")
                continue
            if is_link:
                inside = _link_inside(entry.path, root_real, open_dirs)
                if inside:
                    yield SkippedFile(_printable(entry.path), inside)
                    continue
            key = (est.st_dev, est.st_ino)
            if key in visited:
                yield SkippedFile(_printable(entry.path),
                                  "directory already walked (symbolic link cycle or duplicate "
                                  "link)")
                continue
            visited.add(key)
            listing = _list_dir(entry.path)
            if isinstance(listing, SkippedFile):
                yield listing
            else:
                stack.append(iter(listing))
                open_dirs.append(os.path.realpath(entry.path))
        elif os.path.splitext(name)[1].lower() in exts:
            if stat.S_ISREG(est.st_mode):
                yield _check_file(entry.path, name, est, max_bytes, is_link=is_link)
            else:
                yield SkippedFile(_printable(entry.path),
                                  "not a regular file (device, pipe or socket)")


def _list_dir(path: str) -> list[os.DirEntry[str]] | SkippedFile:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        reason = os_error_reason(e, path)
        if e.errno in (errno.EACCES, errno.EPERM):
            reason = "permission denied: cannot list the directory"
        return SkippedFile(_printable(path), reason)


def _check_file(
    path: str, name: str, st: os.stat_result, max_bytes: int, *, is_link: bool = False
) -> FoundFile | SkippedFile:
    if not _utf8_ok(name):
        return SkippedFile(_printable(path), "file name is not valid UTF-8")
    if st.st_size == 0:
        return SkippedFile(_printable(path), "empty file")
    if st.st_size > max_bytes:
        reason = f"file is {st.st_size} bytes, more than the limit {max_bytes}"
        return SkippedFile(_printable(path), reason)
    # opening is the only reliable readability test (ACLs, root, read-only mounts...);
    # O_NONBLOCK: the entry may have become a FIFO since the stat, and must not block us
    target = os.path.realpath(path) if is_link else None
    try:
        fd = os.open(target or path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NOCTTY", 0) | (getattr(os, "O_NOFOLLOW", 0) if target else 0))
    except OSError as e:
        return SkippedFile(_printable(path), os_error_reason(e, path))
    os.close(fd)
    return FoundFile(Path(path), st.st_size, st.st_mtime_ns, ident=(st.st_dev, st.st_ino),
                     target=Path(target) if target else None)


def _link_inside(path: str, root_real: str, open_dirs: list[str]) -> str | None:
    """Why a link to a directory inside the walked tree is skipped (None if it is outside).

    Such a directory is walked at its real path, so following the link would only repeat
    it, or loop forever when it points to a parent.
    """
    target = os.path.realpath(path)
    if target in open_dirs:
        return "symbolic link cycle: the link points to a parent directory"
    if target != root_real and not target.startswith(root_real.rstrip(os.sep) + os.sep):
        return None
    return "link to a directory inside the tree (walked at its real path)"


def _stat_reason(e: OSError, path: str) -> str:
    if e.errno == errno.ENOENT and os.path.islink(path):
        return "broken symbolic link (its target does not exist)"
    return os_error_reason(e, path)


def _looks_relevant(name: str, exts: frozenset[str]) -> bool:
    """Whether a name we cannot stat is worth reporting: an image name or maybe a directory."""
    suffix = os.path.splitext(name)[1].lower()
    return suffix in exts or suffix == ""


def _utf8_ok(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(path: str) -> str:
    """The path as printable text: undecodable bytes become backslash escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
