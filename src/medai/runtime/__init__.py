"""The torch-free runtime: a model bundle run by ONNX Runtime.

Nothing under this package imports torch or MONAI (a test imports it with both
blocked). It verifies and loads bundles (:func:`load_bundle`), runs the network with a
numpy sliding window and Gaussian blending that match MONAI's, flip TTA, and the same
preprocessing and post-processing code as training (:mod:`medai.preprocess`,
:mod:`medai.inference.study`). Classification and regression bundles run through
:class:`Classifier` (fixed-size input, test-time shifts, the outputs code of
:mod:`medai.inference.outputs`); :func:`load_predictor` chooses by task. An ensemble
bundle's members all run, and their outputs are averaged as TTA members' are.
"""

from medai.runtime.bundle import (
    ALLOWED_SUFFIXES,
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    MANIFEST,
    REQUIRED_FILES,
    TASKS,
    Bundle,
    Member,
    build_manifest,
    load_bundle,
    member_files,
    read_bundle_files,
    verify_manifest,
)
from medai.runtime.classify import Classifier, fixed_input_of, load_predictor, rescale_logits
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
    "TASKS",
    "Bundle",
    "Classifier",
    "Member",
    "OnnxNetwork",
    "Segmenter",
    "available_providers",
    "build_manifest",
    "check_input",
    "fixed_input_of",
    "flip_combinations",
    "gaussian_importance_map",
    "load_bundle",
    "load_predictor",
    "member_files",
    "read_bundle_files",
    "rescale_logits",
    "sliding_window_logits",
    "sliding_window_probabilities",
    "verify_manifest",
    "window_starts",
    "write_dicom_results",
]
