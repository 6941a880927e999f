"""Export a trained model as a bundle the torch-free runtime (:mod:`medai.runtime`) runs:
segmentation runs (:mod:`medai.export.bundle_writer`), classification and regression
runs (:mod:`medai.export.image_export`); several runs of one plan as one ensemble
bundle (:mod:`medai.export.ensemble`)."""

from medai.export.bundle_writer import ExportResult, export_bundle, export_run
from medai.export.card import build_model_card, reference_distribution, render_model_card
from medai.export.ensemble import check_same_plan, ensemble_card, ensemble_members
from medai.export.image_card import (
    build_image_model_card,
    image_reference_distribution,
    render_image_model_card,
)
from medai.export.image_export import export_image_bundle, export_image_run, image_bundle_info
from medai.export.onnx_export import (
    OPSET,
    ImageParityReport,
    ParityReport,
    check_ensemble_image_parity,
    check_ensemble_parity,
    check_image_parity,
    check_parity,
    export_onnx,
)

__all__ = [
    "OPSET",
    "ExportResult",
    "ImageParityReport",
    "ParityReport",
    "build_image_model_card",
    "build_model_card",
    "check_ensemble_image_parity",
    "check_ensemble_parity",
    "check_image_parity",
    "check_parity",
    "check_same_plan",
    "ensemble_card",
    "ensemble_members",
    "export_bundle",
    "export_image_bundle",
    "export_image_run",
    "export_onnx",
    "export_run",
    "image_bundle_info",
    "image_reference_distribution",
    "reference_distribution",
    "render_image_model_card",
    "render_model_card",
]
