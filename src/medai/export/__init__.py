"""Export a trained model as a bundle the torch-free runtime (:mod:`medai.runtime`) runs."""

from medai.export.bundle_writer import ExportResult, export_bundle, export_run
from medai.export.card import build_model_card, reference_distribution, render_model_card
from medai.export.onnx_export import OPSET, ParityReport, check_parity, export_onnx

__all__ = [
    "OPSET",
    "ExportResult",
    "ParityReport",
    "build_model_card",
    "check_parity",
    "export_bundle",
    "export_onnx",
    "export_run",
    "reference_distribution",
    "render_model_card",
]
