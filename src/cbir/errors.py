"""One small error hierarchy. Messages say what went wrong and how to fix it.

The library raises these; the CLI prints one line and exits non-zero; the service
(later) maps them to 4xx JSON bodies.
"""

from __future__ import annotations


class CbirError(Exception):
    """Base class of every error cbir raises on purpose."""

    exit_code = 2


class InvalidImage(CbirError):
    """A file could not be decoded as an image (corrupt, truncated, too large, not an image...)."""

    def __init__(self, path: object, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class InvalidRequest(CbirError):
    """A bad argument or request: the message says which value and what is allowed."""


class UnknownComponent(CbirError):
    """A registry was asked for a name it does not have."""


class IndexMismatch(CbirError):
    """Vectors or a collection made by a different extractor, dimension or format version."""


class CollectionError(CbirError):
    """The collection directory is missing, locked, or inconsistent."""


class BackendUnavailable(CbirError):
    """An optional dependency is missing; the message names the extra to install."""


class CbirWarning(UserWarning):
    """Something the user should know that did not stop the work (the CLI prints one line)."""


class DamagedFeatureWarning(CbirWarning):
    """Catalog rows whose stored feature is missing or of the wrong size were skipped."""
