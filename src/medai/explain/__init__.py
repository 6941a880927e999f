"""Explaining a classifier: saliency maps (Grad-CAM, Grad-CAM++, occlusion), their sanity
checks (parameter randomisation, pointing game), heat-map outputs (NIfTI, PNG overlay) and
:func:`explain_run`, which does all of it for a trained run on the inputs' own grids.

Torch and MONAI side: built on :mod:`monai.visualize`.
"""

from medai.explain.run import ExplainResult, InputExplanation, explain_run
from medai.explain.saliency import SaliencyMethod, default_target_layer, saliency_map
from medai.explain.sanity import (
    LayerCheck,
    PointingResult,
    compute_map_similarity,
    pointing_game,
    randomisation_check,
)
from medai.explain.writers import best_slice, write_heatmap_nifti, write_overlay_png

__all__ = [
    "ExplainResult",
    "InputExplanation",
    "LayerCheck",
    "PointingResult",
    "SaliencyMethod",
    "best_slice",
    "compute_map_similarity",
    "default_target_layer",
    "explain_run",
    "pointing_game",
    "randomisation_check",
    "saliency_map",
    "write_heatmap_nifti",
    "write_overlay_png",
]
