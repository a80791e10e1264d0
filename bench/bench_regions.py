"""What storing region features as 8 bits per value costs: IDEA's input before and after.

    python bench/bench_regions.py [--root /tmp/corel5k] [--bits 16,32,64] [--seeds 0,1,2]
        [--idea] [--out bench/results/regions.json]

`cbir index --regions` keeps the 7x7x1280 region features of every image. They used to be
stored as float16 (125,440 bytes an image); the catalog now stores each of the 49 rows as
uint8 codes over the row's own range (62,916 bytes; see cbir.store.catalog.pack_regions).
On Corel-5K (4,999 images, extracted with the default extractor; extract the dataset with
`mkdir -p /tmp/corel5k && tar xf ../shared/datasets/corel5k.tar -C /tmp/corel5k`), this
compares what the catalog returns in the two formats:

* bytes per image and the time to encode a batch of 256 into a catalog;
* per-row cosine and absolute error of the 8-bit rows against the float16 rows (and of
  both against the extractor's float32 output);
* IDEA's fixed input transform (standardisation + PCA-256, fitted with 0 epochs on the
  training split as IDEA does): cosine of the reduced regions and of their image means;
* ITQ on the mean of the reduced regions (as bench/bench_idea_input.py), each format
  fitting its own reduction, mAP@5000 on the category protocol, per seed and code length;
  also on the extractor's float32 output (never stored) as a reference for what noise
  of this size does;
* with --idea, IDEA itself (lambdas 10, 1, 0.01) at 32 bits per seed, trained on each
  format's regions (1-2 min each).

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cbir.concepts.tag_vectors import create_tag_vectors
from cbir.concepts.tags import clean_tags
from cbir.eval.hashing import evaluate_codes
from cbir.extract import DEFAULT_EXTRACTOR, create_extractor
from cbir.extract.pipeline import embed_files
from cbir.hashing import create_hasher
from cbir.io.benchmarks import load_benchmark
from cbir.store import Catalog, ImageRecord
from cbir.store.catalog import pack_regions, unpack_regions


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def l2n(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def ms(v: list[float]) -> str:
    """mean ± sd (over seeds)."""
    return f"{np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f}"


def row_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of matching rows (last axis) where both are non-zero."""
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float32), b.reshape(-1, b.shape[-1]).astype(np.float32)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    return (a[ok] * b[ok]).sum(axis=1) / (na[ok] * nb[ok])


