"""Losses of the trained hashers (torch): WDHT contrastive, DSH, HashNet and IDEA eqs. (7)-(12).

This module imports torch at import time; :mod:`cbir.hashing` never imports it (the hashers
in :mod:`cbir.hashing.weak` and :mod:`cbir.hashing.idea` import it on first ``fit``/``load``).

Conventions shared by the pairwise losses (a minibatch of ``B`` items):

* ``codes``: ``(B, k)`` float tensors, one relaxed code per item.
* ``similar``: ``(B, B)`` bool (or 0/1) tensor, ``similar[i, j]`` = the pair is similar.
* ``pairs``: optional ``(B, B)`` bool mask of the pairs that count; by default every
  unordered pair ``i < j`` counts once (the upper triangle). Entries with ``i >= j`` are
  always ignored, so a symmetric mask counts each pair once.
* ``reduction``: ``"sum"`` over the counted pairs (the papers' written form) or ``"mean"``
  (that sum divided by the number of counted pairs; 0 when there is none).

Readings of the papers (where the text is ambiguous):

* WDHT eq. (3) (weakly-supervised-deep-hashing): ``L = sum_sim ||f_i - f_j||_2 +
  sum_dissim max(0, lambda - ||f_i - f_j||_2)``, lambda = 1. Eq. (4) defines ``||.||_2`` as
  the square root of the sum of squares, so both terms use the **plain (unsquared)**
  Euclidean distance; we implement exactly that. ``sqrt`` gets ``eps`` inside
  (``sqrt(d^2 + eps)``) so the gradient at ``f_i = f_j`` is 0, not NaN.
* DSH (Liu et al., CVPR 2016): ``1/2 s D + 1/2 (1 - s) max(m - D, 0) + alpha (|| |b_i| - 1 ||_1
  + || |b_j| - 1 ||_1)`` per pair with ``D = ||b_i - b_j||^2`` (squared), ``m = 2k``, alpha =
  0.01, codes relaxed in R^k (we pass ``b = 2 sigmoid(u) - 1``). Both items' regularisers are
  charged to each pair, as in the DSH paper.
* HashNet (Cao et al., ICCV 2017): ``w_ij (log(1 + exp(alpha <h_i, h_j>)) - alpha s_ij <h_i, h_j>)``
  with ``w_ij = |S| / |S_1|`` for similar and ``|S| / |S_0|`` for dissimilar pairs (``S`` the
  counted pairs, ``S_1`` / ``S_0`` the similar / dissimilar ones). With ``reduction="mean"``
  (divide by ``|S|``) that is *mean loss over similar pairs + mean loss over dissimilar
  pairs*. ``log(1 + exp(x))`` is computed stably (softplus). Default alpha = 10 / k, the
  ``sigmoid_param`` of the HashNet release.
* IDEA (idea-context-aware-weak-hashing), with ``l`` the code length (the paper's ``1/L``
  in eqs. 7-8 is read as 1 / code length, since ``I`` is "the all-ones vector of length l"):
  eq. (7) ``L1 = -sum_i (1/l) ||h1_i - 0.5||^2``; eq. (8) ``L2 = sum_i sum_j [(1/l)
  ||h1_i - h1_j||^2 - 1/2 (1 - cos(t_i, t_j))]^2`` over **all ordered pairs** (i = j gives
  0); eq. (9) ``L3 = sum_i sum_{j != i} max(0, m + t_j . h2_i - t_i . h2_i)``; eq. (11)
  ``L4 = 1/N sum_i -sum_c y_ic log p_ic``, ``p_i = softmax(W4 x_i + b4)`` (eq. 12) with
  multi-hot ``y``. Items whose tag vector is unknown (``valid`` False) are left out of
  L2-L4 (not of L1). IDEA's default reduction is ``"sum"``, the paper's, so its balance
  parameters (10, 10, 0.01) keep their meaning for a minibatch of 50 as in the paper.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from cbir.errors import InvalidRequest

Reduction = Literal["sum", "mean"]

__all__ = [
    "Reduction",
    "contrastive_loss",
    "dsh_loss",
    "hashnet_loss",
    "idea_hinge_loss",
    "idea_pairwise_loss",
    "idea_quantization_loss",
    "idea_tag_loss",
    "pair_mask",
]

#: added under the square root of eq. (3)'s Euclidean distance (value error <= 1e-6)
DIST_EPS = 1e-12


def _check_pairwise(codes: torch.Tensor, similar: torch.Tensor) -> None:
    if codes.ndim != 2:
        raise InvalidRequest(f"codes must be a (B, k) tensor; got shape {tuple(codes.shape)}")
    b = codes.shape[0]
    if tuple(similar.shape) != (b, b):
        raise InvalidRequest(f"similar must be a ({b}, {b}) matrix; got shape {tuple(similar.shape)}")


def _reduce(per_pair: torch.Tensor, mask: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Sum (or mean) of ``per_pair`` (B, B) over the True cells of ``mask``."""
    total = torch.where(mask, per_pair, torch.zeros_like(per_pair)).sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        count = mask.sum()
        return total / count.clamp(min=1).to(per_pair.dtype)
    raise InvalidRequest(f"reduction must be 'sum' or 'mean'; got {reduction!r}")


