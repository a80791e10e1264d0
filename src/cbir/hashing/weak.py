"""Weakly supervised deep hashing from user tags ("wdht") and its supervised fine-tuning.

After Hu et al., *Research on image retrieval based on weakly-supervised deep learning*.
Heads are trained on precomputed CNN features, never the backbone.

* Stage 1, "wdht": an MLP (standardised inputs, sigmoid outputs) trained with the
  contrastive loss of eq. (3) on in-batch pairs whose similarity is the Tanimoto form of
  eqs. (1)-(2) over tag vectors (:class:`TagSets`); margin ``0.5 sqrt(bits)`` by default
  (``margin=1.0`` is the paper's). Codes, eq. (5): bit = 1 where the output is >= 0.5.
* Stage 2, "ws-dsh" / "ws-hashnet": the same network fine-tuned on class labels or
  multi-labels with DSH's or HashNet's loss.

Deterministic from ``seed``; torch is imported only inside fit / encode / load
(:mod:`cbir.hashing.training`). Why the margin, the stage-2 scaling and the relaxations
are what they are, with the measurements: docs/hashing-weak.md.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

import numpy as np

from cbir.errors import BackendUnavailable, IndexMismatch, InvalidRequest
from cbir.hashing.base import ENCODE_CHUNK, HASHERS, HasherBase, pack_bits

if TYPE_CHECKING:
    import torch

    from cbir.hashing.training import Progress

__all__ = ["WDHT", "TagSets", "TagVectorsLike", "TrainedHasher", "WSDSH", "WSHashNet", "label_pairs"]

#: vocabularies up to this size get their whole Tanimoto matrix computed once (<= 16 MB)
FULL_TANIMOTO_MAX = 2048
#: default margin of eq. (3) per sqrt(code length): dissimilar pairs should differ in a quarter of the bits
MARGIN_SCALE = 0.5


class TagVectorsLike(Protocol):
    """What the hashers need from a tag-vector model (cbir.concepts.tag_vectors)."""

    dim: int

    def encode(self, tags: Sequence[str]) -> np.ndarray:
        """(m, dim) float32 vectors of the known tags among ``tags``."""
        ...

    def vector(self, tag: str) -> np.ndarray | None:
        """(dim,) float32 vector of ``tag``, or None when unknown."""
        ...


def _training() -> Any:
    """The torch side (cbir.hashing.training); BackendUnavailable without torch."""
    try:
        from cbir.hashing import training
    except ImportError:  # pragma: no cover - torch is a dev dependency
        raise BackendUnavailable("the trained hashers need torch: "
                                 "pip install torch==2.13.0 'cbir[train]'") from None
    return training


def _int_param(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise InvalidRequest(f"{name} must be an integer >= {lo}; got {value!r}")
    return int(value)


def _float_param(name: str, value: Any, lo: float, hi: float = math.inf, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InvalidRequest(f"{name} must be a number; got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        bound = f"> {lo}" if lo_open else f">= {lo}"
        raise InvalidRequest(
            f"{name} must be {bound}" + (f" and <= {hi}" if hi < math.inf else "") + f"; got {v}"
        )
    return v


# ----------------------------------------------------------------------------- tags


@dataclass(frozen=True, eq=False)
class TagSets:
    """Each image's known tags as vocabulary indices (CSR), with the tag vectors.

    vocab: the V distinct known tags (first-seen order); vectors: (V, dim) float32;
    ptr: (n + 1,) int64 and idx: (nnz,) int64 — image i's tags are ``idx[ptr[i]:ptr[i+1]]``
    (duplicates removed). Memory is O(nnz + V * dim): fine for 100k images.
    """

    vocab: list[str]
    vectors: np.ndarray
    ptr: np.ndarray
    idx: np.ndarray

    @classmethod
    def build(cls, tags: Any, tag_vectors: Any, n: int, what: str = "hasher") -> TagSets:
        """From ``tags`` (n lists of strings) and a :class:`TagVectorsLike`; raise InvalidRequest if bad."""
        if tags is None or tag_vectors is None:
            raise InvalidRequest(
                f"{what} learns from user tags: pass fit(features, tags=<n lists of tags>, "
                "tag_vectors=<object with .dim and .vector(tag)>)"
            )
        if isinstance(tags, str | bytes) or not isinstance(tags, Sequence):
            raise InvalidRequest(
                f"tags must be a sequence of n lists of tag strings; got {type(tags).__name__}"
            )
        if len(tags) != n:
            raise InvalidRequest(f"tags has {len(tags)} entries but there are {n} feature rows")
        dim = getattr(tag_vectors, "dim", None)
        if not callable(getattr(tag_vectors, "vector", None)) or not isinstance(dim, int | np.integer):
            raise InvalidRequest("tag_vectors must have .dim (int) and .vector(tag) -> array or None")
        dim = int(dim)
        lookup: dict[str, int] = {}
        unknown: set[str] = set()
        vecs: list[np.ndarray] = []
        ptr = np.zeros(n + 1, dtype=np.int64)
        flat: list[int] = []
        for i, row in enumerate(tags):
            if isinstance(row, str | bytes) or not isinstance(row, Sequence):
                raise InvalidRequest(f"tags[{i}] must be a list of tag strings; got {type(row).__name__}")
            seen: set[int] = set()
            for tag in row:
                if not isinstance(tag, str):
                    raise InvalidRequest(f"tags[{i}] holds a non-string tag {tag!r}")
                j = lookup.get(tag)
                if j is None:
                    if tag in unknown:
                        continue
                    v = tag_vectors.vector(tag)
                    if v is None:
                        unknown.add(tag)
                        continue
                    v = np.asarray(v, dtype=np.float32).reshape(-1)
                    if v.shape != (dim,) or not np.isfinite(v).all():
                        raise InvalidRequest(f"tag_vectors.vector({tag!r}) is not a finite ({dim},) vector")
                    j = lookup[tag] = len(vecs)
                    vecs.append(v)
                if j not in seen:
                    seen.add(j)
                    flat.append(j)
            ptr[i + 1] = len(flat)
        vectors = np.stack(vecs) if vecs else np.zeros((0, dim), dtype=np.float32)
        return cls(list(lookup), vectors, ptr, np.asarray(flat, dtype=np.int64))

    @property
    def n(self) -> int:
        return len(self.ptr) - 1

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def counts(self) -> np.ndarray:
        """(n,) int64 known tags per image."""
        return np.diff(self.ptr)

    def rows(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each nonzero (nnz_b,) int64, tag index (nnz_b,) int64) for the images ``items``."""
        starts, ends = self.ptr[items], self.ptr[items + 1]
        lens = ends - starts
        row = np.repeat(np.arange(len(items)), lens)
        offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        return row, self.idx[np.repeat(starts, lens) + offs]

    def multi_hot(self, items: np.ndarray) -> np.ndarray:
        """(B, V) float32 0/1: which vocabulary tags each of ``items`` holds."""
        out = np.zeros((len(items), len(self.vocab)), dtype=np.float32)
        row, col = self.rows(items)
        out[row, col] = 1.0
        return out

    def mean_vectors(self) -> np.ndarray:
        """(n, dim) float32: the mean of each image's tag vectors (IDEA eq. 5); 0 without tags."""
        out = np.zeros((self.n, self.dim), dtype=np.float64)
        row, col = self.rows(np.arange(self.n))
        np.add.at(out, row, self.vectors[col])
        c = self.counts
        out[c > 0] /= c[c > 0, None]
        return out.astype(np.float32)

    def _tanimoto(self, tags: np.ndarray) -> np.ndarray:
        """(U, U) float32 Tanimoto similarities (eq. 2) between the vocabulary tags ``tags``."""
        full = self.__dict__.get("_full_tanimoto")
        if full is None and len(self.vocab) <= FULL_TANIMOTO_MAX:
            full = _tanimoto_matrix(self.vectors)
            object.__setattr__(self, "_full_tanimoto", full)  # frozen dataclass: private cache
        if full is not None:
            return full[np.ix_(tags, tags)]
        return _tanimoto_matrix(self.vectors[tags])

    def similarity(self, items: np.ndarray) -> np.ndarray:
        """(B, B) float32 eq. (1): mean Tanimoto similarity over all tag pairs of images i, j.

        Rows/columns of images without a known tag are NaN (they have no similarity).
        Cost: O(U^2 dim + B U^2) with U the distinct tags in the batch; never n x n.
        """
        row, col = self.rows(items)
        uniq, inv = np.unique(col, return_inverse=True)
        counts = np.zeros((len(items), len(uniq)), dtype=np.float32)
        np.add.at(counts, (row, inv), 1.0)
        total = counts @ self._tanimoto(uniq) @ counts.T  # sum over tag pairs
        m = counts.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (total / (m[:, None] * m[None, :])).astype(np.float32)


