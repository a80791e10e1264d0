"""Photos with EXIF (date taken, camera, GPS) for the filter tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def exif_photo(path: Path, *, seed: int, size: tuple[int, int] = (64, 48), date: str | None = None,
               make: str | None = None, model: str | None = None, gps: bool = False) -> Path:
    """A JPEG of coloured noise; ``date`` as EXIF writes it ("2019:05:01 10:00:00")."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8).repeat(size[1] // 4, 0).repeat(size[0] // 4, 1)
    im = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    if make:
        exif[271] = make
    if model:
        exif[272] = model
    if date:
        exif.get_ifd(0x8769)[36867] = date
    if gps:
        exif.get_ifd(0x8825)[1] = "N"
        exif.get_ifd(0x8825)[2] = (48.0, 51.0, 24.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG", quality=90, exif=exif)
    return path
