"""onnxruntime vs OpenVINO on the same ONNX graphs (fp32 and int8 EfficientNet-Lite0), model only,
side by side in one run: img/s, and cosine / top-1 agreement of OpenVINO's outputs with
onnxruntime's. OpenVINO runs at f32 inference precision (what ``CBIR_RUNTIME=openvino`` uses)
and, for information, bf16 (on CPUs with avx512_bf16 / AMX OpenVINO picks it by default).

Layouts: "2x1" = 2 batches in flight x 1 thread (as indexing runs; OpenVINO: 2 streams),
"1x2" = one batch at a time on 2 threads (as a single query runs). Best of ``--repeats``.

    python bench/bench_runtime.py --images /tmp/wang/dataset --limit 256
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cbir.extract.efficientnet import EfficientNetLite0, packaged_int8_onnx, packaged_onnx
from cbir.io.images import load_image

HERE = Path(__file__).resolve().parent


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=Path("/tmp/wang/dataset"))
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "runtime.json")
    args = ap.parse_args()
    import onnxruntime as ort
    import openvino as ov

    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    prep = EfficientNetLite0()
    x = np.stack([prep.preprocess(load_image(p, target_size=224)) for p in paths[:args.limit]])
    # the int8 graph takes the uint8 pixels (tools/quantize_model.py uint8_input)
    pixels = np.rint(x * 128 + 127).astype(np.uint8)
    inputs = {"fp32": [x[i:i + args.batch] for i in range(0, len(x), args.batch)],
              "int8": [pixels[i:i + args.batch] for i in range(0, len(x), args.batch)]}
    batches = list(inputs["fp32"])  # the inputs of the model being timed
    cores = os.cpu_count() or 1

    def timed(one, workers: int) -> tuple[float, list]:
        one(batches[0])
        best, outs = float("inf"), []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                outs = list(pool.map(one, batches))
            best = min(best, time.perf_counter() - t0)
        return len(x) / best, outs

    def ort_case(path: Path, workers: int, threads: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return timed(lambda b: s.run(["pooled", "logits"], {"input": b}), workers)

    def ov_case(path: Path, precision: str, streams: int, threads: int):
        core = ov.Core()
        cm = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": streams,
            "INFERENCE_PRECISION_HINT": precision, "ENABLE_CPU_PINNING": False})
        local = threading.local()
        outs = [cm.output("pooled"), cm.output("logits")]

        def one(b: np.ndarray) -> list[np.ndarray]:
            req = getattr(local, "r", None) or cm.create_infer_request()
            local.r = req
            res = req.infer({"input": b})
            return [np.array(res[o]) for o in outs]

        return timed(one, streams)

    rows = []
    for label, path in (("fp32", packaged_onnx()), ("int8", packaged_int8_onnx())):
        batches[:] = inputs[label]
        ref = None
        for runtime, layout, fn in (
                ("onnxruntime", "2x1", lambda p=path: ort_case(p, cores, 1)),
                ("onnxruntime", "1x2", lambda p=path: ort_case(p, 1, cores)),
                ("openvino f32", "2x1", lambda p=path: ov_case(p, "f32", cores, cores)),
                ("openvino f32", "1x2", lambda p=path: ov_case(p, "f32", 1, cores)),
                ("openvino bf16", "2x1", lambda p=path: ov_case(p, "bf16", cores, cores)),
                ("openvino bf16", "1x2", lambda p=path: ov_case(p, "bf16", 1, cores))):
            ips, outs = fn()
            pooled = np.concatenate([o[0] for o in outs])
            logits = np.concatenate([o[1] for o in outs])
            if ref is None:
                ref = (pooled, logits)
            cos = cosine(pooled, ref[0])
            rows.append({"model": label, "runtime": runtime, "layout": layout,
                         "img/s": round(ips, 1), "cos_min_vs_ort": round(float(cos.min()), 4),
                         "top1_agree_vs_ort": round(float((logits.argmax(1) == ref[1].argmax(1))
                                                          .mean()), 3)})
            print(rows[-1], flush=True)
    out = {"bench": "runtime", "n": len(x), "batch": args.batch, "cores": cores,
           "openvino": ov.__version__, "onnxruntime": ort.__version__,
           "load_avg_end": [round(v, 2) for v in os.getloadavg()], "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
