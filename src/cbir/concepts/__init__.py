"""Multi-concept semantic scene retrieval (SSIR): vocabularies, query context, relevance, fusion.

Numpy only at import time; the torch losses (:mod:`cbir.concepts.losses`) load on first use.

Typical flow::

    vocab = ConceptVocabulary.from_labels(train_labels, max_size=4, min_support=200)
    context = ConceptContext(vocab, vocab.encode(train_labels))
    fit = fit_fusion_weights(components, labels, groups, has_text)   # on a validation split
    scorer = SceneScorer(context, fit.weights)
    scores = scorer.score(["beach", "sunset"], vis_s, vis_m, txt_s, txt_m, has_text)  # (n,)

The posteriors come from the concept classifiers (torch to train, numpy to run)::

    visual = train_visual_concepts(features, vocab.encode(labels), vocab.itemset_targets(sets))
    vis_s, vis_m = visual.predict(features)
    text = train_text_concepts(tag_lists, vectors, single_targets, multi_targets)
    txt_s, txt_m, has_text = text.predict(tag_lists, vectors)
"""

from __future__ import annotations

from typing import Any

from cbir.concepts.classifiers import ConceptHeads, mean_average_precision, train_visual_concepts
from cbir.concepts.context import K_RC, ConceptContext, QueryContext
from cbir.concepts.fusion import (
    FusionResult,
    fit_fusion_weights,
    log_likelihood,
    log_likelihood_and_grad,
    project_simplex,
    sample_weights,
)
from cbir.concepts.relevance import (
    COMPONENTS,
    UNIFORM_WEIGHTS,
    SceneScorer,
    check_weights,
    fuse,
    multi_relevance,
    relevance_components,
    single_relevance,
)
from cbir.concepts.sentence_cnn import TextConceptHeads, encode_tags, train_text_concepts
from cbir.concepts.tag_vectors import (
    TAG_VECTORS,
    TagVectors,
    create_tag_vectors,
    mean_tanimoto,
    tanimoto,
    tanimoto_matrix,
)
from cbir.concepts.tags import TagCleaner, build_vocabulary, clean_tags, normalize_tag
from cbir.concepts.visualness import VisualnessStats, filter_visual_tags, visualness_scores, visualness_stats
from cbir.concepts.vocabulary import ConceptVocabulary, frequent_itemsets, to_concept_matrix

_LAZY = {"balanced_concept_weights", "multi_concept_softmax_loss"}

__all__ = [
    "COMPONENTS",
    "K_RC",
    "TAG_VECTORS",
    "UNIFORM_WEIGHTS",
    "ConceptContext",
    "ConceptHeads",
    "ConceptVocabulary",
    "FusionResult",
    "QueryContext",
    "SceneScorer",
    "TagCleaner",
    "TagVectors",
    "TextConceptHeads",
    "VisualnessStats",
    "balanced_concept_weights",
    "build_vocabulary",
    "check_weights",
    "clean_tags",
    "create_tag_vectors",
    "encode_tags",
    "filter_visual_tags",
    "fit_fusion_weights",
    "frequent_itemsets",
    "fuse",
    "log_likelihood",
    "log_likelihood_and_grad",
    "mean_average_precision",
    "mean_tanimoto",
    "multi_concept_softmax_loss",
    "multi_relevance",
    "normalize_tag",
    "project_simplex",
    "relevance_components",
    "sample_weights",
    "single_relevance",
    "tanimoto",
    "tanimoto_matrix",
    "to_concept_matrix",
    "train_text_concepts",
    "train_visual_concepts",
    "visualness_scores",
    "visualness_stats",
]


def __getattr__(name: str) -> Any:
    """Load the torch-backed losses only when they are asked for."""
    if name in _LAZY:
        from cbir.concepts import losses

        return getattr(losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
