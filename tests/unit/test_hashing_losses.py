"""Losses of the trained hashers, each against a value worked out by hand (arithmetic in comments)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from cbir.errors import InvalidRequest  # noqa: E402
from cbir.hashing import losses  # noqa: E402


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def b(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# --------------------------------------------------------------------------- WDHT eq. (3)


def test_contrastive_loss_by_hand():
    # f0 = (0, 0), f1 = (3, 4), f2 = (0, 0.5); pair (0,1) similar, (0,2) and (1,2) dissimilar.
    # d01 = 5, d02 = 0.5, d12 = sqrt(3^2 + 3.5^2) = sqrt(21.25) = 4.61 (plain Euclidean, eq. 4).
    # (0,1) similar: 5; (0,2) dissimilar: max(0, 1 - 0.5) = 0.5; (1,2): max(0, 1 - 4.61) = 0.
    # sum = 5.5, mean over the 3 pairs = 1.8333.
    f = t([[0, 0], [3, 4], [0, 0.5]])
    sim = b([[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    assert losses.contrastive_loss(f, sim, reduction="sum").item() == pytest.approx(5.5, rel=1e-6)
    assert losses.contrastive_loss(f, sim).item() == pytest.approx(5.5 / 3, rel=1e-6)
    # margin 6: (1,2) now counts max(0, 6 - 4.6098) = 1.3902 and (0,2) 5.5 -> 5 + 5.5 + 1.3902
    want = 5 + 5.5 + (6 - math.sqrt(21.25))
    assert losses.contrastive_loss(f, sim, margin=6.0, reduction="sum").item() == pytest.approx(
        want, rel=1e-6
    )
    # only pair (0,2) counted (the mask is symmetrised to i < j): 0.5
    pairs = b([[0, 0, 0], [0, 0, 0], [1, 0, 0]]) | b([[0, 0, 1], [0, 0, 0], [0, 0, 0]])
    assert losses.contrastive_loss(f, sim, pairs=pairs, reduction="sum").item() == pytest.approx(0.5)


def test_contrastive_gradient_is_finite_at_equal_codes():
    f = torch.zeros(2, 4, requires_grad=True)
    loss = losses.contrastive_loss(f, b([[1, 1], [1, 1]]))
    loss.backward()
    assert torch.isfinite(f.grad).all() and loss.item() == pytest.approx(0.0, abs=1e-5)


# --------------------------------------------------------------------------- DSH


def test_dsh_loss_by_hand():
    # b0 = (1, -1), b1 = (1, 1), b2 = (-0.5, 1); k = 2 -> m = 2k = 4; alpha = 0.1.
    # D = squared distance: D01 = 0 + 4 = 4, D02 = 1.5^2 + 2^2 = 6.25, D12 = 1.5^2 + 0 = 2.25.
    # || |b| - 1 ||_1: r0 = 0, r1 = 0, r2 = |0.5 - 1| = 0.5.
    # (0,1) similar:    1/2 * 4                    + 0.1 * (0 + 0)   = 2
    # (0,2) dissimilar: 1/2 * max(4 - 6.25, 0) = 0 + 0.1 * (0 + 0.5) = 0.05
    # (1,2) dissimilar: 1/2 * max(4 - 2.25, 0) = 0.875 + 0.1 * 0.5   = 0.925
    # sum = 2.975, mean = 0.991667
    codes = t([[1, -1], [1, 1], [-0.5, 1]])
    sim = b([[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    assert losses.dsh_loss(codes, sim, alpha=0.1, reduction="sum").item() == pytest.approx(2.975, rel=1e-6)
    assert losses.dsh_loss(codes, sim, alpha=0.1).item() == pytest.approx(2.975 / 3, rel=1e-6)
    # explicit margin 7: (0,2) gets 1/2 (7 - 6.25) = 0.375 more, (1,2) 1/2 (7 - 2.25) = 2.375
    want = 2 + (0.375 + 0.05) + (2.375 + 0.05)
    got = losses.dsh_loss(codes, sim, alpha=0.1, margin=7.0, reduction="sum").item()
    assert got == pytest.approx(want, rel=1e-6)


# --------------------------------------------------------------------------- HashNet


def test_hashnet_loss_by_hand():
    # h0 = (1, 1), h1 = (1, -1), h2 = (1, 1); alpha = 1. Inner products: <0,1> = 0, <0,2> = 2, <1,2> = 0.
    # Only (0,2) is similar: |S| = 3, |S1| = 1, |S0| = 2 -> w_sim = 3, w_dis = 1.5.
    # (0,1): log(1 + e^0) - 0 = ln 2 = 0.693147;  (1,2): ln 2
    # (0,2): log(1 + e^2) - 1 * 2 = 2.126928 - 2 = 0.126928
    # weighted sum = 3 * 0.126928 + 1.5 * (2 * 0.693147) = 0.380784 + 2.079442 = 2.460226; / |S| = 0.820075
    # unweighted mean = (0.126928 + 1.386294) / 3 = 0.504407
    codes = t([[1, 1], [1, -1], [1, 1]])
    sim = b([[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    ln2, l02 = math.log(2), math.log(1 + math.e**2) - 2
    assert losses.hashnet_loss(codes, sim, alpha=1.0, reduction="sum").item() == pytest.approx(
        3 * l02 + 1.5 * 2 * ln2, rel=1e-6
    )
    assert losses.hashnet_loss(codes, sim, alpha=1.0).item() == pytest.approx(0.820075, rel=1e-5)
    assert losses.hashnet_loss(codes, sim, alpha=1.0, weighted=False).item() == pytest.approx(
        (l02 + 2 * ln2) / 3, rel=1e-6
    )
    # default alpha = 10 / k = 5: (0,2) -> log(1 + e^10) - 10 = 4.54e-5, others ln 2
    want = (3 * (math.log1p(math.exp(10)) - 10) + 1.5 * 2 * ln2) / 3
    assert losses.hashnet_loss(codes, sim).item() == pytest.approx(want, rel=1e-5)


def test_hashnet_is_stable_for_large_inner_products():
    codes = torch.full((3, 64), 1.0, requires_grad=True)
    loss = losses.hashnet_loss(codes, b([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), alpha=100.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(codes.grad).all()
    # dissimilar pairs with <h,h> = 64, alpha 100: log(1 + e^6400) = 6400 exactly in float32
    assert loss.item() == pytest.approx(6400 * 1.0, rel=1e-6)  # all 3 pairs dissimilar, w = 1


# --------------------------------------------------------------------------- IDEA eqs. (7)-(12)


def test_idea_quantization_loss_by_hand():
    # l = 2. item 0: -((1 - .5)^2 + (.5 - .5)^2) / 2 = -0.125; item 1: -(.25^2 + .25^2) / 2 = -0.0625
    h1 = t([[1.0, 0.5], [0.25, 0.75]])
    assert losses.idea_quantization_loss(h1).item() == pytest.approx(-0.1875)
    assert losses.idea_quantization_loss(h1, reduction="mean").item() == pytest.approx(-0.09375)


def test_idea_pairwise_loss_by_hand():
    # h1: a = (1, 0), b = (0, 0), c = (1, 1); l = 2 -> (1/l)||h_i - h_j||^2: ab 0.5, ac 0.5, bc 1.
    # t: a = (1, 0), b = (0, 1), c = (1, 1): cos ab = 0, ac = bc = 1/sqrt2 = 0.707107
    #   -> 1/2 (1 - cos): ab 0.5, ac = bc = 0.146447.
    # squared gaps: ab (0.5 - 0.5)^2 = 0, ac (0.5 - 0.146447)^2 = 0.125, bc (1 - 0.146447)^2 = 0.728553.
    # ordered pairs count twice, i = j gives 0: 2 * (0 + 0.125 + 0.728553) = 1.707107 (= 1 + 1/sqrt2).
    h1 = t([[1, 0], [0, 0], [1, 1]])
    tv = t([[1, 0], [0, 1], [1, 1]])
    assert losses.idea_pairwise_loss(h1, tv).item() == pytest.approx(1 + 1 / math.sqrt(2), rel=1e-6)
    # b left out: only a-c, twice: 0.25; the mean divides by the 4 ordered (i, j) of {a, c}
    valid = b([1, 0, 1])
    assert losses.idea_pairwise_loss(h1, tv, valid=valid).item() == pytest.approx(0.25, rel=1e-6)
    assert losses.idea_pairwise_loss(h1, tv, valid=valid, reduction="mean").item() == pytest.approx(0.0625)


def test_idea_hinge_loss_by_hand():
    # h2_0 = (1, 0), h2_1 = (0, 1); t0 = (0.5, 0), t1 = (0.2, 0.4); m = 0.5.
    # i = 0: own t0.h2_0 = 0.5, other t1.h2_0 = 0.2 -> max(0, 0.5 + 0.2 - 0.5) = 0.2
    # i = 1: own t1.h2_1 = 0.4, other t0.h2_1 = 0   -> max(0, 0.5 + 0 - 0.4) = 0.1
    # sum = 0.3. A third, invalid item (huge scores) must not count.
    h2 = t([[1, 0], [0, 1], [1, 1]])
    tv = t([[0.5, 0], [0.2, 0.4], [9, 9]])
    valid = b([1, 1, 0])
    assert losses.idea_hinge_loss(h2, tv, margin=0.5, valid=valid).item() == pytest.approx(0.3, rel=1e-6)
    assert losses.idea_hinge_loss(h2, tv, margin=0.5, valid=valid, reduction="mean").item() == pytest.approx(
        0.15, rel=1e-6
    )
    assert losses.idea_hinge_loss(h2[:2], tv[:2], margin=0.0).item() == pytest.approx(0.0)


def test_idea_tag_loss_by_hand():
    # item 0: logits (0, ln 3) -> softmax (1/4, 3/4), tags {0, 1}:
    #   -(ln 1/4 + ln 3/4) = ln 4 + ln 4/3 = 1.673976
    # item 1: logits (0, 0) -> (1/2, 1/2), tag {1}: ln 2 = 0.693147.  Mean = 1.183561.
    logits = t([[0, math.log(3)], [0, 0]])
    y = t([[1, 1], [0, 1]])
    assert losses.idea_tag_loss(logits, y).item() == pytest.approx(1.183561, rel=1e-6)
    assert losses.idea_tag_loss(logits, y, valid=b([1, 0])).item() == pytest.approx(1.673976, rel=1e-6)
    assert losses.idea_tag_loss(logits, y, valid=b([0, 0])).item() == 0.0


def test_losses_reject_bad_shapes():
    with pytest.raises(InvalidRequest, match="similar"):
        losses.contrastive_loss(torch.zeros(3, 4), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(InvalidRequest, match="reduction"):
        losses.dsh_loss(torch.zeros(2, 4), torch.zeros(2, 2, dtype=torch.bool), reduction="avg")
    with pytest.raises(InvalidRequest):
        losses.idea_pairwise_loss(torch.zeros(2, 4), torch.zeros(3, 4))
