"""Multi-concept softmax loss of SSIR (paper eqs. 3-4), in torch.

Eq. 3: ``p(C_j | I) = exp(q_j(I)) / sum_k exp(q_k(I))``, a softmax over the classifier's
concepts (V for the single-concept head, V* for the multi-concept head).
Eq. 4: ``f = -1/N sum_i sum_j p_ij log p(C_j | I_i)`` with ``p_ij`` = 1 when image ``i``
holds ``C_j`` and ``N`` the number of images.

Read literally, eq. 4 sums the log-probabilities of all positive concepts (images with
more concepts weigh more). The paper motivates it as the KL divergence to the true
distribution, which would be ``p_ij / sum_j p_ij``: ``normalize_targets=True`` gives that
reading. Images without any positive concept add 0 but still count in ``N``.

Class imbalance (not in eq. 4, which the paper handles only at fusion time, eq. 17):
``concept_weights`` ``(C,)`` multiplies each concept's term; :func:`balanced_concept_weights`
gives weights inversely proportional to concept frequency.

torch is imported here only, inside the functions, so ``import cbir.concepts`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cbir.errors import BackendUnavailable, InvalidRequest

if TYPE_CHECKING:
    import torch

__all__ = ["balanced_concept_weights", "multi_concept_softmax_loss"]


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dev/export dependency
        raise BackendUnavailable("the concept losses need torch: "
                                 "pip install torch==2.13.0 'cbir[train]'") from None
    return torch


def balanced_concept_weights(targets: torch.Tensor) -> torch.Tensor:
    """``w_j = P / (C' n_j)`` from ``(N, C)`` 0/1 targets -> ``(C,)`` float32.

    ``n_j`` = images with concept ``j``, ``P = sum_j n_j``, ``C'`` = concepts with
    ``n_j > 0``; absent concepts get 0. Then ``sum_j w_j n_j = P``: the loss keeps its scale
    while every present concept carries the same total weight.
    """
    torch = _torch()
    counts = torch.as_tensor(targets).to(torch.float32).sum(dim=0)
    present = counts > 0
    n_present = int(present.sum())
    if n_present == 0:
        return torch.zeros_like(counts)
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (n_present * counts[present])
    return weights


def multi_concept_softmax_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    concept_weights: torch.Tensor | None = None,
    normalize_targets: bool = False,
) -> torch.Tensor:
    """Eq. 4 averaged over images: a scalar tensor (differentiable in ``logits``).

    logits: ``(N, C)`` float, the ``q_j(I)``; targets: ``(N, C)`` 0/1 (``p_ij``);
    concept_weights: ``(C,)`` non-negative or None; normalize_targets: divide each row of
    targets by its sum (the KL reading).
    """
    torch = _torch()
    if logits.ndim != 2 or tuple(targets.shape) != tuple(logits.shape):
        shapes = f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)}"
        raise InvalidRequest(f"{shapes}: both must be (N, C)")
    p = targets.to(logits.dtype)
    if normalize_targets:
        p = p / p.sum(dim=1, keepdim=True).clamp_min(1.0)
    if concept_weights is not None:
        w = torch.as_tensor(concept_weights, dtype=logits.dtype, device=logits.device)
        if w.shape != (logits.shape[1],) or bool((w < 0).any()):
            raise InvalidRequest(f"concept_weights must be ({logits.shape[1]},) and non-negative")
        p = p * w
    log_p = torch.log_softmax(logits, dim=1)  # eq. 3 in log space
    return -(p * log_p).sum() / logits.shape[0]
