"""Unsupervised hashers on float features: LSH, PCAH, ITQ, SH (the usual baselines).

* ``lsh``  — random Gaussian projections, sign (Charikar 2002). Centred by default
  (``center=True``: the training mean is subtracted first), which keeps bits balanced on
  non-negative CNN features; ``center=False`` hashes around the origin (SimHash). By
  default (``orthogonal=True``) the Gaussian directions are orthonormalised in blocks of d
  (QR), i.e. a random rotation as in FAISS ``IndexLSH(rotate_data=True)`` and Super-Bit
  LSH (Ji et al., NIPS 2012): same expected collision probabilities, lower variance.
* ``pcah`` — PCA to ``bits`` dimensions, sign.
* ``itq``  — Gong & Lazebnik (CVPR 2011): PCA to ``bits`` dimensions, then an orthogonal
  rotation R learnt by alternating B = sign(V R) and orthogonal Procrustes, 50 iterations
  from a seeded random rotation; minimises the quantisation loss ||B - V R||_F^2.
* ``sh``   — spectral hashing, Weiss, Torralba & Fergus (NIPS 2008): PCA to min(bits, d)
  dimensions, a uniform distribution on [min, max] per dimension, the ``bits`` analytical
  1-D eigenfunctions sin(pi/2 + k*pi*(y - min)/(max - min)) with the smallest eigenvalues
  (smallest (k / range)^2, the constant one skipped), thresholded at 0.

All are deterministic: LSH and ITQ draw from ``numpy.random.default_rng(seed)``; PCA
eigenvectors get a fixed sign (largest-magnitude entry positive). PCAH and ITQ need
``bits <= d``; LSH and SH accept any ``bits``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cbir.errors import InvalidRequest
from cbir.hashing.base import HASHERS, HasherBase

__all__ = ["ITQ", "LSH", "PCAH", "SH", "pca", "quantization_loss"]

_COV_CHUNK = 65_536


def pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of (n, d) float32 features via the float64 covariance (accumulated in chunks).

    Returns (mean (d,) float64, components (d, c) float64 columns by decreasing variance,
    variances (c,) float64). Each component's largest-magnitude entry is positive, so the
    result does not depend on the eigen-solver's sign choice.
    """
    n, d = x.shape
    mean = x.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d), dtype=np.float64)
    for i in range(0, n, _COV_CHUNK):
        c = x[i : i + _COV_CHUNK].astype(np.float64) - mean
        cov += c.T @ c
    cov /= max(n - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(-vals, kind="stable")[:n_components]
    vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
    flip = vecs[np.argmax(np.abs(vecs), axis=0), np.arange(vecs.shape[1])] < 0
    vecs[:, flip] *= -1.0
    return mean, vecs, vals


def quantization_loss(v: np.ndarray) -> float:
    """||B - V||_F^2 with B = sign(V) in {-1, +1} (+1 where V > 0): the loss ITQ minimises.

    v: (n, bits) real-valued codes, e.g. ``hasher.project(features)``.
    """
    v = np.asarray(v, dtype=np.float64)
    b = np.where(v > 0, 1.0, -1.0)
    return float(np.sum((b - v) ** 2))


def _check_pca_bits(name: str, bits: int, d: int) -> None:
    if bits > d:
        raise InvalidRequest(
            f"{name} projects onto {bits} principal components but the features have only "
            f"{d} dimensions; use bits <= {d}, or 'lsh' / 'sh', which allow more bits than dimensions"
        )


class _LinearHasher(HasherBase):
    """Hashers of the form bit = ((x - mean) @ W > 0); W is (d, bits) float32."""

    def __init__(self, bits: int, *, seed: int = 0):
        super().__init__(bits, seed=seed)
        self.mean_: np.ndarray | None = None
        self.projection_: np.ndarray | None = None

    def _project(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_) @ self.projection_

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "projection": self.projection_}

    def _restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        self.mean_ = arrays["mean"].astype(np.float32)
        self.projection_ = arrays["projection"].astype(np.float32)


@HASHERS.register("lsh")
class LSH(_LinearHasher):
    """Random projections W (d, bits) from N(0, 1); bit = (x - mean) @ W > 0.

    center: subtract the training mean (default) or not (mean = 0, SimHash).
    orthogonal: orthonormalise each block of d columns of W (default) or keep i.i.d. columns.
    """

    name = "lsh"

    def __init__(self, bits: int, *, seed: int = 0, center: bool = True, orthogonal: bool = True):
        super().__init__(bits, seed=seed)
        self.center = bool(center)
        self.orthogonal = bool(orthogonal)
        self.params.update(center=self.center, orthogonal=self.orthogonal)

    def _fit(self, x: np.ndarray, **supervision: Any) -> None:
        d = x.shape[1]
        rng = np.random.default_rng(self.seed)
        w = rng.standard_normal((d, self.bits))
        if self.orthogonal:
            for j in range(0, self.bits, d):
                q, r = np.linalg.qr(w[:, j : j + d])
                w[:, j : j + d] = q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]
        self.projection_ = w.astype(np.float32)
        mean = x.mean(axis=0, dtype=np.float64) if self.center else np.zeros(d)
        self.mean_ = mean.astype(np.float32)


