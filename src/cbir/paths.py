"""Where things live by default: the collection folder and its models folder.

A bottom-layer module (standard library only; ``platformdirs`` is imported on first use) so
that extractors, the store and the training code can all agree on these paths without the
bottom layer importing the feature layers above it. ``cbir.collection`` and
``cbir.train.registry`` re-export these names.
"""

from __future__ import annotations

import os
from pathlib import Path

#: ``<collection>/models``: trained classifiers and fine-tuned backbones
MODELS_DIRNAME = "models"


def default_collection_dir() -> Path:
    """``$CBIR_COLLECTION``, else the per-user data dir (e.g. ~/.local/share/cbir/default)."""
    env = os.environ.get("CBIR_COLLECTION")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("cbir")) / "default"


def default_models_dir(collection_dir: Path | None = None) -> Path:
    """``<collection>/models`` (the collection defaults as for every command)."""
    return Path(collection_dir or default_collection_dir()) / MODELS_DIRNAME
