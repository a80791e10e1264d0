"""fp32 vs int8 (static QDQ, per-channel) EfficientNet-Lite0, side by side in one run.

(a) model only: onnxruntime on the same pre-decoded, preprocessed 224x224 images, batches of
    ``--batch`` (32), intra-op threads = cores, one session per model; the passes alternate
    fp32 / int8 ``--repeats`` times and the best pass of each is kept;
(b) top-1 ImageNet label agreement int8 vs fp32 and pooled-feature cosine (mean, min) on those
    images (logits of the last pass);
(c) retrieval quality on Wang-1K: P@k and mAP from ``cbir eval folder`` for both extractors
    (``--extractor efficientnet-lite0`` / ``efficientnet-lite0-int8``), each in a fresh
    temporary collection.
Prints a table and writes JSON (``--out``, default bench/results/int8.json), with the CPU flags
that matter for int8 (avx512_vnni, avx_vnni, amx).

    python bench/bench_int8.py --images /tmp/wang/dataset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cbir.extract.efficientnet import EfficientNetLite0, EfficientNetLite0Int8, packaged_onnx
from cbir.io.images import load_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags  # noqa: E402

HERE = Path(__file__).resolve().parent
WANG_TAR = HERE.parents[1] / "shared" / "datasets" / "wang1k.tar"
CBIR = Path(sys.executable).with_name("cbir")


def ensure_wang(images: Path) -> Path:
    if images.is_dir():
        return images
    if images == Path("/tmp/wang/dataset") and WANG_TAR.is_file():
        print(f"extracting {WANG_TAR} to /tmp/wang", file=sys.stderr)
        with tarfile.open(WANG_TAR) as tf:
            tf.extractall("/tmp/wang", filter="data")
        return images
    sys.exit(f"no images at {images}")


def list_images(root: Path, limit: int | None) -> list[Path]:
    exts = {".jpg", ".jpeg", ".png"}
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts)
    return paths[:limit] if limit else paths


def model_pass(ex: EfficientNetLite0, batch: np.ndarray, bs: int) -> tuple[float, dict[str, np.ndarray]]:
    outs: list[dict[str, np.ndarray]] = []
    t0 = time.perf_counter()
    for i in range(0, len(batch), bs):
        outs.append(ex.forward(batch[i:i + bs], ("pooled", "logits")))
    dt = time.perf_counter() - t0
    return dt, {k: np.concatenate([o[k] for o in outs]) for k in ("pooled", "logits")}


def eval_folder(images: Path, extractor: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = subprocess.run([str(CBIR), "--json", "-q", "-c", tmp, "eval", "folder", str(images),
                              "--extractor", extractor], capture_output=True, text=True, check=True)
        dt = time.perf_counter() - t0
    out = json.loads(res.stdout)
    return {k: out[k] for k in out if k.startswith(("P@", "mAP", "map", "images"))} | {
        "seconds": round(dt, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, default=Path("/tmp/wang/dataset"))
    ap.add_argument("--limit", type=int, default=1000, help="images for (a) and (b)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-eval", action="store_true", help="skip (c)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "int8.json")
    args = ap.parse_args()

    images = ensure_wang(args.images)
    paths = list_images(images, args.limit)
    fp = EfficientNetLite0(intra_op_num_threads=args.threads)
    q = EfficientNetLite0Int8(intra_op_num_threads=args.threads)
    batch = np.stack([fp.preprocess(load_image(p)) for p in paths])
    n = len(batch)
    # warm-up (session creation + first run) outside the timing
    for ex in (fp, q):
        ex.forward(batch[:args.batch], ("pooled", "logits"))
    best = {"fp32": float("inf"), "int8": float("inf")}
    res: dict[str, dict[str, np.ndarray]] = {}
    for _ in range(args.repeats):
        for key, ex in (("fp32", fp), ("int8", q)):
            dt, res[key] = model_pass(ex, batch, args.batch)
            best[key] = min(best[key], dt)
    ips = {k: n / v for k, v in best.items()}
    a = res["fp32"]["pooled"] / np.linalg.norm(res["fp32"]["pooled"], axis=1, keepdims=True)
    b = res["int8"]["pooled"] / np.linalg.norm(res["int8"]["pooled"], axis=1, keepdims=True)
    cos = (a * b).sum(1)
    agree = float((res["fp32"]["logits"].argmax(1) == res["int8"]["logits"].argmax(1)).mean())

    ev: dict[str, dict[str, Any]] = {}
    if not args.no_eval:
        for key, name in (("fp32", "efficientnet-lite0"), ("int8", "efficientnet-lite0-int8")):
            ev[key] = eval_folder(images, name)

    fp32_file = packaged_onnx()
    sizes = {"fp32": fp32_file.stat().st_size if fp32_file else None,
             "int8": Path(str(q.model_path)).stat().st_size}
    cpu = cpu_flags()
    rows = []
    for key in ("fp32", "int8"):
        row = {"model": key, "img/s": round(ips[key], 1), "speedup": round(ips[key] / ips["fp32"], 2),
               "MB": round(sizes[key] / 1e6, 2) if sizes[key] else None}
        row |= {k: v for k, v in ev.get(key, {}).items() if k != "images"}
        rows.append(row)
    cols = list(rows[0])
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; " + ", ".join(
        f"{f}={'yes' if v else 'no'}" for f, v in cpu.items() if f not in ("model", "cores")))
    print(f"model only: {n} images, batch {args.batch}, {args.threads} intra-op threads, "
          f"best of {args.repeats}")
    print("  ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print("  ".join(f"{'' if r.get(c) is None else r.get(c)!s:>12}" for c in cols))
    print(f"int8 vs fp32 on {n} images: top-1 agreement {agree:.3f}; pooled cosine mean "
          f"{cos.mean():.4f}, min {cos.min():.4f}")
    out = {"bench": "int8", "images": str(images), "n": n, "batch": args.batch,
           "threads": args.threads, "repeats": args.repeats, "cpu": cpu, "rows": rows,
           "top1_agreement": round(agree, 4), "cos_mean": round(float(cos.mean()), 4),
           "cos_min": round(float(cos.min()), 4),
           "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