def extract(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    ex = create_extractor(DEFAULT_EXTRACTOR)
    feats = np.zeros((len(paths), ex.dim), np.float32)
    regs: np.ndarray | None = None
    for r in embed_files(list(enumerate(paths)), ex, regions=True):
        if r.error:
            raise SystemExit(f"{paths[r.key]}: {r.error}")
        if regs is None:
            regs = np.zeros((len(paths), *r.regions.shape), np.float32)
        feats[r.key], regs[r.key] = r.features, r.regions
    assert regs is not None
    return feats, regs


def stored(regs: np.ndarray, fmt: str) -> np.ndarray:
    """What Catalog.regions returns for each image, float16 (n, 49, c)."""
    if fmt == "float32":  # the extractor's output, never stored: the noise reference
        return regs
    if fmt == "float16":
        return regs.astype(np.float16)
    return np.stack([unpack_regions(*pack_regions(r)) for r in regs])


def write_speed(regs: np.ndarray, fmt: str, dim: int) -> float:
    """Seconds per image to commit 256 images' regions (and a feature) into a fresh catalog."""
    import json as _json

    import cbir.store.catalog as catalog_mod

    old = catalog_mod.pack_regions
    if fmt == "float16":  # the code before the 8-bit format
        catalog_mod.pack_regions = lambda r: (  # type: ignore[assignment]
            _json.dumps(list(np.shape(r))), np.asarray(r, dtype="<f2").tobytes())
    try:
        with tempfile.TemporaryDirectory() as d, Catalog(Path(d) / "c.sqlite", dim) as cat:
            recs = [ImageRecord(path=f"/{i}.jpg", size=1, mtime_ns=1, sha256=str(i),
                                feature=np.ones(dim, np.float32), regions=regs[i % len(regs)])
                    for i in range(256)]
            t = time.perf_counter()
            cat.commit_batch(recs)
            return (time.perf_counter() - t) / 256
    finally:
        catalog_mod.pack_regions = old


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/corel5k"))
    p.add_argument("--bits", default="16,32,64")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--idea", action="store_true", help="also train IDEA at 32 bits per seed")
    p.add_argument("--out", type=Path, default=Path("bench/results/regions.json"))
    args = p.parse_args(argv)
    bits = [int(b) for b in args.bits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    ds = load_benchmark("corel5k", args.root)
    t = time.perf_counter()
    feats, raw = extract(list(ds.paths))
    log(f"{len(ds.paths)} images: regions {raw.shape[1:]} extracted in {time.perf_counter() - t:.1f} s")
    formats = ["float16", "u8-row"]
    regs = {f: stored(raw, f) for f in ["float32", *formats]}
    out: dict[str, object] = {"dataset": "corel5k", "images": len(ds.paths), "extractor": DEFAULT_EXTRACTOR}
    out["bytes_per_image"] = {f: len(pack_regions(raw[0])[1]) if f == "u8-row" else raw[0].size * 2
                              for f in formats}
    out["commit_ms_per_image"] = {f: round(1000 * write_speed(raw, f, feats.shape[1]), 3) for f in formats}

    # -- the stored values -------------------------------------------------------------
    a, b = regs["float16"].astype(np.float32), regs["u8-row"].astype(np.float32)
    cos = row_cos(a, b)
    err = np.abs(a - b)
    out["rows"] = {
        "nonzero_rows": int(cos.size), "rows": int(a.shape[0] * a.shape[1]),
        "cos_u8_vs_f16_mean": float(cos.mean()), "cos_u8_vs_f16_min": float(cos.min()),
        "cos_u8_vs_f32_min": float(row_cos(raw, b).min()),
        "cos_f16_vs_f32_min": float(row_cos(raw, a).min()),
        "abs_err_u8_vs_f16_mean": float(err.mean()), "abs_err_u8_vs_f16_max": float(err.max()),
        "abs_err_u8_vs_f32_max": float(np.abs(raw - b).max()),
        "abs_err_f16_vs_f32_max": float(np.abs(raw - a).max()),
        "identical_values_fraction": float((a == b).mean()),
    }
    del a, b, err

    # -- IDEA's fixed reduction ----------------------------------------------------------
    train, q, db = ds.split.train, ds.split.query, ds.split.database
    tags = [clean_tags(t) for t in ds.tags_of("train")]
    vectors = create_tag_vectors("glove", corpus=tags)
    ql, dl = ds.labels[q], ds.labels[db]
    results: dict[str, dict[int, list[float]]] = {}

    def score(name: str, nbits: int, qc: np.ndarray, dc: np.ndarray) -> None:
        m = evaluate_codes(qc, dc, ql, dl, bits=nbits, pr_curve=False)["mAP@5000"]
        results.setdefault(name, {}).setdefault(nbits, []).append(float(m))

    red_stats: dict[str, list[float]] = {}
    for seed in seeds:
        reduced: dict[str, np.ndarray] = {}
        for f in ["float32", *formats]:
            base = create_hasher("idea", 32, seed=seed, lambdas=[10, 1, 0.01], epochs=0).fit(
                feats[train], regions=regs[f][train], tags=tags, tag_vectors=vectors)
            z = base.reduce(regs[f]).astype(np.float32)
            reduced[f] = z
            if f == "float16":
                z_same = base.reduce(regs["u8-row"]).astype(np.float32)  # the same reduction
            rep = l2n(z.mean(axis=1))
            for nb in bits:
                itq = create_hasher("itq", nb, seed=seed).fit(rep[train])
                score(f"ITQ on reduced mean, {f}", nb, itq.encode(rep[q]), itq.encode(rep[db]))
        c_same = row_cos(reduced["float16"], z_same)
        c_img = row_cos(l2n(reduced["float16"].mean(axis=1)), l2n(z_same.mean(axis=1)))
        for k, v in {"reduced_row_cos_mean": c_same.mean(), "reduced_row_cos_min": c_same.min(),
                     "reduced_image_mean_cos_mean": c_img.mean(),
                     "reduced_image_mean_cos_min": c_img.min()}.items():
            red_stats.setdefault(k, []).append(float(v))
        if args.idea:
            for f in formats:
                h = create_hasher("idea", 32, seed=seed, lambdas=[10, 1, 0.01]).fit(
                    feats[train], regions=regs[f][train], tags=tags, tag_vectors=vectors)
                score(f"IDEA (10, 1, 0.01), {f}", 32, h.encode(feats[q], regions=regs[f][q]),
                      h.encode(feats[db], regions=regs[f][db]))
        log(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in red_stats.items()) + "; "
            + ", ".join(f"{k} {nb}: {v[nb][-1]:.4f}" for k, v in results.items() for nb in v))
    out["reduction"] = {k: float(np.mean(v)) if k.endswith("mean") else float(np.min(v))
                        for k, v in red_stats.items()}
    out["map@5000"] = {k: {str(nb): v for nb, v in per.items()} for k, per in results.items()}

    print(f"corel5k, {len(ds.paths)} images, {DEFAULT_EXTRACTOR}")
    print("| | float16 | u8-row |\n|---|---|---|")
    print(f"| bytes / image | {out['bytes_per_image']['float16']:,} | {out['bytes_per_image']['u8-row']:,} |")
    print(f"| commit ms / image | {out['commit_ms_per_image']['float16']} | "
          f"{out['commit_ms_per_image']['u8-row']} |")
    for k, v in results.items():
        for nb, vals in v.items():
            if k.endswith("float16"):
                other = results[k.replace("float16", "u8-row")][nb]
                ref = results.get(k.replace("float16", "float32"), {}).get(nb)
                print(f"| {k.rsplit(',', 1)[0]}, {nb} bits, mAP@5000 | {ms(vals)} | {ms(other)} |"
                      + (f" float32 (not stored): {ms(ref)}" if ref else ""))
    print()
    for k, v in {**out["rows"], **out["reduction"]}.items():  # type: ignore[dict-item]
        print(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
