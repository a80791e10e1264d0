"""IDEA hashers (idea, idea-l, idea-a) on synthetic region features."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_hashing_weak import tagged_clusters  # noqa: E402

from cbir.errors import IndexMismatch, InvalidRequest  # noqa: E402
from cbir.eval.metrics import mean_average_precision, rank_by_score, ranked_relevance  # noqa: E402
from cbir.hashing import create_hasher, hamming_distances, load_hasher, pack_bits, unpack_bits  # noqa: E402
from cbir.hashing.base import read_hasher_header  # noqa: E402
from cbir.hashing.idea import IDEA, build_idea_net, idea_head, tag_overlap_map  # noqa: E402

N, NQ, C = 600, 150, 32


def region_clusters(seed: int = 0):
    """49 regions x 32 channels per image: ~12 object regions from one of the image's
    cluster's 3 prototypes, the others from 4 background prototypes shared by all, plus
    noise, clipped at 0 like post-ReLU CNN activations. Pooled features = mean of the
    regions, L2-normalised. Tags and tag vectors as in test_hashing_weak.
    """
    _, labels, tags, tv = tagged_clusters(N, NQ, d=8, seed=seed)
    rng = np.random.default_rng(seed + 100)
    objects = rng.standard_normal((6, 3, C))
    background = 1.5 * rng.standard_normal((4, C))
    regions = np.empty((N + NQ, 49, C), np.float32)
    for i in range(N + NQ):
        obj = rng.random(49) < 12 / 49
        regions[i, obj] = objects[labels[i], rng.integers(3, size=obj.sum())]
        regions[i, ~obj] = background[rng.integers(4, size=(~obj).sum())]
    regions = np.maximum(regions + rng.standard_normal(regions.shape), 0)
    x = regions.mean(axis=1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), regions.astype(np.float16), labels, tags, tv


@pytest.fixture(scope="module")
def data():
    x, r, labels, tags, tv = region_clusters()
    return {
        "xb": x[:N],
        "rb": r[:N],
        "lb": labels[:N],
        "tags": tags[:N],
        "tv": tv,
        "xq": x[N:],
        "rq": r[N:],
        "lq": labels[N:],
    }


def hamming_map(q_codes, db_codes, data) -> float:
    ranking = rank_by_score(hamming_distances(q_codes, db_codes), descending=False)
    return mean_average_precision(ranked_relevance(data["lq"], data["lb"], ranking))


def fit(name: str, data, **params):
    return create_hasher(name, 32, **params).fit(
        data["xb"], regions=data["rb"], tags=data["tags"], tag_vectors=data["tv"]
    )


@pytest.fixture(scope="module")
def idea(data):
    return fit("idea", data, lambdas=[10, 10, 0.01], epochs=8)


# --------------------------------------------------------------------------- eqs. (2)-(3) by hand


def tiny_arch(context: bool, scale: bool) -> dict:
    return {
        "kind": "idea",
        "region_dim": 2,
        "pca": False,
        "reduced_dim": 2,
        "project": False,
        "proj_dim": 2,
        "hidden": 3,
        "bits": 8,
        "tag_dim": 2,
        "vocab": 0,
        "context": context,
        "scale_attention": scale,
    }


def test_context_attention_by_hand():
    # X = [[2, 0], [0, 1]] (2 regions, no projection). X X^T = [[4, 0], [0, 1]].
    # Row-wise softmax: row 0 (e^4, 1)/(e^4 + 1) = (0.982014, 0.017986);
    #                  row 1 (1, e)/(1 + e) = (0.268941, 0.731059).
    # X~ = A X: row 0 = (2 * 0.982014, 0.017986) = (1.964028, 0.017986); row 1 = (0.537883, 0.731059).
    # X_bar = X + X~ = [[3.964028, 0.017986], [0.537883, 1.731059]]; x = mean = (2.250955, 0.874522).
    z = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    arch = tiny_arch(context=True, scale=False)
    out = idea_head(build_idea_net(arch), z, arch)
    np.testing.assert_allclose(out["x"].detach().numpy(), [[2.250955, 0.874522]], rtol=1e-5)
    # scaled (default): scores / sqrt(2): row 0 softmax(2.828427, 0) = (0.944193, 0.055807),
    # row 1 softmax(0, 0.707107) = (0.330238, 0.669762); X~ = [[1.888386, 0.055807], [0.660476, 0.669762]];
    # x = ((2 + 1.888386 + 0.660476) / 2, (0.055807 + 1 + 0.669762) / 2) = (2.274431, 0.862785)
    arch = tiny_arch(context=True, scale=True)
    a0 = 1 / (1 + math.exp(-2 * math.sqrt(2)))
    a1 = 1 / (1 + math.exp(math.sqrt(0.5)))
    want = [(2 + 2 * a0 + 2 * a1) / 2, ((1 - a0) + 1 + (1 - a1)) / 2]
    out = idea_head(build_idea_net(arch), z, arch)
    np.testing.assert_allclose(out["x"].detach().numpy(), [want], rtol=1e-5)
    np.testing.assert_allclose(want, [2.274431, 0.862785], rtol=1e-5)
    # idea-a: plain average pooling, x = (1, 0.5)
    arch = tiny_arch(context=False, scale=True)
    out = idea_head(build_idea_net(arch), z, arch)
    np.testing.assert_allclose(out["x"].detach().numpy(), [[1.0, 0.5]])
    assert out["h1"].shape == (1, 8) and out["h2"].shape == (1, 2) and "logits" not in out


def test_tag_overlap_map_by_hand():
    # codes A = 0x00, B = 0x01, C = 0xFF; tags A {t0}, B {t1}, C {t0}.
    # A: B (dist 1), C (8) -> relevance [0, 1] -> AP = (1/2) / 1 = 0.5
    # B: shares no tag -> no relevant image, left out.  C: B (7), A (8) -> [0, 1] -> 0.5.  mAP = 0.5
    codes = np.array([[0x00], [0x01], [0xFF]], dtype=np.uint8)
    tags = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32)
    assert tag_overlap_map(codes, tags) == pytest.approx(0.5)


# --------------------------------------------------------------------------- training


def test_idea_trains_beats_lsh_and_round_trips(idea, data, tmp_path: Path):
    codes_q = idea.encode(data["xq"], regions=data["rq"])
    codes_b = idea.encode(data["xb"], regions=data["rb"])
    lsh = create_hasher("lsh", 32).fit(data["xb"])
    ours = hamming_map(codes_q, codes_b, data)
    base = hamming_map(lsh.encode(data["xq"]), lsh.encode(data["xb"]), data)
    # measured: IDEA 0.97, LSH on the pooled features 0.42 (chance 0.17)
    assert ours > base + 0.3, (ours, base)
    # eq. (13): bit = h1 > 0.5, project() = h1 - 0.5
    np.testing.assert_array_equal(unpack_bits(codes_q, 32), idea.project(data["xq"], regions=data["rq"]) > 0)
    # float16 and float32 regions give the same codes (converted per batch)
    np.testing.assert_array_equal(idea.encode(data["xq"], regions=data["rq"].astype(np.float32)), codes_q)
    path = tmp_path / "idea.safetensors"
    idea.save(path)
    header = read_hasher_header(path)
    assert header["state"]["arch"]["context"] is True and header["state"]["train"]["lambdas"] == [
        10,
        10,
        0.01,
    ]
    assert len(header["state"]["curve"]) == 8
    for loaded in (load_hasher(path), IDEA.load(path)):
        assert loaded.params == idea.params
        np.testing.assert_array_equal(loaded.encode(data["xq"], regions=data["rq"]), codes_q)


def test_idea_needs_regions(idea, data):
    with pytest.raises(InvalidRequest, match="regions="):
        idea.encode(data["xq"])
    with pytest.raises(InvalidRequest, match="regions="):
        idea.project(data["xq"])
    with pytest.raises(InvalidRequest, match="shape"):
        idea.encode(data["xq"], regions=data["rb"])
    with pytest.raises(IndexMismatch, match="channels"):
        idea.encode(data["xq"], regions=data["rq"][:, :, :16])
    with pytest.raises(InvalidRequest, match="regions="):
        create_hasher("idea", 16).fit(data["xb"], tags=data["tags"], tag_vectors=data["tv"])
    bad = data["rb"].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidRequest, match="NaN"):
        create_hasher("idea", 16, lambdas=[1, 1, 0]).fit(
            data["xb"], regions=bad, tags=data["tags"], tag_vectors=data["tv"]
        )
    with pytest.raises(InvalidRequest, match="lambdas"):
        create_hasher("idea", 16, lambdas=[1, 2])


def test_ablations_change_the_model_as_stated(idea, data):
    # idea-l: no tag-prediction head, l4 forced to 0
    l_model = fit("idea-l", data, lambdas=[10, 10, 0.01], epochs=2)
    assert l_model.info_["lambdas"] == [10, 10, 0]
    assert "fc4.weight" not in l_model.model_arrays_ and "fc4.weight" in idea.model_arrays_
    assert l_model.arch_["vocab"] == 0 and idea.arch_["vocab"] == len(idea.model_arrays_["fc4.bias"])
    assert l_model.candidate_lambdas() == [[10, 10, 0], [1, 10, 0], [10, 1, 0]]
    # idea-a: x is the plain mean of the projected regions; idea's is not
    a_model = fit("idea-a", data, lambdas=[10, 10, 0.01], epochs=2)
    assert a_model.arch_["context"] is False and idea.arch_["context"] is True
    z = torch.from_numpy(data["rq"][:5].astype(np.float32))
    for h, plain in ((a_model, True), (idea, False)):
        net = h._model()
        with torch.no_grad():
            x = idea_head(net, z, h.arch_)["x"]
            mean_proj = net["proj"](z).mean(dim=1)
        assert torch.allclose(x, mean_proj, atol=1e-5) is plain
    # each still encodes and beats chance
    for h in (l_model, a_model):
        m = hamming_map(
            h.encode(data["xq"], regions=data["rq"]), h.encode(data["xb"], regions=data["rb"]), data
        )
        assert m > 0.4, (h.name, m)


def test_balance_parameters_chosen_on_a_validation_split(data):
    seen = []
    h = create_hasher("idea", 16, grid=[[10, 10, 0.01], [0, 0, 0]], grid_epochs=2, epochs=2).fit(
        data["xb"],
        regions=data["rb"],
        tags=data["tags"],
        tag_vectors=data["tv"],
        progress=lambda e, loss: seen.append(e),
    )
    grid = h.info_["grid"]
    assert [g["lambdas"] for g in grid] == [[10, 10, 0.01], [0, 0, 0]]
    assert all(0 <= g["val_map"] <= 1 for g in grid)
    best = max(grid, key=lambda g: g["val_map"])  # first of the best on ties
    assert h.info_["lambdas"] == best["lambdas"]
    assert seen == [1, 2]  # progress reports the final training only
    again = create_hasher("idea", 16, grid=[[10, 10, 0.01], [0, 0, 0]], grid_epochs=2, epochs=2).fit(
        data["xb"], regions=data["rb"], tags=data["tags"], tag_vectors=data["tv"]
    )
    assert again.info_["grid"] == grid  # deterministic for a seed
    np.testing.assert_array_equal(
        again.encode(data["xq"], regions=data["rq"]), h.encode(data["xq"], regions=data["rq"])
    )


def test_tag_representations_are_centred_unless_told_not_to(idea, data):
    assert idea.params["center_tags"] is True and idea.info_["tag_mean_norm"] > 0
    assert idea.params["hidden"] == 512 and idea.arch_["hidden"] == 512
    plain = fit("idea", data, lambdas=[10, 10, 0.01], epochs=1, center_tags=False, hidden=256)
    assert plain.params["center_tags"] is False and "tag_mean_norm" not in plain.info_
    assert plain.model_arrays_["fc1.weight"].shape[0] == 256


def test_pca_reduction_when_regions_are_wider_than_pca_dim(data):
    h = create_hasher("idea", 16, pca_dim=8, proj_dim=16, lambdas=[10, 10, 0.01], epochs=1).fit(
        data["xb"], regions=data["rb"], tags=data["tags"], tag_vectors=data["tv"]
    )
    assert h.arch_["pca"] is True and h.model_arrays_["reduce.components"].shape == (C, 8)
    assert 0 < h.info_["pca_variance_kept"] <= 1
    comps = h.model_arrays_["reduce.components"]
    np.testing.assert_allclose(comps.T @ comps, np.eye(8), atol=1e-4)  # orthonormal directions
    codes = h.encode(data["xq"], regions=data["rq"])
    assert codes.shape == (NQ, 2) and codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, pack_bits(h.project(data["xq"], regions=data["rq"]) > 0))


def test_reduced_regions_encode_like_regions_and_are_shared_by_one_reduction(data):
    def one(name: str, bits: int, seed: int = 0):
        return create_hasher(name, bits, pca_dim=8, lambdas=[10, 10, 0.01], epochs=1, seed=seed).fit(
            data["xb"], regions=data["rb"], tags=data["tags"], tag_vectors=data["tv"]
        )

    h, a, other = one("idea", 16), one("idea-a", 32), one("idea", 16, seed=1)
    # the fixed transform depends on the training images and the seed, not on the method or length
    assert h.reduction_key() == a.reduction_key() != other.reduction_key()
    z = h.reduce(data["rq"])
    assert z.shape == (NQ, 49, 8) and z.dtype == np.float16
    for model in (h, a):
        np.testing.assert_array_equal(
            model.encode(data["xq"], reduced=z), model.encode(data["xq"], regions=data["rq"])
        )
    with pytest.raises(InvalidRequest, match="not both"):
        h.encode(data["xq"], regions=data["rq"], reduced=z)
    with pytest.raises(InvalidRequest, match="shape"):
        h.encode(data["xq"], reduced=z[:, :, :4])
    with pytest.raises(InvalidRequest, match="not fitted"):
        create_hasher("idea", 16).reduction_key()