def _tanimoto_matrix(v: np.ndarray) -> np.ndarray:
    """(U, dim) -> (U, U) float32 ``x.y / (|x|^2 + |y|^2 - x.y)``; 0 where both vectors are 0."""
    v = v.astype(np.float32, copy=False)
    g = v @ v.T
    sq = np.diag(g).copy()
    den = sq[:, None] + sq[None, :] - g
    out = np.zeros_like(g)
    np.divide(g, den, out=out, where=den > 1e-12)
    return out


def label_pairs(labels: Any, n: int) -> tuple[np.ndarray, Any]:
    """Labelled items and an in-batch similarity function from class ids or multi-labels.

    labels: (n,) int class ids (negative = unlabelled) or (n, L) 0/1 multi-labels (all-zero
    rows = unlabelled). Returns (labelled item indices (m,) int64, ``similar(items) -> (B, B)
    bool``): same class, or share at least one label.
    """
    lab = np.asarray(labels)
    if lab.ndim not in (1, 2) or lab.shape[0] != n:
        raise InvalidRequest(
            f"labels must be (n,) class ids or (n, L) 0/1 multi-labels with n = {n}; got shape {lab.shape}"
        )
    if lab.ndim == 1:
        integral = np.issubdtype(lab.dtype, np.integer) or lab.dtype == np.bool_
        if not integral and not (np.issubdtype(lab.dtype, np.floating) and np.all(lab == np.round(lab))):
            raise InvalidRequest(f"class labels must be integers; got dtype {lab.dtype}")
        ids = lab.astype(np.int64)
        return np.flatnonzero(ids >= 0), lambda items: ids[items][:, None] == ids[items][None, :]
    multi = (lab != 0).astype(np.float32)

    def share_a_label(items: np.ndarray) -> np.ndarray:
        y = multi[items]
        return (y @ y.T) > 0

    return np.flatnonzero(multi.any(axis=1)), share_a_label


