"""Segmentation inference: sliding window, TTA, post-processing, back to the input grid."""

from medai.inference.postprocess import (
    postprocess_regions,
    region_dice,
    region_volumes_ml,
    regions_to_labels,
    remove_small_components,
)
from medai.inference.predict import (
    LoadedRun,
    Prediction,
    evaluate_cases,
    load_run,
    predict_case,
    read_study,
    write_prediction,
)
from medai.inference.sliding import predict_probabilities

__all__ = [
    "LoadedRun",
    "Prediction",
    "evaluate_cases",
    "load_run",
    "postprocess_regions",
    "predict_case",
    "predict_probabilities",
    "read_study",
    "region_dice",
    "region_volumes_ml",
    "regions_to_labels",
    "remove_small_components",
    "write_prediction",
]
