#!/usr/bin/env python3
"""Build the packaged int8 EfficientNet-Lite0 (static, QDQ, per-channel) from the fp32 one.

    .venv/bin/python tools/quantize_model.py           # build, check, write the file and its record
    .venv/bin/python tools/quantize_model.py --check   # check the packaged int8 file as it is

The fp32 graph is ``src/cbir/extract/models/efficientnet-lite0.onnx``; the output is
``src/cbir/extract/models/efficientnet-lite0-int8.onnx`` and its size and sha256 are written to
``PACKAGED_INT8_ONNX_SIZE`` / ``PACKAGED_INT8_ONNX_SHA256`` in ``src/cbir/extract/efficientnet.py``.

This graph is the default extractor (``efficientnet-lite0-int8``) of new collections: a build
that changes it changes the features of every int8 collection, which would then mix with the
old ones. The build is deterministic (same onnxruntime, same bytes); ship a changed graph under
a new extractor name. Keeping the fp32 classifier head (``nodes_to_exclude=["/_fc/Gemm"]``) was
measured and rejected: top-1 agreement with fp32 +0.003 on Wang-1K, +0.001 on Corel-5K, -0.0005
on CIFAR-10 (bench/bench_int8_quality.py): the label flips come from the backbone.

Input: uint8 pixels. MinMax calibration of the normalised input ``(p - 127) / 128`` over
images holding both black and white gives exactly scale 1/128 and zero point 127, so the
graph's first QuantizeLinear maps ``(p - 127) / 128`` back to ``p``: ``uint8_input`` removes
that node (after checking those two numbers) and makes the graph take the uint8 pixels
themselves. The outputs are bit-identical to the float-input graph, and indexing skips the
float conversion, the normalisation and 4x the bytes per image (docs/pipeline.md).

Quantisation: ``onnxruntime.quantization.quantize_static`` (QuantFormat.QDQ, per_channel=True,
QInt8 weights, QUInt8 activations, MinMax calibration). Not ``quantize_dynamic``: its
ConvInteger path is ~7x slower than fp32 on the CPU.

Calibration set (regenerated deterministically, nothing downloaded, no eval dataset):
``N_CALIB`` (200) images = seeded random crops / flips / scales of the scikit-image sample
pictures in ``CALIB_SOURCES`` plus procedural images (gradients, blobs, stripes), all seeded.
The quality check uses images that calibration never saw: seeded crops of the held-out sample
photos ``HOLDOUT_SOURCES`` (chelsea, coffee, astronaut, ...), and reports the cosine of the
pooled features int8 vs fp32 (mean, min) and the top-1 ImageNet label agreement.
Exit status 0: the checks pass (cosine mean >= 0.95, min >= 0.85, agreement >= 0.8).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "src" / "cbir" / "extract" / "models"
FP32 = MODELS / "efficientnet-lite0.onnx"
INT8 = MODELS / "efficientnet-lite0-int8.onnx"
RECORD = ROOT / "src" / "cbir" / "extract" / "efficientnet.py"
SEED = 13
N_CALIB = 200
N_HOLDOUT = 60
CALIB_BATCH = 8
CALIB_SOURCES = ("rocket", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel",
                 "camera", "moon", "coins", "grass", "gravel", "brick", "horse", "clock", "cell",
                 "page", "text", "logo")
HOLDOUT_SOURCES = ("chelsea", "coffee", "astronaut")
MIN_COS_MEAN, MIN_COS_MIN, MIN_AGREE = 0.95, 0.85, 0.8


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sample(name: str) -> Image.Image:
    import skimage.data

    a = getattr(skimage.data, name)()
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.dtype != np.uint8:
        a = (255 * (a.astype(np.float64) / max(float(a.max()), 1e-9))).astype(np.uint8)
    return Image.fromarray(a[..., :3])


def _augment(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A seeded random crop (40-100 % of the short side), maybe a flip, maybe a rescale."""
    w, h = im.size
    s = int(min(w, h) * rng.uniform(0.4, 1.0))
    ar = rng.uniform(0.75, 1.33)
    cw, ch = min(w, int(s * ar)), min(h, s)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = im.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        f = rng.uniform(0.5, 1.5)
        out = out.resize((max(8, int(cw * f)), max(8, int(ch * f))), Image.Resampling.BILINEAR)
    return out


