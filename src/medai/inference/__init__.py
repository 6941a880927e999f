"""Segmentation inference: sliding window, TTA, post-processing, back to the input grid.

Importing this package does not import torch: post-processing and the study flow
(:mod:`medai.inference.postprocess`, :mod:`medai.inference.study`) are numpy code that
the torch-free runtime (:mod:`medai.runtime`) runs too. The PyTorch path
(``load_run``, ``predict_case``, ``predict_probabilities`` …) is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medai._lazy import load_lazy
from medai.inference.postprocess import (
    postprocess_regions,
    region_volumes_ml,
    regions_to_labels,
    remove_small_components,
)
from medai.inference.study import (
    Prediction,
    ProbabilityFn,
    read_study,
    segment_image,
    write_prediction,
)

if TYPE_CHECKING:
    from medai.inference.predict import LoadedRun, load_run, predict_case
    from medai.inference.sliding import predict_probabilities

__all__ = [
    "LoadedRun",
    "Prediction",
    "ProbabilityFn",
    "load_run",
    "postprocess_regions",
    "predict_case",
    "predict_probabilities",
    "read_study",
    "region_volumes_ml",
    "regions_to_labels",
    "remove_small_components",
    "segment_image",
    "write_prediction",
]

# the names that need torch, and the module holding each
_TORCH_PATH = {
    "LoadedRun": "medai.inference.predict",
    "load_run": "medai.inference.predict",
    "predict_case": "medai.inference.predict",
    "predict_probabilities": "medai.inference.sliding",
}


def __getattr__(name: str) -> Any:
    """The PyTorch path's names, imported when first asked for (PEP 562)."""
    return load_lazy(__name__, _TORCH_PATH, globals(), name)
