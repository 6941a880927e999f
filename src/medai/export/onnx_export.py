"""PyTorch → ONNX, and the numeric check that the ONNX model is the same model."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from medai.errors import ExportError, ParityError
from medai.evaluation.segmentation import region_dice
from medai.inference.sliding import predict_probabilities
from medai.preprocess.plan import Plan, TaskKind
from medai.runtime.session import OnnxNetwork
from medai.runtime.sliding import sliding_window_probabilities

__all__ = [
    "OPSET",
    "ImageParityReport",
    "ParityReport",
    "check_image_parity",
    "check_parity",
    "export_onnx",
]

OPSET = 17
_AXES = {0: "batch", 2: "x", 3: "y", 4: "z"}


def export_onnx(
    model: nn.Module,
    *,
    in_channels: int,
    window: Sequence[int],
    opset: int = OPSET,
    dynamic_spatial: bool = True,
) -> bytes:
    """Serialise ``model`` (eval mode, CPU) as ONNX with a dynamic batch axis.

    With ``dynamic_spatial`` (segmentation) the spatial axes of input and output are
    declared dynamic too; the runtime always feeds whole windows of ``window``, the
    size the network was trained on. Without it (a classifier: ``(B, out)`` logits of
    a fixed-size input) only the batch axis is dynamic.

    Raises:
        ExportError: If ``opset`` < 17 or the tracer cannot export the network.
    """
    if opset < OPSET:
        raise ExportError(f"opset must be >= {OPSET}; got {opset}")
    was_training = model.training
    model = model.eval()
    dummy = torch.zeros((1, in_channels, *window), dtype=torch.float32, device=_device(model))
    try:
        with tempfile.TemporaryDirectory(prefix="medai-onnx-") as tmp:
            path = Path(tmp) / "model.onnx"
            _trace(model, dummy, path, opset, dynamic_spatial=dynamic_spatial)
            return path.read_bytes()
    except Exception as exc:  # the exporter raises many untyped errors
        raise ExportError(f"the network cannot be exported to ONNX: {exc}") from exc
    finally:
        model.train(was_training)


def _trace(
    model: nn.Module, dummy: torch.Tensor, path: Path, opset: int, *, dynamic_spatial: bool
) -> None:
    axes = (
        {"image": _AXES, "logits": _AXES}
        if dynamic_spatial
        else {"image": {0: "batch"}, "logits": {0: "batch"}}
    )
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated but needs no shape hints; instance
        # norm without running statistics is exported as it runs (input statistics);
        # shape checks the tracer freezes as constants (channel counts) are harmless,
        # and check_parity catches any trace that does not generalise
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings(
            "ignore", "ONNX export mode is set to TrainingMode.EVAL", UserWarning
        )
        torch.onnx.export(
            model,
            (dummy,),
            path,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes=axes,
            dynamo=False,
        )


def _device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


@dataclass(frozen=True)
class ParityReport:
    """ONNX Runtime against PyTorch on the same preprocessed inputs.

    Attributes:
        cases: Inputs compared.
        max_abs_diff: Largest absolute difference of region probabilities.
        min_dice: Per region, the lowest Dice between the thresholded masks.
        tolerance: The largest ``max_abs_diff`` accepted.
        dice_floor: The lowest Dice accepted.
    """

    cases: int
    max_abs_diff: float
    min_dice: dict[str, float]
    tolerance: float
    dice_floor: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(
    model: nn.Module,
    network: OnnxNetwork,
    plan: Plan,
    inputs: Sequence[NDArray[Any]],
    *,
    tolerance: float = 1e-3,
    dice_floor: float = 0.99,
) -> ParityReport:
    """Run both engines through the sliding window on ``inputs``; refuse a mismatch.

    Args:
        model: The PyTorch network (any device; MONAI's sliding window runs it).
        network: The exported model in ONNX Runtime (numpy sliding window).
        plan: Window, overlap, threshold and regions.
        inputs: Preprocessed ``(C, x, y, z)`` arrays (real cases, not noise).
        tolerance: Largest accepted absolute difference of probabilities.
        dice_floor: Lowest accepted Dice of thresholded region masks.

    Raises:
        ParityError: If a difference exceeds ``tolerance`` or a Dice is below ``dice_floor``.
        ExportError: If ``inputs`` is empty.
    """
    if not inputs:
        raise ExportError("parity needs at least one preprocessed case; none was given")
    worst = 0.0
    dice = {name: 1.0 for name in plan.regions}
    window, overlap = plan.train.patch_size, plan.inference.overlap
    for array in inputs:
        ref = predict_probabilities(
            model, array, patch_size=window, overlap=overlap, device=_device(model)
        )
        got = sliding_window_probabilities(network, array, window=window, overlap=overlap)
        worst = max(worst, float(np.abs(ref - got).max()))
        cut = plan.inference.threshold
        for pos, name in enumerate(plan.regions):
            dice[name] = min(dice[name], region_dice(got[pos] >= cut, ref[pos] >= cut))
    report = ParityReport(len(inputs), worst, dice, tolerance, dice_floor)
    if worst > tolerance or min(dice.values()) < dice_floor:
        raise ParityError(
            f"ONNX Runtime differs from PyTorch on {len(inputs)} preprocessed case(s): max "
            f"|Δp| {worst:.2e} (limit {tolerance:.0e}), lowest Dice {min(dice.values()):.4f} "
            f"(floor {dice_floor}); the network uses an operator ONNX does not reproduce — "
            "export with a supported architecture, or report the network"
        )
    return report


@dataclass(frozen=True)
class ImageParityReport:
    """ONNX Runtime against PyTorch on the same fixed-size inputs (classification or
    regression).

    Attributes:
        cases: Inputs compared.
        max_abs_diff: Largest absolute difference of logits.
        decision_agreement: Share of inputs whose decision is the same (``None`` for
            regression: no decision).
        tolerance: The largest ``max_abs_diff`` accepted.
        agreement_floor: The lowest ``decision_agreement`` accepted.
    """

    cases: int
    max_abs_diff: float
    decision_agreement: float | None
    tolerance: float
    agreement_floor: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_image_parity(
    model: nn.Module,
    network: OnnxNetwork,
    plan: Plan,
    inputs: NDArray[np.float32],
    *,
    tolerance: float = 1e-3,
    agreement_floor: float = 0.99,
) -> ImageParityReport:
    """Run both engines on preprocessed inputs ``(N, C, *size)``; refuse a mismatch.

    Raises:
        ParityError: If a logit differs by more than ``tolerance``, or fewer than
            ``agreement_floor`` of the decisions agree.
        ExportError: If ``inputs`` is empty.
    """
    from medai.inference.classify import forward_logits
    from medai.inference.outputs import decide, outputs_from_logits

    if len(inputs) == 0:
        raise ExportError("parity needs at least one preprocessed case; none was given")
    ref = forward_logits(model, inputs, device=_device(model))
    got = np.concatenate([network(inputs[i : i + 8]) for i in range(0, len(inputs), 8)])
    worst = float(np.abs(ref.astype(np.float64) - got).max())
    agreement = None
    if plan.task is not TaskKind.REGRESSION:
        same = decide(outputs_from_logits(ref, plan), plan) == decide(
            outputs_from_logits(got, plan), plan
        )
        agreement = float(np.mean(same.reshape(len(inputs), -1).all(axis=1)))
    report = ImageParityReport(len(inputs), worst, agreement, tolerance, agreement_floor)
    if worst > tolerance or (agreement is not None and agreement < agreement_floor):
        raise ParityError(
            f"ONNX Runtime differs from PyTorch on {len(inputs)} preprocessed case(s): max "
            f"|Δlogit| {worst:.2e} (limit {tolerance:.0e}), decisions agree "
            f"{agreement if agreement is not None else 'n/a'} (floor {agreement_floor}); the "
            "network uses an operator ONNX does not reproduce — export with a supported "
            "architecture, or report the network"
        )
    return report
