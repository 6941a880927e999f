"""The torch-free runtime: a model bundle run by ONNX Runtime.

Nothing under this package imports torch or MONAI (a test imports it with both
blocked). It verifies and loads bundles (:func:`load_bundle`), runs the network with a
numpy sliding window and Gaussian blending that match MONAI's, flip TTA, and the same
preprocessing and post-processing code as training (:mod:`medai.preprocess`,
:mod:`medai.inference.study`).
"""

from medai.runtime.bundle import (
    ALLOWED_SUFFIXES,
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    MANIFEST,
    REQUIRED_FILES,
    Bundle,
    build_manifest,
    load_bundle,
    read_bundle_files,
    verify_manifest,
)
from medai.runtime.outputs import write_dicom_results
from medai.runtime.predict import Segmenter, check_input
from medai.runtime.session import OnnxNetwork, available_providers
from medai.runtime.sliding import (
    flip_combinations,
    gaussian_importance_map,
    sliding_window_logits,
    sliding_window_probabilities,
    window_starts,
)

__all__ = [
    "ALLOWED_SUFFIXES",
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "MANIFEST",
    "REQUIRED_FILES",
    "Bundle",
    "OnnxNetwork",
    "Segmenter",
    "available_providers",
    "build_manifest",
    "check_input",
    "flip_combinations",
    "gaussian_importance_map",
    "load_bundle",
    "read_bundle_files",
    "sliding_window_logits",
    "sliding_window_probabilities",
    "verify_manifest",
    "window_starts",
    "write_dicom_results",
]
