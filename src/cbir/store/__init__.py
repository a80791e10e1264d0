"""Collection storage: manifest, SQLite catalog with float16 features, writer lock."""

from cbir.store.catalog import Catalog, ImageRecord
from cbir.store.lock import WriterLock
from cbir.store.manifest import Manifest, read_manifest, write_manifest

__all__ = ["Catalog", "ImageRecord", "Manifest", "WriterLock", "read_manifest", "write_manifest"]
