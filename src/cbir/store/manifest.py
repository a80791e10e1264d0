"""The collection's self-describing ``manifest.json``.

It records the format version and the extractor (name, dim, preprocessing) that made
the stored vectors, so a collection is never searched or extended with vectors from
another extractor, and a newer format is refused instead of misread.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cbir import __version__
from cbir.atomic import atomic_write_json
from cbir.errors import CollectionError, IndexMismatch

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class Manifest:
    extractor: str
    dim: int
    preprocessing: dict[str, Any]
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    cbir_version: str = __version__

    def check_extractor(self, name: str, dim: int, preprocessing: dict[str, Any]) -> None:
        """Refuse an extractor that differs from the one that made this collection."""
        if name != self.extractor or dim != self.dim:
            raise IndexMismatch(
                f"this collection was made with extractor {self.extractor!r} (dim {self.dim}), "
                f"not {name!r} (dim {dim}); use another --collection or re-create it"
            )
        if _jsonable(preprocessing) != _jsonable(self.preprocessing):
            raise IndexMismatch(
                f"extractor {name!r} now preprocesses images differently from when this "
                "collection was made; its vectors would not be comparable. Re-create the collection"
            )


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` so that readers see the old or the new file, never half of one."""
    atomic_write_json(path, obj)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    write_json_atomic(Path(directory) / MANIFEST_NAME, asdict(manifest))


def read_manifest(directory: Path) -> Manifest:
    """Read and validate the manifest; raise CollectionError with what to do."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CollectionError(
            f"{directory} is not a cbir collection (no {MANIFEST_NAME}); run `cbir index FOLDER` first"
        ) from None
    except (OSError, ValueError) as e:
        raise CollectionError(f"cannot read {path}: {e}") from None
    version = raw.get("format_version")
    if not isinstance(version, int):
        raise CollectionError(f"{path} has no valid format_version")
    if version > FORMAT_VERSION:
        raise CollectionError(
            f"collection {directory} has format version {version}, newer than this cbir "
            f"understands ({FORMAT_VERSION}); upgrade cbir"
        )
    try:
        return Manifest(
            extractor=raw["extractor"],
            dim=int(raw["dim"]),
            preprocessing=raw.get("preprocessing", {}),
            format_version=version,
            created=raw.get("created", ""),
            cbir_version=raw.get("cbir_version", ""),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CollectionError(f"{path} is malformed: {e}") from None