@HASHERS.register("pcah")
class PCAH(_LinearHasher):
    """PCA hashing: the top ``bits`` principal directions, sign. Needs bits <= d."""

    name = "pcah"

    def _fit(self, x: np.ndarray, **supervision: Any) -> None:
        _check_pca_bits(self.name, self.bits, x.shape[1])
        mean, comps, _ = pca(x, self.bits)
        self.mean_ = mean.astype(np.float32)
        self.projection_ = comps.astype(np.float32)


def _random_rotation(rng: np.random.Generator, k: int) -> np.ndarray:
    """A (k, k) float64 random orthogonal matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((k, k)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]


@HASHERS.register("itq")
class ITQ(_LinearHasher):
    """Iterative quantisation: PCA to ``bits`` dims, then rotation R minimising ||B - V R||_F.

    n_iter: alternating updates (50 in the paper). Needs bits <= d. After fit,
    ``loss_history_`` holds the quantisation loss before each rotation update.
    The stored projection is ``components @ R`` (d, bits).
    """

    name = "itq"

    def __init__(self, bits: int, *, seed: int = 0, n_iter: int = 50):
        super().__init__(bits, seed=seed)
        if isinstance(n_iter, bool) or not isinstance(n_iter, int | np.integer) or n_iter < 0:
            raise InvalidRequest(f"n_iter must be a non-negative integer; got {n_iter!r}")
        self.n_iter = int(n_iter)
        self.params["n_iter"] = self.n_iter
        self.loss_history_: list[float] = []

    def _fit(self, x: np.ndarray, **supervision: Any) -> None:
        _check_pca_bits(self.name, self.bits, x.shape[1])
        mean, comps, _ = pca(x, self.bits)
        v = (x.astype(np.float64) - mean) @ comps  # (n, bits)
        rng = np.random.default_rng(self.seed)
        rot = _random_rotation(rng, self.bits)
        history = []
        for _ in range(self.n_iter):
            z = v @ rot
            b = np.where(z > 0, 1.0, -1.0)
            history.append(float(np.sum((b - z) ** 2)))
            # Orthogonal Procrustes: max tr(B^T V R) -> svd(B^T V) = U S W^T, R = W U^T.
            u, _, wt = np.linalg.svd(b.T @ v)
            rot = wt.T @ u.T
        self.loss_history_ = history
        self.mean_ = mean.astype(np.float32)
        self.projection_ = (comps @ rot).astype(np.float32)

    def _state(self) -> dict[str, Any]:
        return {"loss_history": self.loss_history_}

    def _restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        super()._restore(arrays, state)
        self.loss_history_ = list(state.get("loss_history", []))


@HASHERS.register("sh")
class SH(HasherBase):
    """Spectral hashing: bit j = sin(pi/2 + omega_j * (y[:, dim_j] - lo[dim_j])) > 0.

    y = (x - mean) @ components (PCA to min(bits, d) dims); lo/hi = training min/max per
    PCA dim; omega = k * pi / (hi - lo) for the ``bits`` (dim, k >= 1) modes with the
    smallest omega (ties: lower dim first, as a stable sort of the paper's enumeration).
    """

    name = "sh"

    def __init__(self, bits: int, *, seed: int = 0):
        super().__init__(bits, seed=seed)  # seed unused: SH is deterministic
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.lo_: np.ndarray | None = None
        self.bit_dims_: np.ndarray | None = None
        self.omegas_: np.ndarray | None = None

    def _fit(self, x: np.ndarray, **supervision: Any) -> None:
        npca = min(self.bits, x.shape[1])
        mean, comps, _ = pca(x, npca)
        y = (x.astype(np.float64) - mean) @ comps
        lo, hi = y.min(axis=0), y.max(axis=0)
        span = hi - lo
        pad = 1e-6 * max(float(span.max()), 1e-12)
        lo, span = lo - pad, span + 2 * pad  # strictly inside (lo, hi), as the paper's +-eps
        # Modes per dim: k = 1 .. ceil((bits + 1) * span / max span) - 1 (Weiss et al.'s code).
        max_mode = np.ceil((self.bits + 1) * span / span.max()).astype(np.int64)
        dims = np.concatenate([np.full(m - 1, i, dtype=np.int64) for i, m in enumerate(max_mode)])
        ks = np.concatenate([np.arange(1, m, dtype=np.int64) for m in max_mode])
        omegas = ks * np.pi / span[dims]
        pick = np.argsort(omegas**2, kind="stable")[: self.bits]
        self.mean_ = mean.astype(np.float32)
        self.components_ = comps.astype(np.float32)
        self.lo_ = lo.astype(np.float32)
        self.bit_dims_ = dims[pick]
        self.omegas_ = omegas[pick].astype(np.float32)

    def _project(self, x: np.ndarray) -> np.ndarray:
        y = (x - self.mean_) @ self.components_
        y = y[:, self.bit_dims_] - self.lo_[self.bit_dims_]
        return np.sin(np.float32(np.pi / 2) + y * self.omegas_).astype(np.float32)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean_,
            "components": self.components_,
            "lo": self.lo_,
            "bit_dims": self.bit_dims_,
            "omegas": self.omegas_,
        }

    def _restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        self.mean_ = arrays["mean"].astype(np.float32)
        self.components_ = arrays["components"].astype(np.float32)
        self.lo_ = arrays["lo"].astype(np.float32)
        self.bit_dims_ = arrays["bit_dims"].astype(np.int64)
        self.omegas_ = arrays["omegas"].astype(np.float32)
