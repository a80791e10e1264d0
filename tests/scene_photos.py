"""Synthetic tagged photos for concept-search tests: colour bands a colour histogram can see."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def colour_photo(path: Path, colours: list[str], rng: np.random.Generator) -> None:
    """Grey noise with one horizontal band per concept colour."""
    a = rng.integers(90, 160, size=(48, 48, 3)).astype(np.uint8)
    for i, c in enumerate(colours):
        lo = i * 48 // len(colours)
        band = slice(lo, lo + 48 // len(colours) - 4)
        a[band] = np.clip(np.array(COLOURS[c]) + rng.integers(-20, 20, size=(1, 48, 3)), 0, 255)
    Image.fromarray(a).save(path)


def make_tagged_photos(photos: Path, n_tagged: int = 72, n_untagged: int = 8,
                       seed: int = 0) -> dict[str, set[str]]:
    """``n_tagged`` photos with 1-3 colour concepts as sidecar tags (plus the camera tag "nikon")
    and ``n_untagged`` red+blue photos without tags. Returns {absolute path: true concepts}."""
    photos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = sorted(COLOURS)
    truth = {}
    for i in range(n_tagged):
        cs = sorted(rng.choice(names, size=1 + i % 3, replace=False).tolist())
        p = photos / f"img{i:03d}.png"
        colour_photo(p, cs, rng)
        (photos / f"img{i:03d}.txt").write_text(", ".join(cs + ["nikon"]))
        truth[os.path.abspath(p)] = set(cs)
    for i in range(n_untagged):
        p = photos / f"untagged{i}.png"
        colour_photo(p, ["blue", "red"], rng)
        truth[os.path.abspath(p)] = {"red", "blue"}
    return truth
