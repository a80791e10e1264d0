"""``cbir demo``: index scikit-image's sample photos and query with an edited copy of one.

Everything it needs ships with the packages; nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cbir.collection import Collection
from cbir.indexing import index_paths
from cbir.search import query_from_images, search

# skimage.data photos that ship inside the package (no download needed)
SAMPLES = ["astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins",
           "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
           "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina",
           "rocket", "text", "motorcycle_left", "motorcycle_right"]


def write_samples(folder: Path) -> list[Path]:
    """Write the sample photos as JPEGs; returns their paths."""
    from cbir import extras

    extras.require("cbir demo (scikit-image's sample photos)", "demo")
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SAMPLES:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        try:
            arr = loader()
        except Exception:  # noqa: BLE001 — some samples need a download; skip those
            continue
        if isinstance(arr, tuple):
            arr = arr[0]
        arr = np.asarray(arr)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        elif arr.dtype != np.uint8:
            arr = (255 * (arr - arr.min()) / max(1e-9, float(arr.max() - arr.min()))).astype(np.uint8)
        im = Image.fromarray(arr)
        path = folder / f"{name}.jpg"
        if not path.exists():
            im.convert("RGB").save(path, quality=92)
        out.append(path)
    return out


def make_query(photos: Path, out: Path) -> Path:
    """An edited copy of the cat photo: cropped, mirrored, resized, darker."""
    im = Image.open(photos / "chelsea.jpg").convert("RGB")
    w, h = im.size
    im = im.crop((w // 8, h // 10, w - w // 10, h)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = im.resize((im.width * 2 // 3, im.height * 2 // 3)).point(lambda v: int(v * 0.8))
    im.save(out, quality=85)
    return out


def run_demo(directory: Path, *, progress: bool = True) -> int:
    photos = directory / "photos"
    n = len(write_samples(photos))
    query = make_query(photos, directory / "query-cat.jpg")
    print(f"demo: {n} sample photos in {photos}", file=sys.stderr)
    with Collection.create_or_open(directory / "collection") as col:
        with col.writer_lock():
            report = index_paths(col, [photos], progress=progress)
        print(f"indexed: added {report.added}, unchanged {report.unchanged}, "
              f"skipped {len(report.problems)}")
        hits = search(col, query_from_images(col, [query]), k=5)
    print(f"\nquery: {query} (a cropped, mirrored, darkened copy of chelsea.jpg)")
    print(f"{'rank':>4}  {'similarity':>10}  {'distance':>8}  path  [top ImageNet label]")
    for h in hits:
        label = h.labels[0][0] if h.labels else ""
        print(f"{h.rank:>4}  {h.similarity:>10.2%}  {h.distance:>8.4f}  {h.path}  [{label}]")
    print(f"\ntry: cbir --collection {directory / 'collection'} search --like "
          f"{photos / 'coffee.jpg'} -k 3", file=sys.stderr)
    return 0 if hits and Path(hits[0].path).name == "chelsea.jpg" else 1
