"""SSIR multi-concept softmax loss (eqs. 3-4) against a 2-image, 3-concept hand example."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from cbir.concepts import balanced_concept_weights, multi_concept_softmax_loss  # noqa: E402
from cbir.errors import InvalidRequest  # noqa: E402

# Image 1: logits [0, ln 2, ln 3] -> softmax [1/6, 2/6, 3/6]; holds concepts 0 and 2.
# Image 2: logits [0, 0, 0]       -> softmax [1/3, 1/3, 1/3]; holds concept 1.
LOGITS = torch.tensor([[0.0, math.log(2), math.log(3)], [0.0, 0.0, 0.0]], dtype=torch.float64)
TARGETS = torch.tensor([[1, 0, 1], [0, 1, 0]])


def test_loss_literal_eq4() -> None:
    # f = -1/2 [ln(1/6) + ln(3/6) + ln(1/3)] = 1/2 (ln 6 + ln 2 + ln 3) = 1/2 ln 36 = ln 6 = 1.791759
    loss = multi_concept_softmax_loss(LOGITS, TARGETS)
    assert loss.item() == pytest.approx(math.log(6))


def test_loss_gradient() -> None:
    # df/dq_i = (softmax_i * sum_j p_ij - p_i) / N:
    #   image 1: (2*[1/6, 2/6, 3/6] - [1, 0, 1]) / 2 = [-1/3, 1/3, 0]
    #   image 2: ([1/3, 1/3, 1/3] - [0, 1, 0]) / 2 = [1/6, -1/3, 1/6]
    q = LOGITS.clone().requires_grad_(True)
    multi_concept_softmax_loss(q, TARGETS).backward()
    expected = torch.tensor([[-1 / 3, 1 / 3, 0.0], [1 / 6, -1 / 3, 1 / 6]], dtype=torch.float64)
    assert torch.allclose(q.grad, expected)


def test_loss_weighted_and_normalised() -> None:
    # weights [1, 2, 0.5]: image 1: 1*ln 6 + 0.5*ln 2; image 2: 2*ln 3
    #   f = (1.791759 + 0.346574 + 2.197225) / 2 = 2.167779
    w = torch.tensor([1.0, 2.0, 0.5])
    loss = multi_concept_softmax_loss(LOGITS, TARGETS, concept_weights=w)
    assert loss.item() == pytest.approx((math.log(6) + 0.5 * math.log(2) + 2 * math.log(3)) / 2)
    assert loss.item() == pytest.approx(2.167779, abs=1e-6)
    # KL reading, targets [1/2, 0, 1/2] and [0, 1, 0]:
    #   f = (0.5 ln 6 + 0.5 ln 2 + ln 3) / 2 = (0.5 ln 12 + ln 3) / 2 = (1.242453 + 1.098612) / 2 = 1.170533
    loss = multi_concept_softmax_loss(LOGITS, TARGETS, normalize_targets=True)
    assert loss.item() == pytest.approx(1.170533, abs=1e-6)
    with pytest.raises(InvalidRequest):
        multi_concept_softmax_loss(LOGITS, TARGETS, concept_weights=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(InvalidRequest):
        multi_concept_softmax_loss(LOGITS, TARGETS[:, :2])


def test_balanced_concept_weights() -> None:
    # counts n = [3, 1, 1], P = 5, C' = 3: w = 5 / (3 n) = [5/9, 5/3, 5/3]; absent concept -> 0.
    targets = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]])
    w = balanced_concept_weights(targets)
    assert torch.allclose(w, torch.tensor([5 / 9, 5 / 3, 5 / 3, 0.0]))
    assert (w * targets.sum(0)).sum().item() == pytest.approx(5.0)  # scale kept: sum w_j n_j = P
