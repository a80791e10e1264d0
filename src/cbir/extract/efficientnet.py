"""EfficientNet-Lite0 (ImageNet-1k) features through onnxruntime on the CPU.

The ONNX graph ships inside the package (``models/efficientnet-lite0.onnx``, exported from
the pip-shipped PyTorch weights by ``tools/export_model.py`` and checked against torch), so
neither torch nor a network is needed. Only when that file is absent (a source tree without
it) is the graph exported on first use and cached (see ``cbir.extract.onnx_export``), which
needs the ``train`` extra. onnxruntime itself is imported only when the first batch is embedded.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cbir.errors import BackendUnavailable, InvalidRequest
from cbir.extract.base import EXTRACTORS, Embedding, l2_normalize

if TYPE_CHECKING:
    import onnxruntime as ort

INPUT_SIZE = 224
DIM = 1280
#: TF-Lite convention of the original EfficientNet-Lite: (x - 127) / 128 on 0..255 RGB.
MEAN = 127.0
STD = 128.0
OUTPUTS = ("pooled", "logits", "regions")

#: The exported graph shipped in the package, and its record (``tools/export_model.py``
#: regenerates the file, checks it against torch and rewrites these three lines).
PACKAGED_ONNX = "models/efficientnet-lite0.onnx"
PACKAGED_ONNX_SIZE = 18614935
PACKAGED_ONNX_SHA256 = "758439de1b444e1c9bbf54929c24a6ca593960e79ac7c9043e8e2a0ceef89753"

#: The int8 graph (static QDQ, per-channel weights) built from the fp32 one by
#: ``tools/quantize_model.py``, which rewrites these two lines.
PACKAGED_INT8_ONNX = "models/efficientnet-lite0-int8.onnx"
PACKAGED_INT8_ONNX_SIZE = 5075023
PACKAGED_INT8_ONNX_SHA256 = "99dc3e8f6398dba376ad1a6f48eddf7d39a4455c5a0bd05dbc07693a9610f02e"


def packaged_onnx_file(rel: str = PACKAGED_ONNX) -> Path:
    """Where a packaged ONNX model is (or would be) inside the installed package."""
    return Path(str(resources.files("cbir.extract").joinpath(rel)))


def packaged_int8_onnx() -> Path | None:
    """The packaged int8 model, checked against its record (like ``packaged_onnx``)."""
    return _checked(packaged_onnx_file(PACKAGED_INT8_ONNX), PACKAGED_INT8_ONNX_SIZE,
                    PACKAGED_INT8_ONNX_SHA256)


def _checked(path: Path, want_size: int, want_sha256: str) -> Path | None:
    from cbir.extract.onnx_export import sha256_file

    try:
        size = path.stat().st_size
    except OSError:  # absent (or not a plain file, e.g. inside a zip)
        return None
    if size != want_size or sha256_file(path) != want_sha256:
        raise BackendUnavailable(
            f"the packaged model {path} is damaged ({size} bytes; its size or sha256 differs from "
            "the record in cbir.extract.efficientnet): reinstall cbir "
            "(pip install --force-reinstall --no-deps cbir)")
    return path


def packaged_onnx() -> Path | None:
    """The packaged ONNX model, checked against its recorded size and sha256; None if absent.

    The hash is computed once per process and file version (``sha256_file`` memoises on
    path, size and mtime). A file that does not match raises BackendUnavailable: a damaged
    install is reported, never used.
    """
    return _checked(packaged_onnx_file(), PACKAGED_ONNX_SIZE, PACKAGED_ONNX_SHA256)


def default_onnx_path(model_name: str = "efficientnet-lite0") -> Path:
    """The ONNX model the extractor loads by default: the packaged file, else the cached export
    (exported first if needed, which needs the ``train`` extra)."""
    path = packaged_onnx()
    if path is not None:
        return path
    from cbir.extract import onnx_export

    try:
        return onnx_export.ensure_onnx(model_name)
    except BackendUnavailable as e:
        raise BackendUnavailable(
            f"this cbir install has no packaged model ({packaged_onnx_file()}), and {e}") from e


@cache
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-index order."""
    text = resources.files("cbir.extract").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(names)} names, expected 1000")
    return names


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, C) logits -> (n, C) float32 probabilities."""
    z = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


RUNTIMES = ("onnxruntime", "openvino")
RUNTIME_ENV = "CBIR_RUNTIME"


def resolve_runtime(runtime: str | None = None) -> str:
    """``runtime``, else ``$CBIR_RUNTIME``, else "onnxruntime"; an unknown name is refused."""
    name = (runtime or os.environ.get(RUNTIME_ENV) or "onnxruntime").strip().lower()
    if name not in RUNTIMES:
        where = "runtime" if runtime else RUNTIME_ENV
        raise InvalidRequest(f"unknown {where} {name!r}; choose one of: {', '.join(RUNTIMES)}")
    return name


class OpenVinoSession:
    """An ONNX graph compiled by OpenVINO for the CPU, with onnxruntime's ``run`` interface.

    threads: OpenVINO threads per inference (as onnxruntime's intra-op threads). With fewer
    threads than cores, the model gets one stream per ``threads`` cores, so that as many
    batches as ``embed_files``' ``infer_workers`` run at once (each calling thread has its own
    infer request). Precision stays float32 where the graph is float (no automatic bf16) and
    threads are not pinned to cores (decode threads share them).
    """

    def __init__(self, path: Path, *, threads: int):
        from cbir import extras

        extras.require("the openvino runtime (CBIR_RUNTIME=openvino)", "openvino")
        import openvino as ov

        cores = os.cpu_count() or 1
        streams = max(1, cores // max(1, threads))
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": streams * threads, "NUM_STREAMS": streams,
                  "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.streams = streams
        self.input_uint8 = self.compiled.inputs[0].get_element_type() == ov.Type.u8
        self._outputs = {o.get_any_name(): o for o in self.compiled.outputs}
        self._local = threading.local()

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Like ``onnxruntime.InferenceSession.run``: the named outputs, as fresh arrays."""
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        res = req.infer(feeds)
        return [np.array(res[self._outputs[name]], copy=True) for name in outputs]


