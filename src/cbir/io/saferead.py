"""Read a user's file once, safely: never follow a swapped-in link, never block, never overrun.

Everything cbir reads from a photo folder (images while indexing, tag sidecars, images and
thumbnails the service sends) goes through :func:`open_file`. A walk that checked a file
earlier proves nothing at read time: the file may since have become a symbolic link to
``/etc/passwd``, a FIFO (whose ``open``/``read`` would block forever) or a link to
``/dev/zero`` (endless). So the checks happen on the open descriptor itself:

* ``O_NOFOLLOW`` on the last component (unless the caller explicitly follows links, as for
  a query path typed by the user) and ``O_NONBLOCK``, so opening a FIFO or device never
  waits; the entry is ``lstat``-ed first, so a device is not even opened;
* ``fstat`` on the descriptor: a regular file, within the size limit, and (when the caller
  knows it) the same ``(st_dev, st_ino)`` the walk saw;
* the size limit is enforced again while reading (a file that grows is cut off and refused);
* with ``roots`` (real paths, resolved when they were chosen), the descriptor's real path
  (``/proc/self/fd``) must lie under one of them, which also catches a parent directory
  swapped for a link after the check.

Failures raise :class:`cbir.errors.InvalidImage` with a one-line reason.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from cbir.errors import InvalidImage

_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0) | os.O_NONBLOCK
CHUNK = 1 << 20


class FileRefused(InvalidImage):
    """The file is not one cbir may read (link, device, outside its root, too large...)."""


def os_reason(e: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """A short human reason for an OSError met while opening or listing ``path``."""
    code = e.errno
    if code == errno.ENOENT:
        if path is not None and os.path.islink(path):
            return "broken symbolic link (its target does not exist)"
        return "file not found"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.EISDIR:
        return "is a directory, not an image file"
    if code == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if code == errno.ENAMETOOLONG:
        return "file name is too long to open"
    if code == errno.ENOTDIR:
        return "a component of the path is not a directory"
    return f"cannot read the file ({e.strerror or e})"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory, not an image file"
    if stat.S_ISFIFO(mode):
        return "not a regular file (a named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "not a regular file (a device)"
    if stat.S_ISSOCK(mode):
        return "not a regular file (a socket)"
    return "not a regular file (device, pipe or socket)"


def fd_path(fd: int) -> str | None:
    """The real path of an open descriptor (Linux ``/proc/self/fd``); None where unknown."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def under(path: str, roots: Iterable[str | os.PathLike[str]]) -> bool:
    """Whether ``path`` (already real) is one of ``roots`` or inside one.

    The roots are taken as given, not resolved again: a caller passes the real paths it
    resolved when the roots were chosen, so a root later swapped for a link leads nowhere.
    """
    for root in roots:
        r = os.fspath(root)
        if path == r or path.startswith(r.rstrip(os.sep) + os.sep):
            return True
    return False


@contextlib.contextmanager
def open_file(path: str | os.PathLike[str], *, max_bytes: int, follow_symlinks: bool = False,
              identity: tuple[int, int] | None = None,
              roots: Iterable[str | os.PathLike[str]] | None = None,
              label: str | None = None) -> Iterator[tuple[int, os.stat_result]]:
    """Open ``path`` for reading with every check above; yield ``(fd, fstat)``, close after.

    max_bytes: refuse larger files. follow_symlinks: follow a link in the last component
    (only for paths a user typed). identity: the ``(st_dev, st_ino)`` the caller saw earlier;
    a different file now at ``path`` is refused. roots: the real path must lie under one.
    """
    p = os.fspath(path)
    name = label or p
    try:
        lst = os.stat(p, follow_symlinks=follow_symlinks)
    except OSError as e:
        raise InvalidImage(name, os_reason(e, p)) from None
    if stat.S_ISLNK(lst.st_mode):
        raise FileRefused(name, "is a symbolic link (not followed when reading indexed files)")
    if not stat.S_ISREG(lst.st_mode):
        raise FileRefused(name, _kind(lst.st_mode))
    flags = _FLAGS | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(p, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_symlinks:
            raise FileRefused(name, "is a symbolic link (not followed when reading indexed files)") \
                from None
        raise InvalidImage(name, os_reason(e, p)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(name, _kind(st.st_mode))
        if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino) or (
                identity is not None and (st.st_dev, st.st_ino) != tuple(identity)):
            raise FileRefused(name, "the file was replaced by another one while being read; "
                                    "index again")
        if st.st_size > max_bytes:
            raise FileRefused(name, f"file is {st.st_size} bytes, more than the limit {max_bytes}")
        if roots is not None:
            real = fd_path(fd) or os.path.realpath(p)
            if not under(real, roots):
                raise FileRefused(name, "the file is outside the folders this collection indexes")
        # a regular file never blocks; drop O_NONBLOCK so reads behave normally anyway
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        yield fd, st
    finally:
        os.close(fd)


def read_fd(fd: int, max_bytes: int, label: str) -> bytes:
    """Read to the end of ``fd``, refusing more than ``max_bytes`` (a file that grew)."""
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, min(CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise FileRefused(label, f"file grew past the limit of {max_bytes} bytes while being read")
    return b"".join(parts)


def read_file(path: str | Path, *, max_bytes: int, follow_symlinks: bool = False,
              identity: tuple[int, int] | None = None,
              roots: Iterable[str | os.PathLike[str]] | None = None, label: str | None = None) -> bytes:
    """The whole file's bytes, read once through :func:`open_file` (same checks)."""
    name = label or os.fspath(path)
    try:
        with open_file(path, max_bytes=max_bytes, follow_symlinks=follow_symlinks, identity=identity,
                       roots=roots, label=name) as (fd, _):
            return read_fd(fd, max_bytes, name)
    except OSError as e:  # a read error (EIO, a file removed on a network share...)
        raise InvalidImage(name, os_reason(e, path)) from None
