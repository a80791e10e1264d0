"""API tokens (kept only as SHA-256 hashes, compared in constant time) and path checks.

Tokens are long random strings (``cbir serve --create-token FILE``), so an unsalted hash is
enough: it only has to keep the token itself off disk and out of memory dumps.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from cbir.errors import InvalidRequest

HASH_PREFIX = "sha256:"
MIN_TOKEN_CHARS = 16
TOKEN_ENV = "CBIR_API_TOKEN"


class PathRefused(InvalidRequest):
    """A path outside every allowed root (after resolving ``..`` and symbolic links)."""


def hash_token(token: str) -> str:
    """``sha256:<hex>`` of a token."""
    return HASH_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def parse_token_lines(lines: Iterable[str], source: str = "token file") -> list[str]:
    """Token hashes from lines that hold either ``sha256:<hex>`` or a plain token (hashed here)."""
    hashes: list[str] = []
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(HASH_PREFIX):
            digest = line[len(HASH_PREFIX):].lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise InvalidRequest(f"{source} line {n}: 'sha256:' must be followed by 64 hex digits")
            hashes.append(HASH_PREFIX + digest)
        elif len(line) < MIN_TOKEN_CHARS:
            raise InvalidRequest(f"{source} line {n}: a token needs at least {MIN_TOKEN_CHARS} "
                                 "characters; make one with `cbir serve --create-token FILE`")
        else:
            hashes.append(hash_token(line))
    return hashes


def load_token_hashes(token_file: Path | None = None, env: dict[str, str] | None = None) -> list[str]:
    """Hashes from ``token_file`` and from ``$CBIR_API_TOKEN`` (a plain token)."""
    env = os.environ if env is None else env
    hashes: list[str] = []
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except OSError as e:
            raise InvalidRequest(f"cannot read --token-file {token_file}: {e.strerror or e}") from None
        hashes += parse_token_lines(text.splitlines(), f"token file {token_file}")
        if not hashes:
            raise InvalidRequest(f"token file {token_file} holds no token")
    if env.get(TOKEN_ENV):
        hashes += parse_token_lines([env[TOKEN_ENV]], f"${TOKEN_ENV}")
    return hashes


def token_file_warning(token_file: Path | None) -> str | None:
    """One line to print when ``token_file`` is writable by its group or others (they could add
    their own token) or readable by others (it may hold plain tokens); else None."""
    if token_file is None or os.name != "posix":
        return None
    try:
        mode = Path(token_file).stat().st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o026:  # group-writable, world-writable, world-readable
        return None
    who = []
    if mode & 0o022:
        who.append("writable by " + " and ".join(x for x, bit in (("its group", 0o020), ("others", 0o002))
                                                if mode & bit))
    if mode & 0o004:
        who.append("readable by others")
    return (f"cbir: warning: token file {token_file} is {' and '.join(who)} (mode {mode:03o}); "
            f"run: chmod 600 {token_file}")


def token_matches(presented: str | None, hashes: Iterable[str]) -> bool:
    """Whether ``presented`` hashes to one of ``hashes``; every hash is compared (constant time)."""
    if not presented:
        return False
    digest = hash_token(presented).encode()
    ok = False
    for h in hashes:
        ok |= hmac.compare_digest(digest, h.encode())
    return ok


def write_token_file(path: Path) -> str:
    """Create ``path`` (mode 600) holding the hash of a new token; return the token itself."""
    token = new_token()
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# cbir API token hash; the token itself was printed once when this file was made\n")
        f.write(hash_token(token) + "\n")
    return token


def resolve_under_roots(path: str, roots: list[Path]) -> Path:
    """The real path of ``path`` if it lies in one of ``roots``; else PathRefused.

    Relative paths are taken relative to the first root. ``..`` and symbolic links are
    resolved before the check, so neither can lead outside. Whether the path exists is
    only checked (by the caller) once it is known to be inside, so nothing leaks about
    other folders.
    """
    if not roots:
        raise PathRefused("indexing from the web is disabled: start the server with "
                          "--allow-root DIR to allow folders under DIR")
    if "\x00" in path or not path.strip():
        raise InvalidRequest("give a folder path (non-empty, without NUL characters)")
    if len(path) > 4096:
        raise InvalidRequest("the path is longer than 4096 characters")
    p = Path(path)
    if not p.is_absolute():
        p = roots[0] / p
    try:
        real = Path(os.path.realpath(p))
    except (OSError, ValueError) as e:
        raise InvalidRequest(f"cannot resolve {path[:200]}: {e}") from None
    for root in roots:
        r = os.path.realpath(root)
        if os.path.commonpath([str(real), r]) == r:
            return real
    raise PathRefused(f"{path} is outside the allowed folders; allowed: "
                      + ", ".join(str(r) for r in roots))