@EXTRACTORS.register("efficientnet-lite0")
class EfficientNetLite0:
    """EfficientNet-Lite0: 1280-d pooled features, ImageNet probs, optional 7x7 regions.

    intra_op_num_threads: onnxruntime threads (default ``os.cpu_count()``).
    allow_spinning: let onnxruntime's idle threads busy-wait. Spinning helps a little when
        the model runs alone but steals the cores from decode threads in ``embed_files``,
        so it is off by default (measured in bench/bench_extract.py).
    model_path: an ONNX file with the graph of ``onnx_export``; default: the packaged model
        (``default_onnx_path``: else the cached export, created on first use with torch).
    reducing_gap: Pillow's ``resize(reducing_gap=...)``: a cheap box reduction first when the
        image is much larger than 224 px (None disables it).
    runtime: "onnxruntime" (default) or "openvino" (the ``openvino`` extra); default: the
        ``CBIR_RUNTIME`` environment variable, else onnxruntime. Both run the same ONNX graph
        and give the same features within float tolerance, so the runtime is not part of the
        manifest: a collection may be indexed with one and searched with the other.
    """

    name = "efficientnet-lite0"
    dim = DIM
    input_size = INPUT_SIZE

    def __init__(self, *, intra_op_num_threads: int | None = None, allow_spinning: bool = False,
                 model_path: str | Path | None = None, reducing_gap: float | None = 3.0,
                 runtime: str | None = None):
        self.runtime = resolve_runtime(runtime)
        self.intra_op_num_threads = int(intra_op_num_threads or os.cpu_count() or 1)
        if self.intra_op_num_threads < 1:
            raise InvalidRequest(f"intra_op_num_threads must be >= 1, got {intra_op_num_threads}")
        self.allow_spinning = allow_spinning
        self.model_path = Path(model_path) if model_path is not None else None
        self.reducing_gap = reducing_gap
        self.class_names = imagenet_class_names()
        self.preprocessing: dict[str, Any] = {
            "size": INPUT_SIZE,
            "resize": "short side to 224",
            "crop": "center 224x224",
            "resample": "bilinear",
            "reducing_gap": reducing_gap,
            "value_range": [0, 255],
            "mean": [MEAN] * 3,
            "std": [STD] * 3,
            "channels": "RGB",
            "layout": "NCHW",
            "dtype": "float32",
        }
        self._session: ort.InferenceSession | OpenVinoSession | None = None
        self._takes_pixels: bool | None = None
        self._lock = threading.Lock()

    # -- the runtime -------------------------------------------------------------------
    @property
    def session(self) -> ort.InferenceSession | OpenVinoSession:
        """The onnxruntime (or OpenVINO) session, created on first use."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._create_session()
        return self._session

    def _create_session(self) -> Any:
        if self.runtime == "openvino":
            return OpenVinoSession(self._model_file(), threads=self.intra_op_num_threads)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable("onnxruntime is missing: pip install onnxruntime") from e
        from cbir.extract import onnx_export

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.intra_op_num_threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning",
                                    "1" if self.allow_spinning else "0")
        providers = ["CPUExecutionProvider"]
        path = self._model_file()
        try:
            return ort.InferenceSession(str(path), so, providers=providers)
        except Exception:  # noqa: BLE001 - a damaged cache file: export again, once
            if self.model_path is not None or path == packaged_onnx_file():
                raise
            path.unlink(missing_ok=True)
            return ort.InferenceSession(str(onnx_export.ensure_onnx(self.name)), so,
                                        providers=providers)

    def _model_file(self) -> Path:
        """The ONNX file to load: ``model_path``, else the packaged graph, else the cached export."""
        if self.model_path is not None:
            return self.model_path
        return packaged_onnx() or default_onnx_path(self.name)

    def takes_pixels(self) -> bool:
        """Whether the graph's input is the uint8 pixels (the int8 graph) rather than the
        normalised float32 ``(p - 127) / 128`` (read from the graph, once)."""
        if self._takes_pixels is None:
            sess = self.session
            self._takes_pixels = bool(getattr(sess, "input_uint8", False)) if \
                isinstance(sess, OpenVinoSession) else sess.get_inputs()[0].type == "tensor(uint8)"
        return self._takes_pixels

    def forward(self, batch: np.ndarray, outputs: tuple[str, ...] = OUTPUTS) -> dict[str, np.ndarray]:
        """Raw graph outputs for a (n, 3, 224, 224) batch: the normalised float32 of the fp32
        ``preprocess`` or the uint8 pixels of the int8 one; either is converted, exactly, to
        what the graph takes.

        pooled (n, 1280), logits (n, 1000), regions (n, 49, 1280); all float32, unnormalised.
        """
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise InvalidRequest(
                f"{self.name} expects a (n, 3, {INPUT_SIZE}, {INPUT_SIZE}) batch from "
                f"preprocess(), got {batch.shape}")
        if self.takes_pixels():
            if batch.dtype != np.uint8:  # (p - 127) / 128 back to p
                batch = np.clip(np.rint(batch.astype(np.float32) * STD + MEAN), 0, 255).astype(np.uint8)
            batch = np.ascontiguousarray(batch)
        elif batch.dtype == np.uint8:
            batch = (batch.astype(np.float32) - MEAN) * np.float32(1.0 / STD)
        else:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
        bad = [o for o in outputs if o not in OUTPUTS]
        if bad:
            raise InvalidRequest(f"unknown outputs {bad}; choose from {list(OUTPUTS)}")
        res = self.session.run(list(outputs), {"input": batch})
        return dict(zip(outputs, res, strict=True))

    # -- the FeatureExtractor protocol -------------------------------------------------
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (3, 224, 224) float32: short side to 224, center crop, (x-127)/128.

        Resize and crop are one ``resize(box=...)`` of the central square, which equals
        "resize the short side to 224, then center-crop 224" without resampling the
        cropped-off margins.
        """
        a = self.pixels(image).astype(np.float32)  # (3, 224, 224), a copy
        a -= MEAN
        a *= 1.0 / STD
        return a

    def pixels(self, image: Image.Image) -> np.ndarray:
        """RGB image -> its (3, 224, 224) uint8 pixels: short side to 224, center crop (a
        channels-first view: ``np.stack`` makes the batch contiguous)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        if (w, h) == (INPUT_SIZE, INPUT_SIZE):
            im = image
        else:
            im = image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR, box=box,
                              reducing_gap=self.reducing_gap)
        return np.asarray(im).transpose(2, 0, 1)

    def embed(self, batch: np.ndarray, *, regions: bool = False) -> Embedding:
        """(n, 3, 224, 224) float32 -> features (n, 1280) L2-normalised, probs (n, 1000),
        regions (n, 49, 1280) float32 when requested (only the needed outputs are fetched)."""
        outs = ("pooled", "logits", "regions") if regions else ("pooled", "logits")
        res = self.forward(batch, outs)
        return Embedding(
            features=l2_normalize(res["pooled"]),
            probs=softmax(res["logits"]),
            regions=res["regions"].astype(np.float32, copy=False) if regions else None,
        )


@EXTRACTORS.register("efficientnet-lite0-int8")
class EfficientNetLite0Int8(EfficientNetLite0):
    """EfficientNet-Lite0 quantised to int8 (static QDQ, per-channel weights): the default
    extractor of new collections (``DEFAULT_EXTRACTOR``).

    Same preprocessing, outputs and dimensions as ``efficientnet-lite0``, but a different
    extractor name, so a collection's manifest never mixes fp32 and int8 features. Retrieval
    is within 0.005 of fp32 (P@10, mAP) on Wang-1K, CIFAR-10 and Corel-5K; the top-1 ImageNet
    label differs for 10-24 % of images (bench/bench_int8_quality.py). The graph
    ships in the package (``models/efficientnet-lite0-int8.onnx``, built by
    ``tools/quantize_model.py``); there is no export fallback. Arguments as for the fp32 class.
    """

    name = "efficientnet-lite0-int8"

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (3, 224, 224) uint8 pixels, short side to 224 and center crop: the
        graph takes the pixels themselves, since its input quantisation (scale 1/128, zero
        point 127) maps ``(p - 127) / 128`` back to ``p`` (tools/quantize_model.py). The
        features are the fp32 preprocessing's, bit for bit, and an image costs a quarter
        of the bytes and none of the float arithmetic (docs/pipeline.md)."""
        return self.pixels(image)

    def _model_file(self) -> Path:
        if self.model_path is None:
            path = packaged_int8_onnx()
            if path is None:
                raise BackendUnavailable(
                    f"this cbir install has no int8 model ({packaged_onnx_file(PACKAGED_INT8_ONNX)}"
                    "): build it with tools/quantize_model.py, or use efficientnet-lite0")
            self.model_path = path
        return self.model_path
