"""What a weak supervision says against the features, which hasher to train, and whether codes collapsed.

* :func:`measure_supervision` (no class labels needed): on a seeded sample of tagged images,
  the share of pairs the tags call similar (``positive_share``), how well feature cosine
  ranks tag-similar partners against chance (``agreement``, ``kappa``), and the share of
  machine tags (``machine_share``).
* ``tags_carry_less`` / :func:`choose_method`: fall back to ITQ when there is nothing to
  learn, the tags are mostly machine tags, they call more than ``POSITIVE_MAX`` of pairs
  similar, or ``kappa < KAPPA_MIN``. With class ``labels`` the report adds label-based
  numbers, for information only: the decision never uses labels.
* :func:`code_stats`: distinct codes and per-bit ones; codes collapsed when there is room
  for distinct codes but fewer than ``COLLAPSE_DISTINCT`` of the images have one, or a bit
  is nearly constant (``CONSTANT_BIT``).

Why these thresholds, with the measurements (Corel-5K, Wang, CIFAR-10): docs/hashing-supervision.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cbir.errors import InvalidRequest

__all__ = [
    "COLLAPSE_DISTINCT",
    "CONSTANT_BIT",
    "KAPPA_MIN",
    "MACHINE_MAX",
    "POSITIVE_MAX",
    "CodeStats",
    "SupervisionReport",
    "choose_method",
    "code_stats",
    "measure_supervision",
    "ranking_map",
    "supervision_warning",
]

#: WDHT's pair threshold of eq. (1): similar when s > THRESHOLD
THRESHOLD = 0.4
#: images sampled for the measurement (O(sample^2) memory and time: ~2 s at 2,000)
SAMPLE = 2000
#: tags whose similar pairs are closer in feature space than this (chance-corrected AP) add to them
KAPPA_MIN = 0.15
#: when at least this share of the tagged images has only machine tags, the tags are machine tags
MACHINE_MAX = 0.5
#: tags calling more than this share of the pairs similar are too coarse to learn codes from
POSITIVE_MAX = 0.5
#: label-based thresholds reported for an evaluation (as bench_weak_supervision.py)
LABEL_THRESHOLDS = (0.4, 0.6, 0.8)
#: codes collapsed: distinct codes below this share of the images while 2**bits >= n**2
COLLAPSE_DISTINCT = 0.5
#: a bit the same in more than this share of the images is wasted
CONSTANT_BIT = 0.95


# ----------------------------------------------------------------------------- rankings


def ranking_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """Class mAP of ranking, for each row, the other items by ``scores`` (m, m) (higher first).

    NaN scores (items without a tag vector) rank last; the item itself is left out. Items
    with no other item of their class are left out of the mean.
    """
    from cbir.eval.metrics import mean_average_precision, rank_by_score, ranked_relevance

    s = np.nan_to_num(scores, nan=-np.inf, copy=True).astype(np.float64)
    s[~np.isfinite(s)] = -1e9
    np.fill_diagonal(s, -1e18)  # the query itself ranks last and is cut
    ranking = rank_by_score(s)[:, :-1]
    return mean_average_precision(ranked_relevance(labels, labels, ranking), ignore_empty=True)


def _agreement(cosine: np.ndarray, positive: np.ndarray) -> tuple[float, float, int]:
    """(mean AP, mean chance AP, rows used): rank each row's others by ``cosine``, relevant = ``positive``.

    Rows without a positive are left out. Chance is the exact expectation of AP under a
    random order: ``(R-1)/(N-1) + (N-R) H_N / (N (N-1))`` for R relevant among N.
    """
    from cbir.eval.metrics import average_precision, rank_by_score

    m = cosine.shape[0]
    s = cosine.astype(np.float32, copy=True)
    np.fill_diagonal(s, -np.inf)
    pos = positive.copy()
    np.fill_diagonal(pos, False)
    rows = np.flatnonzero(pos.any(axis=1))
    if len(rows) == 0 or m < 3:
        return float("nan"), float("nan"), 0
    order = rank_by_score(s[rows])[:, :-1]  # the image itself ranks last: cut
    ranked = np.take_along_axis(pos[rows], order, axis=1)
    ap = average_precision(ranked)
    n = m - 1
    r = pos[rows].sum(axis=1).astype(np.float64)
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    chance = (r - 1) / max(n - 1, 1) + (n - r) * harmonic / (n * max(n - 1, 1))
    return float(ap.mean()), float(np.clip(chance, 0, 1).mean()), int(len(rows))


# ----------------------------------------------------------------------------- report


@dataclass
class SupervisionReport:
    """What the tags say against the features (see the module docstring). ``as_dict()`` for JSON."""

    #: images given / with at least one tag that has a vector / sampled
    images: int
    tagged: int
    sample: int
    threshold: float
    #: share of the tagged images whose tags are machine tags (None: unknown)
    machine_share: float | None
    #: share of the sampled pairs with tag similarity > threshold
    positive_share: float
    agreement: float
    chance: float
    kappa: float
    tags_carry_less: bool
    reason: str
    #: label-based numbers (an evaluation only): map_tags, map_features, base_rate, thresholds
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """"features" when the tags carry less than the features, else "tags"."""
        return "features" if self.tags_carry_less else "tags"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
        for k, v in list(d.items()):
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d

    def summary(self) -> str:
        """One line of the numbers, e.g. for a log."""
        parts = [f"{self.sample} of {self.tagged} tagged images sampled"]
        if self.machine_share is not None:
            parts.append(f"{self.machine_share:.0%} machine-tagged")
        parts.append(f"{self.positive_share:.1%} of pairs tag-similar (s > {self.threshold:g})")
        if math.isfinite(self.kappa):
            parts.append(f"feature agreement kappa {self.kappa:.2f} (AP {self.agreement:.3f}, "
                         f"chance {self.chance:.3f})")
        if self.labels:
            parts.append(f"class mAP by tags {self.labels['map_tags']:.3f}, by features "
                         f"{self.labels['map_features']:.3f}")
        return "; ".join(parts)


def _decide(tagged: int, machine_share: float | None, share: float, kappa: float
            ) -> tuple[bool, str]:
    if tagged < 2 or share <= 0:
        what = ("fewer than 2 images have a tag with a vector" if tagged < 2
                else f"no pair of images has tag similarity above {THRESHOLD:g}")
        return True, f"{what}: the tags give a weak hasher nothing to learn from"
    if machine_share is not None and machine_share >= MACHINE_MAX:
        return True, (
            f"{machine_share:.0%} of the tagged images have only machine tags, the backbone's "
            "ImageNet labels computed from these same features, so they carry nothing the "
            f"features lack (their agreement with the feature neighbours, kappa {kappa:.2f}, "
            "comes from that) and learning from them alone stayed below ITQ on every dataset "
            "measured")
    if share > POSITIVE_MAX:
        return True, (f"the tags call {share:.0%} of the image pairs similar: too coarse to "
                      "tell images apart")
    if not kappa >= KAPPA_MIN:
        return True, (f"the images the tags call similar are barely closer in feature space "
                      f"than random pairs (kappa {kappa:.2f} < {KAPPA_MIN:g}): the tags look "
                      "unrelated to what the images show")
    return False, (f"the tags call {share:.1%} of the pairs similar and those pairs are feature "
                   f"neighbours well above chance (kappa {kappa:.2f} >= {KAPPA_MIN:g})")


def measure_supervision(
    features: np.ndarray,
    tags: Sequence[Sequence[str]],
    tag_vectors: Any,
    *,
    machine: Sequence[bool] | np.ndarray | None = None,
    labels: np.ndarray | None = None,
    sample: int = SAMPLE,
    seed: int = 0,
    threshold: float = THRESHOLD,
) -> SupervisionReport:
    """Measure what ``tags`` say against ``features`` (n, d) on a sample; see the module docstring.

    tags: n lists of (cleaned) tags; tag_vectors: a :class:`cbir.hashing.weak.TagVectorsLike`;
    machine: (n,) bool, True where an image's tags are machine tags (None: unknown, no
    machine-tag rule); labels: (n,) class ids for the label-based numbers (optional;
    multi-label arrays are ignored); sample: images sampled (seeded by ``seed``).
    """
    from cbir.hashing.weak import TagSets

    x = np.asarray(features)
    if x.ndim != 2:
        raise InvalidRequest(f"features must be (n, d); got shape {x.shape}")
    n = x.shape[0]
    ts = TagSets.build(tags, tag_vectors, n, what="the supervision measurement")
    tagged = np.flatnonzero(ts.counts > 0)
    mshare = None
    if machine is not None:
        mach = np.asarray(machine, dtype=bool).reshape(-1)
        if mach.shape != (n,):
            raise InvalidRequest(f"machine must be {n} booleans, got shape {mach.shape}")
        mshare = float(mach[tagged].mean()) if len(tagged) else float(mach.mean()) if n else 0.0
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(tagged, min(int(sample), len(tagged)), replace=False)) \
        if len(tagged) else tagged
    m = len(sub)
    share = agreement = chance = kappa = float("nan")
    label_info: dict[str, Any] = {}
    if m >= 2:
        sim = ts.similarity(sub)
        pos = np.nan_to_num(sim, nan=-np.inf) > threshold
        np.fill_diagonal(pos, False)
        iu = np.triu_indices(m, 1)
        share = float(pos[iu].mean())
        xs = x[sub].astype(np.float32)
        xs /= np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-12)
        cos = xs @ xs.T
        agreement, chance, _ = _agreement(cos, pos)
        if math.isfinite(agreement):
            kappa = (agreement - chance) / (1.0 - chance) if chance < 1 else 0.0
        if labels is not None and np.asarray(labels).ndim == 1:
            lab = np.asarray(labels)[sub]
            same = (lab[:, None] == lab[None, :])[iu]
            s = np.nan_to_num(sim[iu], nan=-1.0)
            base = float(same.mean())
            th_info = {}
            for th in LABEL_THRESHOLDS:
                above = s > th
                prec = float(same[above].mean()) if above.any() else float("nan")
                th_info[str(th)] = {"share": float(above.mean()), "same_class": prec,
                                    "lift": prec / base if base > 0 else float("nan")}
            label_info = {"base_rate": base, "thresholds": th_info,
                          "map_tags": ranking_map(sim, lab), "map_features": ranking_map(cos, lab)}
    carry_less, reason = _decide(len(tagged), mshare, share if m >= 2 else 0.0, kappa)
    return SupervisionReport(
        images=n, tagged=int(len(tagged)), sample=m, threshold=float(threshold),
        machine_share=mshare, positive_share=share, agreement=agreement, chance=chance,
        kappa=kappa, tags_carry_less=carry_less, reason=reason, labels=label_info)


def choose_method(report: SupervisionReport, weak: str = "wdht") -> tuple[str, str]:
    """(method, why): ``"itq"`` when the tags carry less than the features, else ``weak``."""
    if report.tags_carry_less:
        return "itq", f"itq, because {report.reason}"
    return weak, f"{weak}, because {report.reason}"


def supervision_warning(report: SupervisionReport, method: str) -> str | None:
    """The warning for training weak method ``method`` on these tags (None if they look useful)."""
    if not report.tags_carry_less:
        return None
    return (f"the tags carry less than the features: {report.reason}. {method} learns only "
            "from them, so ITQ will likely do better: use --method auto (or itq)")


# ----------------------------------------------------------------------------- codes


@dataclass
class CodeStats:
    """Distinct codes and bit balance of n codes of ``bits`` bits; ``warning`` names a collapse."""

    images: int
    bits: int
    distinct: int
    distinct_share: float
    #: fraction of ones per bit: smallest, largest, and mean |p - 0.5|
    ones_min: float
    ones_max: float
    imbalance: float
    #: bits that are the same in more than CONSTANT_BIT of the images
    constant_bits: int
    #: the most images sharing one code
    largest_bucket: int
    collapsed: bool
    warning: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.distinct} distinct codes for {self.images} images "
                f"({self.distinct_share:.0%}, at most {self.largest_bucket} on one code); "
                f"ones per bit {self.ones_min:.2f}-{self.ones_max:.2f} "
                f"(mean |p-0.5| {self.imbalance:.2f}), {self.constant_bits} constant bit(s)")


def code_stats(codes: np.ndarray, bits: int) -> CodeStats:
    """Distinct codes and bit balance of packed ``codes`` (n, ceil(bits/8)) uint8 (see the module doc)."""
    from cbir.hashing.base import unpack_bits

    b = unpack_bits(codes, bits)
    n = b.shape[0]
    if n == 0:
        return CodeStats(0, bits, 0, 0.0, 0.0, 0.0, 0.0, 0, 0, False, None)
    c = np.ascontiguousarray(codes)
    _, counts = np.unique(c.view(np.dtype((np.void, c.shape[1]))).ravel(), return_counts=True)
    distinct = int(len(counts))
    ones = b.mean(axis=0)
    constant = int(np.sum((ones > CONSTANT_BIT) | (ones < 1.0 - CONSTANT_BIT)))
    problems = []
    if bits >= 2 * math.log2(n) and distinct < COLLAPSE_DISTINCT * n:
        problems.append(f"only {distinct} distinct codes for {n} images ({distinct / n:.0%}) "
                        f"although {bits} bits allow {2 ** bits:,}")
    if constant:
        problems.append(f"{constant} of {bits} bits are the same in more than "
                        f"{CONSTANT_BIT:.0%} of the images")
    warning = None
    if problems:
        warning = ("the codes collapsed: " + "; ".join(problems)
                   + ": images that differ share codes, so Hamming search cannot tell them apart")
    return CodeStats(
        images=n, bits=bits, distinct=distinct, distinct_share=distinct / n,
        ones_min=float(ones.min()), ones_max=float(ones.max()),
        imbalance=float(np.abs(ones - 0.5).mean()), constant_bits=constant,
        largest_bucket=int(counts.max()),
        collapsed=bool(problems), warning=warning)