def _procedural(rng: np.random.Generator, size: int = 256) -> Image.Image:
    """A seeded synthetic picture: colour gradient + gaussian blobs + stripes + noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), np.float32)
    for c in range(3):
        a, b, d = rng.uniform(-1, 1, 3)
        img[..., c] = 0.5 + 0.5 * (a * xx + b * yy + d) / 3
    for _ in range(int(rng.integers(2, 8))):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-0.8, 0.8, 3)
    if rng.random() < 0.5:
        f, th = rng.uniform(4, 40), rng.uniform(0, np.pi)
        img += 0.2 * np.sin(2 * np.pi * f * (np.cos(th) * xx + np.sin(th) * yy))[..., None]
    img += rng.normal(0, rng.uniform(0, 0.08), img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def calibration_images(n: int = N_CALIB, seed: int = SEED) -> list[Image.Image]:
    """``n`` deterministic calibration images: 3/4 augmented sample pictures, 1/4 procedural."""
    rng = np.random.default_rng(seed)
    sources = [_sample(s) for s in CALIB_SOURCES]
    n_proc = n // 4
    out = [_augment(sources[i % len(sources)], rng) for i in range(n - n_proc)]
    out += [_procedural(rng) for _ in range(n_proc)]
    return out


def holdout_images(n: int = N_HOLDOUT, seed: int = SEED + 1) -> list[Image.Image]:
    """Images calibration never saw: the held-out photos whole plus seeded crops of them."""
    rng = np.random.default_rng(seed)
    sources = [_sample(s) for s in HOLDOUT_SOURCES]
    out = list(sources)
    out += [_augment(sources[i % len(sources)], rng) for i in range(n - len(sources))]
    return out


def _preprocess(images: list[Image.Image]) -> np.ndarray:
    from cbir.extract.efficientnet import EfficientNetLite0

    ex = EfficientNetLite0(intra_op_num_threads=1)
    return np.stack([ex.preprocess(im) for im in images])


class _Reader(CalibrationDataReader):
    """onnxruntime CalibrationDataReader over the preprocessed calibration batch."""

    def __init__(self, batch: np.ndarray, input_name: str = "input") -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(
            [{input_name: batch[i:i + CALIB_BATCH]} for i in range(0, len(batch), CALIB_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        pass


def build(out: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    batch = _preprocess(calibration_images())
    print(f"calibration set: {len(batch)} images ({time.perf_counter() - t0:.1f}s)")
    reader = _Reader(batch)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(FP32), str(pre), skip_symbolic_shape=True)
        t0 = time.perf_counter()
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        calibration_providers=["CPUExecutionProvider"])
        print(f"quantize_static: {time.perf_counter() - t0:.1f}s")
    uint8_input(out)


def uint8_input(path: Path) -> None:
    """Make the QDQ graph at ``path`` take uint8 pixels: drop its input QuantizeLinear, which
    must have scale 1/128 and zero point 127 (then it maps ``(p - 127) / 128`` to ``p``
    exactly, and the graph computes the same numbers). Rewrites the file in place."""
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    first = g.node[0]
    if first.op_type != "QuantizeLinear" or first.input[0] != "input":
        sys.exit(f"{path}: the first node is {first.op_type}({list(first.input)}), not the input's "
                 "QuantizeLinear")
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    scale, zero = float(consts[first.input[1]]), int(consts[first.input[2]])
    if scale != 1 / 128 or zero != 127:
        sys.exit(f"{path}: the input is quantised with scale {scale} and zero point {zero}, not "
                 "1/128 and 127: uint8 pixels would not be the same input")
    quantized = first.output[0]
    del g.node[0]
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == quantized:
                node.input[i] = "input"
    g.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    used = {name for node in g.node for name in node.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def quality(path: Path) -> dict[str, float]:
    """Pooled-feature cosine and top-1 agreement, int8 at ``path`` vs the fp32 model."""
    from cbir.extract.efficientnet import EfficientNetLite0, EfficientNetLite0Int8

    batch = _preprocess(holdout_images())
    fp = EfficientNetLite0(model_path=FP32).forward(batch, ("pooled", "logits"))
    q = EfficientNetLite0Int8(model_path=path).forward(batch, ("pooled", "logits", "regions"))
    a = fp["pooled"] / np.linalg.norm(fp["pooled"], axis=1, keepdims=True)
    b = q["pooled"] / np.linalg.norm(q["pooled"], axis=1, keepdims=True)
    cos = (a * b).sum(1)
    agree = float((fp["logits"].argmax(1) == q["logits"].argmax(1)).mean())
    assert q["regions"].shape == (len(batch), 49, 1280)
    return {"n": len(batch), "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "top1_agreement": agree}


def write_record(size: int, digest: str) -> None:
    text = RECORD.read_text(encoding="utf-8")
    new, n1 = re.subn(r"^PACKAGED_INT8_ONNX_SIZE = .*$", f"PACKAGED_INT8_ONNX_SIZE = {size}",
                      text, flags=re.M)
    new, n2 = re.subn(r"^PACKAGED_INT8_ONNX_SHA256 = .*$",
                      f'PACKAGED_INT8_ONNX_SHA256 = "{digest}"', new, flags=re.M)
    if (n1, n2) != (1, 1):
        sys.exit(f"cannot find the PACKAGED_INT8_ONNX_SIZE / _SHA256 lines in {RECORD}")
    if new != text:
        RECORD.write_text(new, encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only check the packaged int8 model")
    ap.add_argument("--uint8-input", action="store_true",
                    help="only make the packaged graph take uint8 pixels (a graph built before "
                         "the build did it), then check it")
    args = ap.parse_args()
    if args.uint8_input:
        uint8_input(INT8)
        write_record(INT8.stat().st_size, sha256(INT8))
    elif not args.check:
        build(INT8)
        write_record(INT8.stat().st_size, sha256(INT8))
    size = INT8.stat().st_size
    print(f"{INT8.relative_to(ROOT)}: {size / 1e6:.2f} MB, sha256 {sha256(INT8)}")
    q = quality(INT8)
    print(f"held-out images: {q['n']}; pooled cosine int8 vs fp32: mean {q['cos_mean']:.4f}, "
          f"min {q['cos_min']:.4f}; top-1 agreement {q['top1_agreement']:.3f}")
    ok = (q["cos_mean"] >= MIN_COS_MEAN and q["cos_min"] >= MIN_COS_MIN
          and q["top1_agreement"] >= MIN_AGREE)
    print("OK" if ok else "FAILED: below the thresholds "
          f"(cos mean {MIN_COS_MEAN}, min {MIN_COS_MIN}, agreement {MIN_AGREE})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