# ----------------------------------------------------------------------------- base


class TrainedHasher(HasherBase):
    """Base of the torch-trained hashers: progress callback, training curve, model tensors I/O.

    The model's ``state_dict`` is stored as safetensors tensors ``model.<key>`` (float32);
    the JSON ``state`` holds ``arch`` (what rebuilds the module), ``curve`` (one entry per
    epoch: stage, epoch, mean loss, seconds) and ``train`` (timings and statistics).
    Subclasses implement ``_build_module(arch)``.
    """

    def __init__(self, bits: int, *, seed: int = 0, threads: int = 1):
        super().__init__(bits, seed=seed)
        self.threads = _int_param("threads", threads, 1)
        self.params["threads"] = self.threads
        self.arch_: dict[str, Any] = {}
        self.curve_: list[dict[str, Any]] = []
        self.info_: dict[str, Any] = {}
        self.model_arrays_: dict[str, np.ndarray] | None = None
        self._module: torch.nn.Module | None = None
        self._progress: Progress | None = None

    def fit(self, features: np.ndarray, *, progress: Progress | None = None, **supervision: Any) -> Self:
        """Train on (n, d) float32 features and this hasher's supervision keywords.

        progress: optional ``progress(epoch, mean_loss)`` called after every epoch.
        """
        self._progress = progress
        try:
            return super().fit(features, **supervision)
        finally:
            self._progress = None

    def _build_module(self, arch: dict[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    def _set_model(self, module: torch.nn.Module, arch: dict[str, Any]) -> None:
        module.eval()
        self.arch_ = arch
        self._module = module
        self.model_arrays_ = _training().module_arrays(module)

    def _model(self) -> torch.nn.Module:
        if self._module is None:
            raise InvalidRequest(f"{self.name} hasher is not fitted; call fit(features, ...) first")
        return self._module

    def _arrays(self) -> dict[str, np.ndarray]:
        assert self.model_arrays_ is not None
        return {f"model.{k}": v for k, v in self.model_arrays_.items()}

    def _state(self) -> dict[str, Any]:
        return {"arch": self.arch_, "curve": self.curve_, "train": self.info_}

    def _restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        if "arch" not in state:
            raise IndexMismatch(f"{self.name} hasher file has no model architecture in its header")
        self.arch_ = dict(state["arch"])
        self.curve_ = list(state.get("curve", []))
        self.info_ = dict(state.get("train", {}))
        self.model_arrays_ = {k[len("model.") :]: v for k, v in arrays.items() if k.startswith("model.")}
        module = self._build_module(self.arch_)
        _training().load_module_arrays(module, self.model_arrays_, f"{self.name} hasher")
        self._module = module

    def _record(self, curve: list[dict[str, Any]]) -> None:
        """Keep the curve with JSON-safe losses (NaN -> None)."""
        self.curve_ = [
            {**c, "loss": None if c["loss"] is None or not math.isfinite(c["loss"]) else float(c["loss"])}
            for c in curve
        ]


# ----------------------------------------------------------------------------- stage 1


def _build_mlp(arch: dict[str, Any]) -> torch.nn.ModuleDict:
    """``norm`` (buffers ``mean``, ``inv_std``, (in_dim,)) and ``mlp``: Linear, ReLU, Dropout, Linear."""
    import torch

    d = int(arch["in_dim"])
    norm = torch.nn.Module()
    norm.register_buffer("mean", torch.zeros(d))
    norm.register_buffer("inv_std", torch.ones(d))
    mlp = torch.nn.Sequential(
        torch.nn.Linear(d, int(arch["hidden"])),
        torch.nn.ReLU(),
        torch.nn.Dropout(float(arch["dropout"])),
        torch.nn.Linear(int(arch["hidden"]), int(arch["bits"])),
    )
    return torch.nn.ModuleDict({"norm": norm, "mlp": mlp})


def _new_mlp(arch: dict[str, Any], x: np.ndarray) -> torch.nn.ModuleDict:
    """A fresh MLP whose input standardisation is set from the training features (n, d) float32."""
    import torch

    net = _build_mlp(arch)
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    inv_std = np.where(std > 1e-6 * max(float(std.max()), 1e-30), 1.0 / np.maximum(std, 1e-30), 0.0)
    net["norm"].mean.copy_(torch.from_numpy(mean.astype(np.float32)))
    net["norm"].inv_std.copy_(torch.from_numpy(inv_std.astype(np.float32)))
    return net


def mlp_logits(net: torch.nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    """(B, d) float32 features -> (B, bits) pre-sigmoid outputs u of the hash MLP."""
    return net["mlp"]((x - net["norm"].mean) * net["norm"].inv_std)


@HASHERS.register("wdht")
class WDHT(TrainedHasher):
    """Weakly supervised hashing from tags (stage 1): MLP + sigmoid, contrastive loss (eq. 3).

    fit(features (n, d) float32, tags=n lists of str, tag_vectors=TagVectorsLike, progress=None).
    hidden / dropout: the MLP; threshold: eq. (1) similarity above which a pair is similar;
    margin: lambda of eq. (3), None = ``MARGIN_SCALE * sqrt(bits)`` (the paper: 1.0; see the
    module docstring); epochs / batch_size / lr / weight_decay: Adam training.
    """

    name = "wdht"
    supervision: ClassVar[frozenset[str]] = frozenset({"tags", "tag_vectors"})

    def __init__(
        self,
        bits: int,
        *,
        seed: int = 0,
        threads: int = 1,
        hidden: int = 512,
        dropout: float = 0.1,
        threshold: float = 0.4,
        margin: float | None = None,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ):
        super().__init__(bits, seed=seed, threads=threads)
        self.hidden = _int_param("hidden", hidden, 1)
        self.dropout = _float_param("dropout", dropout, 0.0, 0.95)
        self.threshold = _float_param("threshold", threshold, -1.0, 1.0)
        self.margin = None if margin is None else _float_param("margin", margin, 0.0, lo_open=True)
        self.epochs = _int_param("epochs", epochs, 0)
        self.batch_size = _int_param("batch_size", batch_size, 2)
        self.lr = _float_param("lr", lr, 0.0, lo_open=True)
        self.weight_decay = _float_param("weight_decay", weight_decay, 0.0)
        self.params.update(
            hidden=self.hidden,
            dropout=self.dropout,
            threshold=self.threshold,
            margin=self.margin,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
        )

    @property
    def contrastive_margin(self) -> float:
        """lambda of eq. (3): ``margin``, or ``MARGIN_SCALE * sqrt(bits)`` when it is None."""
        return self.margin if self.margin is not None else MARGIN_SCALE * math.sqrt(self.bits)

    def _build_module(self, arch: dict[str, Any]) -> torch.nn.Module:
        return _build_mlp(arch)

    def _fit(self, x: np.ndarray, tags: Any = None, tag_vectors: Any = None, **_: Any) -> None:
        training = _training()
        ts = TagSets.build(tags, tag_vectors, x.shape[0], what=self.name)
        arch = {
            "kind": "mlp",
            "in_dim": x.shape[1],
            "hidden": self.hidden,
            "dropout": self.dropout,
            "bits": self.bits,
        }
        curve: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        with training.torch_session(self.seed, self.threads):
            module = _new_mlp(arch, x)
            stats = self._stage1(module, x, ts, curve, self._progress)
        self.info_ = {"stage1_seconds": round(time.perf_counter() - t0, 3), **stats}
        self._record(curve)
        self._set_model(module, arch)

    def _stage1(
        self,
        module: torch.nn.Module,
        x: np.ndarray,
        ts: TagSets,
        curve: list[dict[str, Any]],
        progress: Progress | None,
    ) -> dict[str, Any]:
        """Train ``module`` with eq. (3) on tag-similarity pairs; returns pair statistics."""
        import torch

        from cbir.hashing import losses

        training = _training()
        tagged = np.flatnonzero(ts.counts > 0)
        if len(tagged) < 2:
            raise InvalidRequest(
                f"{self.name} needs at least 2 images with tags that have a vector; got {len(tagged)} "
                f"(of {ts.n} images, vocabulary of {len(ts.vocab)} known tags)"
            )
        rng = np.random.default_rng([self.seed, 1])
        xt = torch.from_numpy(x)
        seen = {"pairs": 0, "similar": 0}
        margin = self.contrastive_margin

        def batch_loss(items: np.ndarray, step: int) -> torch.Tensor:
            similar = ts.similarity(items) > self.threshold
            b = len(items)
            seen["pairs"] += b * (b - 1) // 2
            seen["similar"] += int((np.triu(similar, 1)).sum())
            f = torch.sigmoid(mlp_logits(module, xt[torch.from_numpy(items)]))
            return losses.contrastive_loss(f, torch.from_numpy(similar), margin=margin)

        training.train_epochs(
            module.parameters(),
            [module],
            epochs=self.epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            batches=lambda e: training.minibatches(tagged, self.batch_size, rng),
            batch_loss=batch_loss,
            curve=curve,
            stage="wdht",
            progress=progress,
        )
        frac = seen["similar"] / seen["pairs"] if seen["pairs"] else None
        if frac is not None and not 0.002 <= frac <= 0.9:
            # e.g. word2vec trained on a few thousand short tag lists: nearly every pair
            # scores above the threshold and the codes collapse to one value
            warnings.warn(
                f"{self.name}: {frac:.1%} of tag pairs are similar at threshold {self.threshold}; "
                "the weak supervision is degenerate (try other tag vectors, e.g. glove, or another "
                "threshold)", stacklevel=2)
        return {
            "tagged_images": int(len(tagged)),
            "vocabulary": len(ts.vocab),
            "similar_pair_fraction": frac,
            "margin": margin,
        }

    # -- encoding: eq. (5) ---------------------------------------------------------------
    def _project(self, x: np.ndarray) -> np.ndarray:
        import torch

        training = _training()
        module = self._model()
        with training.torch_session(None, self.threads), torch.inference_mode():
            y = torch.sigmoid(mlp_logits(module, torch.from_numpy(np.ascontiguousarray(x))))
        return (y.numpy() - np.float32(0.5)).astype(np.float32)

    def encode(self, features: np.ndarray) -> np.ndarray:
        """(n, d) float32 -> packed uint8 (n, ceil(bits/8)); bit = sigmoid output >= 0.5 (eq. 5)."""
        x = self._check_fitted(features)
        out = np.empty((x.shape[0], self.code_size), dtype=np.uint8)
        for i in range(0, x.shape[0], ENCODE_CHUNK):
            out[i : i + ENCODE_CHUNK] = pack_bits(self._project(x[i : i + ENCODE_CHUNK]) >= 0)
        return out


# ----------------------------------------------------------------------------- stage 2


def _shrink_logits(module: Any, x: np.ndarray) -> float:
    """Scale the output layer down so the median |u| over ``x`` (m, d) is at most 1; returns the factor.

    The signs of u, hence the codes, are unchanged. See "Stage 2" in the module docstring.
    """
    import torch

    module.eval()
    with torch.no_grad():
        med = float(mlp_logits(module, torch.from_numpy(np.ascontiguousarray(x))).abs().median())
        f = 1.0 / med if med > 1.0 else 1.0
        last = module["mlp"][-1]
        last.weight.mul_(f)
        last.bias.mul_(f)
    return f


_STAGE1_PARAMS = frozenset(
    {
        "seed",
        "threads",
        "hidden",
        "dropout",
        "threshold",
        "margin",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
    }
)


class _FineTuned(WDHT):
    """WDHT stage 1 (or ``init``), then supervised fine-tuning on label pairs (subclasses: the loss)."""

    supervision: ClassVar[frozenset[str]] = frozenset({"tags", "tag_vectors", "labels"})
    stage_name: ClassVar[str] = ""

    def __init__(
        self,
        bits: int,
        *,
        init: str | None = None,
        ft_epochs: int = 20,
        ft_batch_size: int = 64,
        ft_lr: float = 1e-3,
        **stage1: Any,
    ):
        unknown = sorted(set(stage1) - _STAGE1_PARAMS)
        if unknown:
            raise InvalidRequest(
                f"{self.name}: unknown parameter(s) {unknown}; "
                f"stage-1 parameters are {sorted(_STAGE1_PARAMS)}"
            )
        stage1.setdefault("margin", 1.0)  # the paper's stage 1 (see "Stage 2" in the module docstring)
        super().__init__(bits, **stage1)
        if init is not None and not isinstance(init, str | Path):
            raise InvalidRequest(f"init must be the path of a saved wdht hasher; got {init!r}")
        self.init = None if init is None else str(init)
        self.ft_epochs = _int_param("ft_epochs", ft_epochs, 0)
        self.ft_batch_size = _int_param("ft_batch_size", ft_batch_size, 2)
        self.ft_lr = _float_param("ft_lr", ft_lr, 0.0, lo_open=True)
        self.params.update(
            init=self.init, ft_epochs=self.ft_epochs, ft_batch_size=self.ft_batch_size, ft_lr=self.ft_lr
        )

    def _fit(
        self, x: np.ndarray, tags: Any = None, tag_vectors: Any = None, labels: Any = None, **_: Any
    ) -> None:
        training = _training()
        if labels is None:
            raise InvalidRequest(
                f"{self.name} fine-tunes on labels: pass fit(features, labels=(n,) class ids or (n, L) "
                "multi-labels, tags=..., tag_vectors=...) or set init=<saved wdht> and pass labels"
            )
        items, similar = label_pairs(labels, x.shape[0])
        if len(items) < 2:
            raise InvalidRequest(f"{self.name} needs at least 2 labelled images; got {len(items)}")
        curve: list[dict[str, Any]] = []
        info: dict[str, Any] = {}
        t0 = time.perf_counter()
        with training.torch_session(self.seed, self.threads):
            if self.init is None:
                arch = {
                    "kind": "mlp",
                    "in_dim": x.shape[1],
                    "hidden": self.hidden,
                    "dropout": self.dropout,
                    "bits": self.bits,
                }
                module = _new_mlp(arch, x)
                ts = TagSets.build(tags, tag_vectors, x.shape[0], what=f"{self.name} (stage 1)")
                info.update(self._stage1(module, x, ts, curve, self._progress))
                info["stage1_seconds"] = round(time.perf_counter() - t0, 3)
            else:
                base = WDHT.load(Path(self.init))
                if base.bits != self.bits or base.dim != x.shape[1]:
                    raise IndexMismatch(
                        f"init {self.init}: a {base.bits}-bit wdht on {base.dim}-d features, but this is a "
                        f"{self.bits}-bit {self.name} on {x.shape[1]}-d features"
                    )
                arch, module = dict(base.arch_), base._model()
                module.train()
                curve.extend(base.curve_)
                info.update({k: v for k, v in base.info_.items()}, init=self.init)
            t1 = time.perf_counter()
            if float(info.get("margin") or 1.0) > 1.0:  # a wide-margin stage 1 (files before it: 1.0)
                info["stage2_logit_scale"] = _shrink_logits(module, x[items[:: max(1, len(items) // 2000)]])
            offset = max((int(c["epoch"]) for c in curve), default=0)
            info.update(self._stage2(module, x, items, similar, curve, offset))
            info["stage2_seconds"] = round(time.perf_counter() - t1, 3)
        self.info_ = info
        self._record(curve)
        self._set_model(module, arch)

    def _pair_loss(self, logits: torch.Tensor, similar: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError

    def _stage2(
        self,
        module: torch.nn.Module,
        x: np.ndarray,
        items: np.ndarray,
        similar_fn: Any,
        curve: list[dict[str, Any]],
        offset: int,
    ) -> dict[str, Any]:
        import torch

        training = _training()
        rng = np.random.default_rng([self.seed, 2])
        xt = torch.from_numpy(x)
        seen = {"pairs": 0, "similar": 0}

        def batch_loss(batch: np.ndarray, step: int) -> torch.Tensor:
            similar = similar_fn(batch)
            b = len(batch)
            seen["pairs"] += b * (b - 1) // 2
            seen["similar"] += int(np.triu(similar, 1).sum())
            logits = mlp_logits(module, xt[torch.from_numpy(batch)])
            return self._pair_loss(logits, torch.from_numpy(similar), step)

        training.train_epochs(
            module.parameters(),
            [module],
            epochs=self.ft_epochs,
            lr=self.ft_lr,
            weight_decay=self.weight_decay,
            batches=lambda e: training.minibatches(items, self.ft_batch_size, rng),
            batch_loss=batch_loss,
            curve=curve,
            stage=self.stage_name,
            epoch_offset=offset,
            progress=self._progress,
        )
        return {
            "labelled_images": int(len(items)),
            "label_similar_pair_fraction": seen["similar"] / seen["pairs"] if seen["pairs"] else None,
        }


@HASHERS.register("ws-dsh")
class WSDSH(_FineTuned):
    """WS-DSH: wdht pre-training, then DSH fine-tuning on label pairs (relaxed codes b = u).

    fit(features, labels=..., tags=..., tag_vectors=..., progress=None); with ``init`` (a
    saved wdht) stage 1 is skipped and tags are not needed. dsh_margin: m (None = 2 bits);
    dsh_alpha: weight of the || |b| - 1 ||_1 regulariser; relax: "linear" (b = u, default)
    or "sigmoid" (b = 2 sigmoid(u) - 1); ft_epochs / ft_batch_size / ft_lr: stage 2.
    Other keywords: stage 1, see WDHT.
    """

    name = "ws-dsh"
    stage_name = "dsh"

    def __init__(
        self,
        bits: int,
        *,
        dsh_margin: float | None = None,
        dsh_alpha: float = 0.01,
        relax: str = "linear",
        **kw: Any,
    ):
        super().__init__(bits, **kw)
        if relax not in ("linear", "sigmoid"):
            raise InvalidRequest(f"relax must be 'linear' or 'sigmoid'; got {relax!r}")
        self.relax = relax
        self.params["relax"] = relax
        self.dsh_margin = (
            None if dsh_margin is None else _float_param("dsh_margin", dsh_margin, 0.0, lo_open=True)
        )
        self.dsh_alpha = _float_param("dsh_alpha", dsh_alpha, 0.0)
        self.params.update(dsh_margin=self.dsh_margin, dsh_alpha=self.dsh_alpha)

    def _pair_loss(self, logits: torch.Tensor, similar: torch.Tensor, step: int) -> torch.Tensor:
        import torch

        from cbir.hashing import losses

        b = logits if self.relax == "linear" else 2.0 * torch.sigmoid(logits) - 1.0
        return losses.dsh_loss(b, similar, margin=self.dsh_margin, alpha=self.dsh_alpha)


@HASHERS.register("ws-hashnet")
class WSHashNet(_FineTuned):
    """WS-HashNet: wdht pre-training, then HashNet's weighted pairwise cross-entropy on label pairs.

    h = tanh(beta u / 2) (= 2 sigmoid(u) - 1 at beta = 1); continuation: beta = sqrt(1 +
    0.005 step) as in HashNet, else beta = 1. hashnet_alpha: None = 10 / bits.
    """

    name = "ws-hashnet"
    stage_name = "hashnet"

    def __init__(
        self, bits: int, *, hashnet_alpha: float | None = None, continuation: bool = True, **kw: Any
    ):
        super().__init__(bits, **kw)
        self.hashnet_alpha = (
            None if hashnet_alpha is None else _float_param("hashnet_alpha", hashnet_alpha, 0.0, lo_open=True)
        )
        self.continuation = bool(continuation)
        self.params.update(hashnet_alpha=self.hashnet_alpha, continuation=self.continuation)

    def _pair_loss(self, logits: torch.Tensor, similar: torch.Tensor, step: int) -> torch.Tensor:
        import torch

        from cbir.hashing import losses

        beta = math.sqrt(1.0 + 0.005 * step) if self.continuation else 1.0
        h = torch.tanh(0.5 * beta * logits)
        return losses.hashnet_loss(h, similar, alpha=self.hashnet_alpha)
