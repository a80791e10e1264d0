"""Model training: classification heads on stored features, a model registry, training curves.

Train with :func:`train_from_folder` (or :func:`train_classifier` on arrays), keep models
in a :class:`ModelRegistry`, and use them through :mod:`cbir.train.apply` (labelling,
class-partitioned indexing, re-ranking). torch is imported only while training.
"""

from cbir.train.model import ClassifierModel
from cbir.train.registry import ModelRegistry, check_name, default_models_dir
from cbir.train.trainer import (
    EpochStats,
    SmallClassWarning,
    TrainConfig,
    TrainResult,
    check_class_counts,
    stratified_split,
    train_classifier,
    train_from_folder,
)

__all__ = [
    "ClassifierModel",
    "EpochStats",
    "ModelRegistry",
    "SmallClassWarning",
    "TrainConfig",
    "TrainResult",
    "check_class_counts",
    "check_name",
    "default_models_dir",
    "stratified_split",
    "train_classifier",
    "train_from_folder",
]
