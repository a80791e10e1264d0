"""Safe image decoding (PROVISIONAL minimal version; being hardened)."""

from __future__ import annotations

import io as _io
from pathlib import Path

from PIL import Image

from cbir.errors import InvalidImage

DEFAULT_MAX_PIXELS = 100_000_000


def load_image(source: str | Path | bytes, *, target_size: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) to an RGB PIL image.

    target_size: the short side the caller will resize to; JPEGs may be decoded at a
    reduced scale (draft mode) that is still at least this large.
    Raises InvalidImage(path, reason) for every failure.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        fp = _io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with fp, Image.open(fp) as im:
            if target_size:
                im.draft("RGB", (target_size, target_size))
            return im.convert("RGB")
    except Exception as e:  # noqa: BLE001
        raise InvalidImage(label, str(e)) from e
