"""IDEA: context-aware deep weakly supervised hashing ("idea", "idea-l", "idea-a").

After Liu et al. (idea-context-aware-weak-hashing.txt), on precomputed region features (the
backbone is never trained here). Regions are standardised, reduced by a fixed PCA and a
learned projection, pooled by parameter-free context attention (eqs. 1-3, scaled by
``1/sqrt(p)`` by default so the softmax does not saturate), and fed to the hash head
(eq. 4), a tag-vector head (eq. 10) and a tag-prediction head (eq. 12); loss eq. (6), code
eq. (13): bit = ``h1 > 0.5``. ``idea-l`` drops the tag-prediction loss, ``idea-a`` replaces
the attention by average pooling. With ``lambdas=None`` the loss weights are picked on a
validation split scored by tag-overlap relevance (never class labels).

``fit``/``encode`` need ``regions=`` (n, n_regions, c); ``reduce`` + ``encode(reduced=)``
shares one reduction between models with the same ``reduction_key()``. Each deviation from
the paper (standardisation, centred tag vectors, attention scale, 30 epochs, 512 units) and
its measurements: docs/hashing-idea.md.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cbir.errors import IndexMismatch, InvalidRequest
from cbir.hashing.base import HASHERS, pack_bits
from cbir.hashing.weak import TagSets, TrainedHasher, _float_param, _int_param, _training

if TYPE_CHECKING:
    import torch

    from cbir.hashing.training import Progress

__all__ = ["DEFAULT_GRID", "IDEA", "IDEAAvgPool", "IDEANoTagLoss", "idea_forward"]

#: (l1, l3, l4) settings tried by default; the paper's first
DEFAULT_GRID: list[list[float]] = [
    [10.0, 10.0, 0.01],
    [1.0, 10.0, 0.01],
    [10.0, 1.0, 0.01],
    [10.0, 10.0, 1.0],
]
#: images per forward pass when encoding
ENCODE_BATCH = 512
#: images sampled to estimate the region channels' mean and standard deviation, and the PCA
SCALE_SAMPLE = 400
#: at most this many validation images (the criterion ranks all of them for each of them)
VAL_MAX = 2000


def build_idea_net(arch: dict[str, Any]) -> torch.nn.ModuleDict:
    """IDEA layers: ``reduce`` (buffers), ``proj`` (or Identity), ``fc1``-``fc3``, ``fc4`` (if a vocab)."""
    import torch

    c, q, p = int(arch["region_dim"]), int(arch["reduced_dim"]), int(arch["proj_dim"])
    reduce = torch.nn.Module()
    reduce.register_buffer("mean", torch.zeros(c))
    reduce.register_buffer("inv_std", torch.ones(c))
    if arch["pca"]:
        reduce.register_buffer("components", torch.zeros(c, q))
    layers: dict[str, torch.nn.Module] = {
        "reduce": reduce,
        "proj": torch.nn.Linear(q, p, bias=False) if arch["project"] else torch.nn.Identity(),
        "fc1": torch.nn.Linear(p, int(arch["hidden"])),
        "fc2": torch.nn.Linear(int(arch["hidden"]), int(arch["bits"])),
        "fc3": torch.nn.Linear(int(arch["hidden"]), int(arch["tag_dim"])),
    }
    if int(arch["vocab"]) > 0:
        layers["fc4"] = torch.nn.Linear(p, int(arch["vocab"]))
    return torch.nn.ModuleDict(layers)


def idea_reduce(net: torch.nn.ModuleDict, regions: torch.Tensor) -> torch.Tensor:
    """Fixed part: (B, R, c) float32 regions -> (B, R, reduced_dim) standardised (and PCA-reduced)."""
    red = net["reduce"]
    z = (regions - red.mean) * red.inv_std
    return z @ red.components if hasattr(red, "components") else z


def idea_head(net: torch.nn.ModuleDict, z: torch.Tensor, arch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Learned part on (B, R, reduced_dim) float32: projection, eqs. (2)-(4), (10), (12).

    Returns ``x`` (B, p) image representation (eq. 3, or the plain mean for idea-a),
    ``h1`` (B, bits) sigmoid hash outputs (eq. 4), ``h2`` (B, tag_dim) tanh embedding
    (eq. 10) and, when the net has the tag head, ``logits`` (B, vocab) (eq. 12, before the
    softmax).
    """
    import torch

    x_reg = net["proj"](z)  # (B, R, p)
    if arch["context"]:
        scores = x_reg @ x_reg.transpose(1, 2)  # (B, R, R): A = X X^T
        if arch["scale_attention"]:
            scores = scores / math.sqrt(x_reg.shape[-1])
        attn = torch.softmax(scores, dim=-1)  # row-wise, eq. (2)
        x_bar = x_reg + attn @ x_reg  # X_bar = X + A X, eq. (3)
    else:
        x_bar = x_reg
    x = x_bar.mean(dim=1)  # average pooling over the regions
    h_tilde = torch.relu(net["fc1"](x))
    out = {"x": x, "h1": torch.sigmoid(net["fc2"](h_tilde)), "h2": torch.tanh(net["fc3"](h_tilde))}
    if "fc4" in net:
        out["logits"] = net["fc4"](x)
    return out


