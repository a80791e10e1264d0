"""Indexing end to end vs the model alone, for the default (or a chosen) extractor and runtime,
side by side in one run.

(a) model only: the extractor's ``embed`` on pre-decoded, preprocessed batches of ``--batch``,
    in the layout indexing uses (``Collection.indexing_extractor``: one intra-op thread per
    batch, ``default_infer_workers`` batches in flight);
(b) end to end: ``cbir.indexing.index_paths`` into a fresh collection, as ``cbir index`` runs
    it: walk, plan, safe read, sha256, embedded tags, header size, JPEG decode, preprocess,
    inference, SQLite commits, the index build at the end;
(c) optionally (``--cli``) the ``cbir index`` command itself, start-up included;
(d) optionally (``--regions``) (b) with ``regions=True`` (``cbir index --regions``: the 7x7
    region features stored 8-bit per value), to show what storing them costs per image.

The repeats interleave (a) and (b); the best of each is kept (the machine may be shared: the
best run is the least disturbed) and the ratio b/a is what the target is about. CPU ms per
image (process time) is printed too: it is much less sensitive to other processes.

    python bench/bench_pipeline.py --images /tmp/cbir-bench-224      # 224x224 JPEGs
    python bench/bench_pipeline.py --images /tmp/cbir-bench-224-6k --limit 6000 \
        --make-from /tmp/wang/dataset /tmp/corel5k/db           # make them first (see --make-from)
    python bench/bench_pipeline.py --images /tmp/wang/dataset --runtime openvino
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cbir.collection import Collection
from cbir.extract import DEFAULT_EXTRACTOR
from cbir.extract.pipeline import default_infer_workers
from cbir.indexing import index_paths
from cbir.io.images import load_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags, timed  # noqa: E402

HERE = Path(__file__).resolve().parent


def make_224(sources: list[Path], out: Path, limit: int) -> None:
    """224x224 JPEG copies (quality 90) of the first ``limit`` JPEGs under ``sources``."""
    from PIL import Image

    files = [p for src in sources for p in sorted(src.rglob("*"))
             if p.suffix.lower() in (".jpg", ".jpeg")][:limit]
    tmp = out.with_name(out.name + ".part")
    for i, f in enumerate(files):
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            im = im.resize((224, 224), Image.Resampling.BICUBIC,
                           box=((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2))
            dst = tmp / f.parent.name / f"{i:05d}.jpg"
            dst.parent.mkdir(parents=True, exist_ok=True)
            im.save(dst, quality=90)
    tmp.rename(out)
    print(f"made {len(files)} 224x224 JPEGs in {out}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=Path("/tmp/cbir-bench-224"))
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--extractor", default=DEFAULT_EXTRACTOR)
    ap.add_argument("--runtime", default=None, help="onnxruntime or openvino (default: "
                    "$CBIR_RUNTIME, else onnxruntime)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cli", action="store_true", help="also time the `cbir index` command")
    ap.add_argument("--regions", action="store_true",
                    help="also time end to end with region features (`cbir index --regions`)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "pipeline.json")
    ap.add_argument("--make-from", type=Path, nargs="+", default=None, metavar="DIR",
                    help="when --images does not exist, make it: the JPEGs under these folders "
                         "(sorted, up to --limit), center-cropped and resized to 224x224, saved "
                         "as JPEG quality 90 (e.g. Wang-1K and Corel-5K from ../shared/datasets)")
    args = ap.parse_args()
    if args.make_from and not args.images.exists():
        make_224(args.make_from, args.images, args.limit)
    if args.runtime:
        os.environ["CBIR_RUNTIME"] = args.runtime  # the collection's extractors read it

    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    files = files[:args.limit]
    if not files:
        sys.exit(f"no JPEGs under {args.images}")
    # the images to index: links would be skipped by nothing, but keep the set exact: a folder
    # of hard links (same inodes, no copy) when --limit cuts the folder
    work = Path(tempfile.mkdtemp(prefix="cbir-bench-pipeline-"))
    root = work / "images"
    for i, f in enumerate(files):
        dst = root / f.parent.name / f"{i:05d}{f.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, dst)
        except OSError:
            dst.write_bytes(f.read_bytes())

    probe = Collection.create_or_open(work / "probe", args.extractor)
    ex = probe.indexing_extractor()
    runtime = getattr(ex, "runtime", "n/a")
    workers = default_infer_workers(ex)
    arrays = [ex.preprocess(load_image(p, target_size=ex.input_size)) for p in files]
    batches = [np.stack(arrays[i:i + args.batch]) for i in range(0, len(arrays), args.batch)]
    del arrays
    ex.embed(batches[0])

    def model_only() -> int:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(ex.embed, batches))
        return len(files)

    counter = [0]

    def end_to_end(regions: bool = False) -> int:
        counter[0] += 1
        col = Collection.create_or_open(work / f"col{counter[0]}", args.extractor)
        with col, col.writer_lock():
            rep = index_paths(col, [root], batch_size=args.batch, progress=False, regions=regions)
        if rep.failed or rep.added != len(files):
            raise RuntimeError(f"indexing failed: {rep.as_dict()}")
        return rep.added

    def cli() -> int:
        counter[0] += 1
        exe = Path(sys.executable).with_name("cbir")
        subprocess.run([str(exe), "-q", "-c", str(work / f"col{counter[0]}"), "index", str(root),
                        "--extractor", args.extractor], check=True, capture_output=True)
        return len(files)

    cases: dict[str, tuple[Callable[[], int], str]] = {
        "a_model_only": (model_only, f"embed on pre-decoded batches of {args.batch}, {workers} "
                         f"in flight x {getattr(ex, 'intra_op_num_threads', '?')} thread(s)"),
        "b_end_to_end": (end_to_end, "index_paths into a fresh collection (walk, read, sha256, "
                         "tags, decode, preprocess, infer, commit, index)"),
    }
    if args.cli:
        cases["c_cbir_index"] = (cli, "the `cbir index` command, start-up included")
    if args.regions:
        cases["d_regions"] = (lambda: end_to_end(regions=True), "(b) with region features stored")
    print(f"{len(files)} images from {args.images}; extractor {args.extractor}, runtime {runtime};"
          f" {os.cpu_count()} cores; load avg {os.getloadavg()[0]:.2f}", file=sys.stderr)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in cases}
    for rep in range(args.repeats):
        for name, (fn, _) in cases.items():
            runs[name].append(timed(fn))
            print(f"  rep {rep} {name:14s} {runs[name][-1]['images_per_s']:7.1f} img/s "
                  f"{runs[name][-1]['cpu_ms_per_image']:6.2f} cpu ms/img", file=sys.stderr,
                  flush=True)
    results = {k: {**max(v, key=lambda r: r["images_per_s"]),
                   "all_images_per_s": [r["images_per_s"] for r in v], "what": cases[k][1]}
               for k, v in runs.items()}
    a, b = results["a_model_only"], results["b_end_to_end"]
    ratio = round(b["images_per_s"] / a["images_per_s"], 3)
    print(f"\n{'measurement':14s} {'images':>6s} {'img/s':>8s} {'cpu ms/img':>10s}  what")
    for k, r in results.items():
        print(f"{k:14s} {r['images']:6d} {r['images_per_s']:8.1f} {r['cpu_ms_per_image']:10.2f}"
              f"  {r['what']}")
    print(f"end to end / model only = {ratio}; targets: >= 350 img/s: "
          f"{b['images_per_s'] >= 350}, ratio >= 0.8: {ratio >= 0.8}; load avg at end "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    out = {"bench": "pipeline", "command": " ".join(["python", *sys.argv]),
           "images": str(args.images), "n": len(files), "extractor": args.extractor,
           "runtime": runtime, "batch": args.batch, "repeats": args.repeats, "cpu": cpu_flags(),
           "load_avg_end": [round(x, 2) for x in os.getloadavg()],
           "python": platform.python_version(), "results": results, "ratio_b_over_a": ratio}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