def pair_mask(n: int, pairs: torch.Tensor | None = None, device: torch.device | None = None) -> torch.Tensor:
    """(n, n) bool: the unordered pairs i < j that count (``pairs`` restricted to the upper triangle)."""
    upper = torch.ones(n, n, dtype=torch.bool, device=device).triu(diagonal=1)
    if pairs is None:
        return upper
    if tuple(pairs.shape) != (n, n):
        raise InvalidRequest(f"pairs must be a ({n}, {n}) mask; got shape {tuple(pairs.shape)}")
    return upper & pairs.to(torch.bool)


def contrastive_loss(
    codes: torch.Tensor,
    similar: torch.Tensor,
    *,
    margin: float = 1.0,
    pairs: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """WDHT eq. (3): ``||f_i - f_j||`` for similar pairs, ``max(0, margin - ||f_i - f_j||)`` else.

    codes: (B, k) float real-valued codes (the sigmoid outputs); similar: (B, B) bool.
    Euclidean distance, not squared (eq. 4). Returns a scalar tensor.
    """
    _check_pairwise(codes, similar)
    mask = pair_mask(codes.shape[0], pairs, codes.device)
    diff = codes[:, None, :] - codes[None, :, :]
    dist = torch.sqrt((diff * diff).sum(-1) + DIST_EPS)
    sim = similar.to(torch.bool)
    per_pair = torch.where(sim, dist, F.relu(margin - dist))
    return _reduce(per_pair, mask, reduction)


def dsh_loss(
    codes: torch.Tensor,
    similar: torch.Tensor,
    *,
    margin: float | None = None,
    alpha: float = 0.01,
    pairs: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """DSH: ``1/2 s D + 1/2 (1-s) max(m - D, 0) + alpha (|| |b_i| - 1 ||_1 + || |b_j| - 1 ||_1)``.

    codes: (B, k) relaxed codes ``b`` (near +-1 when binary); similar: (B, B) bool;
    ``D = ||b_i - b_j||^2``; margin m defaults to 2k (the DSH paper). Scalar tensor.
    """
    _check_pairwise(codes, similar)
    k = codes.shape[1]
    m = 2.0 * k if margin is None else float(margin)
    mask = pair_mask(codes.shape[0], pairs, codes.device)
    diff = codes[:, None, :] - codes[None, :, :]
    d2 = (diff * diff).sum(-1)
    s = similar.to(codes.dtype)
    reg = (codes.abs() - 1.0).abs().sum(-1)  # (B,) || |b_i| - 1 ||_1
    per_pair = 0.5 * s * d2 + 0.5 * (1.0 - s) * F.relu(m - d2) + alpha * (reg[:, None] + reg[None, :])
    return _reduce(per_pair, mask, reduction)


def hashnet_loss(
    codes: torch.Tensor,
    similar: torch.Tensor,
    *,
    alpha: float | None = None,
    pairs: torch.Tensor | None = None,
    weighted: bool = True,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """HashNet weighted pairwise cross-entropy ``w_ij (log(1 + e^{a <h_i,h_j>}) - a s_ij <h_i,h_j>)``.

    codes: (B, k) relaxed codes ``h`` in [-1, 1]; similar: (B, B) bool; alpha defaults to
    10 / k. ``weighted``: ``w_ij = |S|/|S_1|`` (similar) or ``|S|/|S_0|`` (dissimilar),
    counted over the masked pairs; False gives ``w_ij = 1``. Scalar tensor.
    """
    _check_pairwise(codes, similar)
    k = codes.shape[1]
    a = 10.0 / k if alpha is None else float(alpha)
    mask = pair_mask(codes.shape[0], pairs, codes.device)
    ip = a * (codes @ codes.T)
    s = similar.to(torch.bool)
    per_pair = F.softplus(ip) - s.to(codes.dtype) * ip
    if weighted:
        n_all = mask.sum().to(codes.dtype)
        n_sim = (mask & s).sum().to(codes.dtype)
        n_dis = n_all - n_sim
        w_sim = n_all / n_sim.clamp(min=1)
        w_dis = n_all / n_dis.clamp(min=1)
        per_pair = per_pair * torch.where(s, w_sim, w_dis)
    return _reduce(per_pair, mask, reduction)


# ----------------------------------------------------------------------------- IDEA


def _valid(n: int, valid: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    if valid is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    if tuple(valid.shape) != (n,):
        raise InvalidRequest(f"valid must be a ({n},) bool vector; got shape {tuple(valid.shape)}")
    return valid.to(torch.bool)


def idea_quantization_loss(h1: torch.Tensor, *, reduction: Reduction = "sum") -> torch.Tensor:
    """IDEA eq. (7): ``-sum_i (1/l) (h1_i - 0.5)^T (h1_i - 0.5)``; h1: (B, l) sigmoid outputs.

    Minimising it pushes every output away from 0.5 (towards 0 or 1); bounded below by
    -B/4. ``"mean"`` divides by B.
    """
    if h1.ndim != 2:
        raise InvalidRequest(f"h1 must be a (B, l) tensor; got shape {tuple(h1.shape)}")
    per_item = -((h1 - 0.5) ** 2).sum(-1) / h1.shape[1]
    if reduction == "sum":
        return per_item.sum()
    if reduction == "mean":
        return per_item.mean() if h1.shape[0] else per_item.sum()
    raise InvalidRequest(f"reduction must be 'sum' or 'mean'; got {reduction!r}")


def idea_pairwise_loss(
    h1: torch.Tensor,
    t: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    reduction: Reduction = "sum",
) -> torch.Tensor:
    """IDEA eq. (8): ``sum_i sum_j [(1/l) ||h1_i - h1_j||^2 - 1/2 (1 - cos(t_i, t_j))]^2``.

    h1: (B, l) hash outputs in [0, 1]; t: (B, d) tag representations (eq. 5); valid: (B,)
    bool, items with a tag representation (the others are left out). Both terms lie in
    [0, 1]: the normalised squared hash distance is fitted to half the cosine distance.
    Sums over all ordered pairs (i, j) of valid items; ``"mean"`` divides by their number.
    """
    if h1.ndim != 2 or t.ndim != 2 or h1.shape[0] != t.shape[0]:
        raise InvalidRequest(f"h1 (B, l) and t (B, d) must share B; got {tuple(h1.shape)}, {tuple(t.shape)}")
    n, l_bits = h1.shape
    v = _valid(n, valid, h1.device)
    diff = h1[:, None, :] - h1[None, :, :]
    hash_dist = (diff * diff).sum(-1) / l_bits
    tn = F.normalize(t, dim=1, eps=1e-12)
    tag_dist = 0.5 * (1.0 - tn @ tn.T)
    per_pair = (hash_dist - tag_dist) ** 2
    return _reduce(per_pair, v[:, None] & v[None, :], reduction)


def idea_hinge_loss(
    h2: torch.Tensor,
    t: torch.Tensor,
    *,
    margin: float,
    valid: torch.Tensor | None = None,
    reduction: Reduction = "sum",
) -> torch.Tensor:
    """IDEA eq. (9): ``sum_i sum_{j != i} max(0, m + t_j . h2_i - t_i . h2_i)``.

    h2: (B, d) image embeddings (tanh, eq. 10); t: (B, d) tag representations; valid: (B,)
    bool (both i and j must be valid). ``"mean"`` divides by the number of (i, j) terms.
    """
    if h2.shape != t.shape or h2.ndim != 2:
        raise InvalidRequest(f"h2 and t must both be (B, d); got {tuple(h2.shape)}, {tuple(t.shape)}")
    n = h2.shape[0]
    v = _valid(n, valid, h2.device)
    scores = h2 @ t.T  # scores[i, j] = t_j . h2_i
    own = scores.diagonal()
    per_pair = F.relu(margin + scores - own[:, None])
    off_diag = ~torch.eye(n, dtype=torch.bool, device=h2.device)
    return _reduce(per_pair, off_diag & v[:, None] & v[None, :], reduction)


def idea_tag_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """IDEA eqs. (11)-(12): ``1/N sum_i -sum_c y_ic log softmax(logits_i)_c``.

    logits: (B, V) float ``W4 x_i + b4``; targets: (B, V) 0/1 multi-hot tags ``y``;
    valid: (B,) bool, the images with tags (N = their number; 0 when there is none).
    """
    if logits.shape != targets.shape or logits.ndim != 2:
        raise InvalidRequest(
            f"logits and targets must both be (B, V); got {tuple(logits.shape)}, {tuple(targets.shape)}"
        )
    v = _valid(logits.shape[0], valid, logits.device)
    per_item = -(targets.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(-1)
    per_item = torch.where(v, per_item, torch.zeros_like(per_item))
    return per_item.sum() / v.sum().clamp(min=1).to(logits.dtype)