def idea_forward(
    net: torch.nn.ModuleDict, regions: torch.Tensor, arch: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The whole IDEA forward pass on (B, n_regions, c) float32 regions (see :func:`idea_head`)."""
    return idea_head(net, idea_reduce(net, regions), arch)


def _pca_components(rows: np.ndarray, q: int) -> tuple[np.ndarray, float]:
    """Top-q principal directions (c, q) float32 of (m, c) centred rows, and the variance fraction kept.

    Each direction's largest-magnitude entry is positive (deterministic signs).
    """
    cov = (rows.T @ rows).astype(np.float64) / max(len(rows) - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(-vals, kind="stable")[:q]
    vecs = vecs[:, order]
    flip = vecs[np.argmax(np.abs(vecs), axis=0), np.arange(q)] < 0
    vecs[:, flip] *= -1.0
    total = float(np.clip(vals, 0, None).sum())
    kept = float(np.clip(vals[order], 0, None).sum()) / total if total > 0 else 1.0
    return vecs.astype(np.float32), kept


def _as_regions(regions: Any, n: int, what: str, region_dim: int | None = None) -> Any:
    """Check (n, n_regions, c) float regions without copying them (memory maps stay mapped)."""
    if regions is None:
        raise InvalidRequest(
            f"{what} encodes images from their region features: pass regions=(n, n_regions, c) "
            "float16/float32 (the 7x7 grid, n_regions = 49) along with the pooled features"
        )
    arr = regions if isinstance(regions, np.ndarray) else np.asarray(regions)
    if arr.ndim != 3 or arr.shape[0] != n or arr.shape[1] < 1:
        raise InvalidRequest(
            f"regions must have shape ({n}, n_regions, c) to match the {n} feature rows; got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidRequest(f"regions must be float16 or float32; got dtype {arr.dtype}")
    if region_dim is not None and arr.shape[2] != region_dim:
        raise IndexMismatch(
            f"regions have {arr.shape[2]} channels but the hasher was fitted on {region_dim}-channel "
            "regions; use regions from the same extractor"
        )
    return arr


def _region_batch(regions: Any, items: np.ndarray) -> np.ndarray:
    """(B, n_regions, c) float32 rows ``items`` of ``regions``; raise InvalidRequest if not finite."""
    r = np.ascontiguousarray(regions[items], dtype=np.float32)
    if not np.isfinite(r).all():
        raise InvalidRequest("regions contain NaN or infinity")
    return r


def _check_lambdas(value: Any, what: str) -> list[float]:
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 3:
        raise InvalidRequest(f"{what} must be [l1, l3, l4] (three numbers >= 0); got {value!r}")
    return [_float_param(f"{what}[{i}]", v, 0.0) for i, v in enumerate(value)]


@HASHERS.register("idea")
class IDEA(TrainedHasher):
    """IDEA hasher (context attention + L1-L4). See the module docstring for every choice.

    pca_dim: fixed PCA of the standardised regions (None = none); proj_dim: learned
    projection before the attention (None = none); hidden: h~ units (512; the paper 256);
    scale_attention: softmax(X X^T / sqrt(p)) (True) or softmax(X X^T) (False);
    center_tags: subtract the training mean of the tag representations (True) or not (paper);
    margin: m of the hinge loss (eq. 9; not given in the paper); lambdas: [l1, l3, l4] or
    None to choose them on a validation split from ``grid`` (None = DEFAULT_GRID) with
    ``val_fraction`` of the tagged images and ``grid_epochs`` (None = max(1, epochs // 2))
    per setting; epochs / batch_size / lr / weight_decay: Adam training.
    """

    name = "idea"
    supervision: ClassVar[frozenset[str]] = frozenset({"tags", "tag_vectors", "regions"})
    #: context attention (False: idea-a, average pooling)
    context: ClassVar[bool] = True
    #: tag-prediction loss L4 and its head (False: idea-l)
    tag_prediction: ClassVar[bool] = True

    def __init__(
        self,
        bits: int,
        *,
        seed: int = 0,
        threads: int = 1,
        pca_dim: int | None = 256,
        proj_dim: int | None = 256,
        hidden: int = 512,
        scale_attention: bool = True,
        center_tags: bool = True,
        margin: float = 1.0,
        lambdas: list[float] | None = None,
        grid: list[list[float]] | None = None,
        val_fraction: float = 0.2,
        grid_epochs: int | None = None,
        epochs: int = 30,
        batch_size: int = 50,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ):
        super().__init__(bits, seed=seed, threads=threads)
        self.pca_dim = None if pca_dim is None else _int_param("pca_dim", pca_dim, 1)
        self.proj_dim = None if proj_dim is None else _int_param("proj_dim", proj_dim, 1)
        self.hidden = _int_param("hidden", hidden, 1)
        self.scale_attention = bool(scale_attention)
        self.center_tags = bool(center_tags)
        self.margin = _float_param("margin", margin, 0.0)
        self.lambdas = None if lambdas is None else self._fix_l4(_check_lambdas(lambdas, "lambdas"))
        if grid is not None and (isinstance(grid, str) or not hasattr(grid, "__len__") or len(grid) == 0):
            raise InvalidRequest(f"grid must be a non-empty list of [l1, l3, l4]; got {grid!r}")
        self.grid = None if grid is None else [_check_lambdas(g, "grid entry") for g in grid]
        self.val_fraction = _float_param("val_fraction", val_fraction, 0.0, 0.9, lo_open=True)
        self.grid_epochs = None if grid_epochs is None else _int_param("grid_epochs", grid_epochs, 1)
        self.epochs = _int_param("epochs", epochs, 0)
        self.batch_size = _int_param("batch_size", batch_size, 2)
        self.lr = _float_param("lr", lr, 0.0, lo_open=True)
        self.weight_decay = _float_param("weight_decay", weight_decay, 0.0)
        self.params.update(
            pca_dim=self.pca_dim,
            proj_dim=self.proj_dim,
            hidden=self.hidden,
            scale_attention=self.scale_attention,
            center_tags=self.center_tags,
            margin=self.margin,
            lambdas=self.lambdas,
            grid=self.grid,
            val_fraction=self.val_fraction,
            grid_epochs=self.grid_epochs,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
        )

    def _fix_l4(self, lam: list[float]) -> list[float]:
        return lam if self.tag_prediction else [lam[0], lam[1], 0.0]

    def candidate_lambdas(self) -> list[list[float]]:
        """The (l1, l3, l4) settings the validation search tries (l4 = 0 for idea-l; no duplicates)."""
        out: list[list[float]] = []
        for g in self.grid if self.grid is not None else DEFAULT_GRID:
            lam = self._fix_l4(list(g))
            if lam not in out:
                out.append(lam)
        return out

    def _build_module(self, arch: dict[str, Any]) -> torch.nn.Module:
        return build_idea_net(arch)

    # -- training ------------------------------------------------------------------------
    def _fit(
        self, x: np.ndarray, tags: Any = None, tag_vectors: Any = None, regions: Any = None, **_: Any
    ) -> None:
        n = x.shape[0]
        regions = _as_regions(regions, n, self.name)
        ts = TagSets.build(tags, tag_vectors, n, what=self.name)
        tagged = np.flatnonzero(ts.counts > 0)
        if len(tagged) < 2:
            raise InvalidRequest(f"{self.name} needs at least 2 images with tags that have a vector")
        training = _training()
        t0 = time.perf_counter()
        c = int(regions.shape[2])
        pca = self.pca_dim is not None and self.pca_dim < c
        q = int(self.pca_dim) if pca else c
        arch = {
            "kind": "idea",
            "region_dim": c,
            "pca": pca,
            "reduced_dim": q,
            "project": self.proj_dim is not None,
            "proj_dim": int(self.proj_dim if self.proj_dim is not None else q),
            "hidden": self.hidden,
            "bits": self.bits,
            "tag_dim": ts.dim,
            "vocab": len(ts.vocab) if self.tag_prediction else 0,
            "context": self.context,
            "scale_attention": self.scale_attention,
        }
        info: dict[str, Any] = {"tagged_images": int(len(tagged)), "vocabulary": len(ts.vocab)}
        with training.torch_session(self.seed, self.threads):
            # Fixed input transform from a sample: channel mean / std, then PCA.
            rng = np.random.default_rng([self.seed, 0])
            sample = _region_batch(regions, np.sort(rng.choice(n, min(n, SCALE_SAMPLE), replace=False)))
            rows = sample.reshape(-1, c)
            mean = rows.mean(axis=0, dtype=np.float64)
            std = rows.std(axis=0, dtype=np.float64)
            inv_std = np.where(std > 1e-6 * max(float(std.max()), 1e-30), 1.0 / np.maximum(std, 1e-30), 0.0)
            fixed: dict[str, np.ndarray] = {
                "reduce.mean": mean.astype(np.float32),
                "reduce.inv_std": inv_std.astype(np.float32),
            }
            if pca:
                z = (rows - mean.astype(np.float32)) * inv_std.astype(np.float32)
                fixed["reduce.components"], info["pca_variance_kept"] = _pca_components(z, q)
            template = self._new_net(arch, fixed)
            z_all = self._reduce_all(template, regions, q)  # (n, R, q) float16
            info["reduce_seconds"] = round(time.perf_counter() - t0, 3)
            t_all = ts.mean_vectors()
            if self.center_tags:
                tagged_mean = t_all[tagged].mean(axis=0, dtype=np.float64).astype(np.float32)
                t_all[tagged] -= tagged_mean  # untagged rows stay 0 (they only enter L1)
                info["tag_mean_norm"] = float(np.linalg.norm(tagged_mean))
            if self.lambdas is not None:
                lam = self.lambdas
            else:
                t1 = time.perf_counter()
                lam, info["grid"] = self._search(z_all, ts, t_all, tagged, arch, fixed)
                info["grid_seconds"] = round(time.perf_counter() - t1, 3)
            t1 = time.perf_counter()
            curve: list[dict[str, Any]] = []
            net = self._new_net(arch, fixed)
            self._train(net, arch, z_all, ts, t_all, np.arange(n), lam, self.epochs, curve, self._progress)
            del z_all
        info.update(lambdas=lam, train_seconds=round(time.perf_counter() - t1, 3))
        info["total_seconds"] = round(time.perf_counter() - t0, 3)
        self.info_ = info
        self._record(curve)
        self._set_model(net, arch)

    @staticmethod
    def _new_net(arch: dict[str, Any], fixed: dict[str, np.ndarray]) -> torch.nn.ModuleDict:
        """A freshly initialised net with the fixed reduction tensors ``fixed`` (state_dict keys) set."""
        import torch

        net = build_idea_net(arch)
        state = net.state_dict()
        for k, v in fixed.items():
            state[k].copy_(torch.from_numpy(v))
        return net

    @staticmethod
    def _reduce_all(net: torch.nn.ModuleDict, regions: Any, q: int) -> np.ndarray:
        """(n, R, q) float16: every image's standardised (PCA-reduced) regions."""
        import torch

        n = regions.shape[0]
        out = np.empty((n, regions.shape[1], q), dtype=np.float16)
        with torch.inference_mode():
            for i in range(0, n, ENCODE_BATCH):
                batch = torch.from_numpy(_region_batch(regions, np.arange(i, min(n, i + ENCODE_BATCH))))
                out[i : i + ENCODE_BATCH] = idea_reduce(net, batch).numpy()
        return out

    def _train(
        self,
        net: torch.nn.ModuleDict,
        arch: dict[str, Any],
        z_all: np.ndarray,
        ts: TagSets,
        t_all: np.ndarray,
        items: np.ndarray,
        lam: list[float],
        epochs: int,
        curve: list[dict[str, Any]],
        progress: Progress | None,
        stage: str = "idea",
    ) -> None:
        """Minimise eq. (6) over minibatches of ``items`` for ``epochs`` epochs.

        z_all: (n, R, reduced_dim) float16 reduced regions; t_all: (n, tag_dim) float32 eq. (5).
        """
        import torch

        from cbir.hashing import losses

        training = _training()
        l1, l3, l4 = lam
        has_tags = ts.counts > 0
        rng = np.random.default_rng([self.seed, 4, len(items), epochs])

        def batch_loss(batch: np.ndarray, step: int) -> torch.Tensor:
            out = idea_head(net, torch.from_numpy(z_all[batch].astype(np.float32)), arch)
            valid = torch.from_numpy(has_tags[batch])
            t = torch.from_numpy(t_all[batch])
            loss = l1 * losses.idea_quantization_loss(out["h1"])
            loss = loss + losses.idea_pairwise_loss(out["h1"], t, valid=valid)
            if l3 > 0:
                loss = loss + l3 * losses.idea_hinge_loss(out["h2"], t, margin=self.margin, valid=valid)
            if l4 > 0 and "logits" in out:
                y = torch.from_numpy(ts.multi_hot(batch))
                loss = loss + l4 * losses.idea_tag_loss(out["logits"], y, valid=valid)
            return loss

        training.train_epochs(
            net.parameters(),
            [net],
            epochs=epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            batches=lambda e: training.minibatches(items, self.batch_size, rng),
            batch_loss=batch_loss,
            curve=curve,
            stage=stage,
            progress=progress,
        )

    def _search(
        self,
        z_all: np.ndarray,
        ts: TagSets,
        t_all: np.ndarray,
        tagged: np.ndarray,
        arch: dict[str, Any],
        fixed: dict[str, np.ndarray],
    ) -> tuple[list[float], list[dict[str, Any]]]:
        """Pick (l1, l3, l4) by validation mAP against tag-overlap relevance (weak supervision only)."""
        rng = np.random.default_rng([self.seed, 2])
        n_val = min(VAL_MAX, max(2, int(round(self.val_fraction * len(tagged)))))
        if len(tagged) - n_val < 2:
            raise InvalidRequest(
                f"{self.name}: {len(tagged)} tagged images are too few to hold out {n_val} for choosing "
                "the loss weights; pass lambdas=[l1, l3, l4]"
            )
        val = np.sort(rng.choice(tagged, n_val, replace=False))
        train = np.setdiff1d(np.arange(ts.n), val)
        epochs = self.grid_epochs if self.grid_epochs is not None else max(1, self.epochs // 2)
        results: list[dict[str, Any]] = []
        best: tuple[float, list[float]] | None = None
        for lam in self.candidate_lambdas():
            net = self._new_net(arch, fixed)
            curve: list[dict[str, Any]] = []
            self._train(net, arch, z_all, ts, t_all, train, lam, epochs, curve, None, stage="grid")
            codes = pack_bits(self._h1_reduced(net, arch, z_all[val]) > 0.5)
            score = tag_overlap_map(codes, ts.multi_hot(val))
            results.append({"lambdas": lam, "val_map": score, "epochs": epochs})
            if best is None or score > best[0]:
                best = (score, lam)
        assert best is not None
        return best[1], results

    # -- encoding: eq. (13) --------------------------------------------------------------
    def _h1_reduced(self, net: torch.nn.ModuleDict, arch: dict[str, Any], z: np.ndarray) -> np.ndarray:
        """(m, bits) float32 h1 from (m, R, reduced_dim) reduced regions."""
        import torch

        out = np.empty((z.shape[0], self.bits), dtype=np.float32)
        net.eval()
        with torch.inference_mode():
            for i in range(0, z.shape[0], ENCODE_BATCH):
                batch = torch.from_numpy(z[i : i + ENCODE_BATCH].astype(np.float32))
                out[i : i + ENCODE_BATCH] = idea_head(net, batch, arch)["h1"].numpy()
        return out

    def reduction_key(self) -> str:
        """sha256 of the fixed input transform (channel mean / std and PCA) of the fitted model.

        Two fitted IDEA models with the same key map regions to the same reduced regions
        (:meth:`reduce`), so a caller encoding one database with several models (every code
        length, idea / idea-l / idea-a fitted on the same images with the same seed) can
        reduce it once and pass ``reduced=`` to :meth:`encode`.
        """
        import hashlib

        self._model()
        h = hashlib.sha256(f"{self.arch_['region_dim']}:{self.arch_['reduced_dim']}".encode())
        for k in sorted(self.model_arrays_ or {}):
            if k.startswith("reduce."):
                h.update(k.encode())
                h.update(np.ascontiguousarray(self.model_arrays_[k], dtype=np.float32).tobytes())
        return h.hexdigest()

    def reduce(self, regions: Any) -> np.ndarray:
        """(n, n_regions, c) regions -> (n, n_regions, reduced_dim) float16, the model's fixed part."""
        import torch

        net = self._model()
        n = 0 if regions is None or np.ndim(regions) == 0 else np.shape(regions)[0]
        r = _as_regions(regions, n, self.name, int(self.arch_["region_dim"]))
        with _training().torch_session(None, self.threads), torch.inference_mode():
            return self._reduce_all(net, r, int(self.arch_["reduced_dim"]))

    def _h1_from(self, features: np.ndarray, regions: Any, reduced: Any) -> np.ndarray:
        x = self._check_fitted(features)
        n = x.shape[0]
        if reduced is None:
            r = _as_regions(regions, n, self.name, int(self.arch_["region_dim"]))
            return self._h1(r)
        if regions is not None:
            raise InvalidRequest("pass regions= or reduced=, not both")
        z = np.asarray(reduced)
        q = int(self.arch_["reduced_dim"])
        if z.ndim != 3 or z.shape[0] != n or z.shape[2] != q:
            raise InvalidRequest(f"reduced regions must have shape ({n}, n_regions, {q}); got {z.shape}")
        net = self._model()
        with _training().torch_session(None, self.threads):
            return self._h1_reduced(net, self.arch_, z)

    def _h1(self, regions: Any) -> np.ndarray:
        """(n, bits) float32 sigmoid outputs h1 of the fitted model for (n, R, c) regions."""
        import torch

        training = _training()
        net = self._model()
        n = regions.shape[0]
        out = np.empty((n, self.bits), dtype=np.float32)
        with training.torch_session(None, self.threads), torch.inference_mode():
            for i in range(0, n, ENCODE_BATCH):
                batch = torch.from_numpy(_region_batch(regions, np.arange(i, min(n, i + ENCODE_BATCH))))
                # through float16, as in training and in encode(reduced=): the same codes either way
                z = idea_reduce(net, batch).to(torch.float16).to(torch.float32)
                out[i : i + ENCODE_BATCH] = idea_head(net, z, self.arch_)["h1"].numpy()
        return out

    def project(self, features: np.ndarray, regions: Any = None, *, reduced: Any = None) -> np.ndarray:
        """``h1 - 0.5`` (n, bits) float32 from the features and their regions (or :meth:`reduce` of them)."""
        return self._h1_from(features, regions, reduced) - np.float32(0.5)

    def encode(self, features: np.ndarray, regions: Any = None, *, reduced: Any = None) -> np.ndarray:
        """(n, d) features + (n, n_regions, c) regions -> packed uint8 (n, ceil(bits/8)); bit = h1 > 0.5.

        reduced: instead of ``regions``, their :meth:`reduce` (same result, see :meth:`reduction_key`).
        """
        return pack_bits(self._h1_from(features, regions, reduced) > 0.5)

    def _project(self, x: np.ndarray) -> np.ndarray:
        raise InvalidRequest(f"{self.name} needs the region features: call encode(features, regions=...)")


@HASHERS.register("idea-l")
class IDEANoTagLoss(IDEA):
    """IDEA-L ablation: no tag-prediction loss (l4 = 0, no W4 head)."""

    name = "idea-l"
    tag_prediction = False


@HASHERS.register("idea-a")
class IDEAAvgPool(IDEA):
    """IDEA-A ablation: average pooling of the (projected) regions instead of context attention."""

    name = "idea-a"
    context = False


def tag_overlap_map(codes: np.ndarray, tags_multi_hot: np.ndarray) -> float:
    """Validation criterion: mAP of a Hamming ranking against tag-overlap relevance.

    codes: (m, c) packed uint8 codes of the validation images; tags_multi_hot: (m, V) 0/1.
    Each image queries the others (itself left out); relevant = shares at least one tag;
    AP convention "all" over the full ranking, ties by index; queries with no relevant
    image are left out of the mean.
    """
    from cbir.eval.metrics import mean_average_precision, rank_by_score, ranked_relevance
    from cbir.hashing.base import hamming_distances

    dist = hamming_distances(codes, codes)
    np.fill_diagonal(dist, 8 * codes.shape[1] + 1)  # farther than any code: self ranks last, then is cut
    ranking = rank_by_score(dist, descending=False)[:, :-1]
    rel = ranked_relevance(tags_multi_hot, tags_multi_hot, ranking)
    return mean_average_precision(rel, ignore_empty=True)
