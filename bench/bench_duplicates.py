"""Near-duplicate detection: feature cosine (cbir duplicates) vs perceptual hashing (pHash).

200 Wang/Corel-1K photos (20 per class) get five transformed copies each (scale 0.5, JPEG
quality 30, 10 % crop, brightness +20 %, 3 degree rotation), placed among all 1000 originals
(optionally with Corel-5K train images as distractors). The folder is indexed with the real
backbone (`cbir -c COL index`). A predicted pair is two images in one duplicate group; a
true pair is two images derived from one photo (the original and its copies). Reported:
precision over all predicted pairs, and recall of copy <-> its original per transform and
overall, for a sweep of thresholds of both methods.

    .venv/bin/python bench/bench_duplicates.py [--wang /tmp/wang/dataset] [--corel DIR]
        [--work /tmp/dupbench] [--out bench/results/duplicates.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from cbir.collection import Collection
from cbir.duplicates import DEFAULT_THRESHOLD, components, similar_pairs

TRANSFORMS = {
    "scale0.5": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "jpeg30": lambda im: im,  # saved at quality 30 below
    "crop10": lambda im: im.crop((int(im.width * .05), int(im.height * .05),
                                  im.width - int(im.width * .05), im.height - int(im.height * .05))),
    "bright+20": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "rot3": lambda im: im.rotate(3, resample=Image.Resampling.BICUBIC),
}


def make_set(wang: Path, corel: Path | None, work: Path, seed: int = 0) -> dict[str, dict]:
    """Copy originals and write copies; returns path -> {"src": original path, "t": transform}."""
    img_dir = work / "images"
    if img_dir.exists():
        shutil.rmtree(img_dir)
    img_dir.mkdir(parents=True)
    rng = random.Random(seed)
    meta: dict[str, dict] = {}
    for cls_dir in sorted(p for p in wang.iterdir() if p.is_dir()):
        files = sorted(cls_dir.glob("*.jpg"))
        chosen = set(rng.sample(range(len(files)), 20))
        for i, f in enumerate(files):
            dst = img_dir / f"{cls_dir.name}_{f.name}"
            shutil.copy2(f, dst)
            meta[str(dst.resolve())] = {"src": str(dst.resolve()), "t": "original"}
            if i not in chosen:
                continue
            with Image.open(f) as im:
                im = im.convert("RGB")
                for t, fn in TRANSFORMS.items():
                    out = img_dir / f"{cls_dir.name}_{f.stem}__{t}.jpg"
                    fn(im).save(out, quality=30 if t == "jpeg30" else 90)
                    meta[str(out.resolve())] = {"src": str(dst.resolve()), "t": t}
    if corel:
        for f in sorted(corel.rglob("*.jp*g")):
            dst = img_dir / f"corel_{f.parent.name}_{f.name}"
            shutil.copy2(f, dst)
            meta[str(dst.resolve())] = {"src": str(dst.resolve()), "t": "distractor"}
    return meta


def evaluate(groups: list[list[str]], meta: dict[str, dict]) -> dict:
    """Pairwise precision over the groups and copy <-> original recall per transform."""
    gid = {p: g for g, members in enumerate(groups) for p in members}
    tp = fp = 0
    for members in groups:
        for a, b in itertools.combinations(members, 2):
            if meta[a]["src"] == meta[b]["src"]:
                tp += 1
            else:
                fp += 1
    out: dict = {"predicted_pairs": tp + fp,
                 "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0}
    found_all = total_all = 0
    for t in TRANSFORMS:
        copies = [p for p, m in meta.items() if m["t"] == t]
        found = sum(1 for p in copies if p in gid and gid.get(meta[p]["src"]) == gid[p])
        out[f"recall_{t}"] = round(found / len(copies), 4)
        found_all += found
        total_all += len(copies)
    out["recall"] = round(found_all / total_all, 4)
    return out


def phash_all(paths: list[str]) -> np.ndarray:
    import imagehash

    bits = np.zeros((len(paths), 64), dtype=bool)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            bits[i] = imagehash.phash(im).hash.flatten()
    return bits


def phash_pairs(bits: np.ndarray, max_dist: int) -> list[tuple[int, int, int]]:
    packed = np.packbits(bits, axis=1)  # (n, 8) bytes
    table = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1)
    out = []
    for i in range(len(packed)):
        d = table[np.bitwise_xor(packed[i + 1:], packed[i])].sum(1)
        for j in np.nonzero(d <= max_dist)[0]:
            out.append((i, i + 1 + int(j), int(d[j])))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wang", type=Path, default=Path("/tmp/wang/dataset"))
    ap.add_argument("--corel", type=Path, default=None, help="distractor folder (e.g. /tmp/corel5k/db/train)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dupbench"))
    ap.add_argument("--collection", type=Path, default=Path("/tmp/dupcol"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/duplicates.json"))
    args = ap.parse_args()

    meta = make_set(args.wang, args.corel, args.work)
    n_copies = sum(1 for m in meta.values() if m["t"] in TRANSFORMS)
    print(f"{len(meta)} images, {n_copies} transformed copies", file=sys.stderr)
    if args.collection.exists():
        shutil.rmtree(args.collection)
    t0 = time.perf_counter()
    cbir = Path(sys.executable).with_name("cbir")
    rc = subprocess.run([str(cbir), "-c", str(args.collection), "-q", "index",
                         str(args.work / "images")]).returncode
    if rc not in (0, 1):  # 1: done, some files skipped
        raise SystemExit(f"cbir index failed ({rc})")
    index_s = time.perf_counter() - t0

    results: dict = {"images": len(meta), "copies": n_copies, "index_seconds": round(index_s, 1),
                     "default_threshold": DEFAULT_THRESHOLD, "cosine": {}, "phash": {}}
    with Collection.open(args.collection) as col:
        extractor = col.manifest.extractor
        t0 = time.perf_counter()
        pairs = similar_pairs(col, threshold=0.6, k=10)
        pair_s = time.perf_counter() - t0
        recs = col.catalog.records(col.catalog.ok_ids())
    path_of = {i: r.path for i, r in recs.items()}
    results["extractor"] = extractor
    results["pair_search_seconds"] = round(pair_s, 2)
    for th in [0.70, 0.75, 0.80, 0.82, 0.84, 0.85, 0.86, 0.88, 0.90, 0.92, 0.95]:
        groups = components(p for p, s in pairs.items() if s >= th)
        results["cosine"][f"{th:.2f}"] = evaluate([[path_of[i] for i in g] for g in groups], meta)

    t0 = time.perf_counter()
    paths = sorted(path_of.values())
    bits = phash_all(paths)
    hpairs = phash_pairs(bits, 16)
    results["phash_seconds"] = round(time.perf_counter() - t0, 1)
    for d in [4, 6, 8, 10, 12, 14, 16]:
        groups = components((a, b) for a, b, dd in hpairs if dd <= d)
        results["phash"][str(d)] = evaluate([[paths[i] for i in g] for g in groups], meta)

    cols = ["precision", "recall", *[f"recall_{t}" for t in TRANSFORMS]]
    print(f"{'method':<22}" + "".join(f"{c.replace('recall_', 'R '):>12}" for c in cols))
    for name, table in (("cosine >=", results["cosine"]), ("pHash hamming <=", results["phash"])):
        for th, r in table.items():
            mark = " *" if name == "cosine >=" and float(th) == DEFAULT_THRESHOLD else \
                (" *" if name != "cosine >=" and th == "8" else "")
            print(f"{name + ' ' + th + mark:<22}" + "".join(f"{r[c]:>12.3f}" for c in cols))
    print(f"(* default; {extractor}; index {index_s:.0f} s, pair search {pair_s:.2f} s; a false pair "
          "here can be a real near duplicate among Wang's own photos, e.g. horses 761/776)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
