"""PyTorch → ONNX, and the numeric check that the ONNX model is the same model."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
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
    "check_ensemble_image_parity",
    "check_ensemble_parity",
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
        members: For an ensemble (whose figures these are: its mean probabilities), each
            member's own report; empty for one model.
    """

    cases: int
    max_abs_diff: float
    min_dice: dict[str, float]
    tolerance: float
    dice_floor: float
    members: tuple[ParityReport, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.members:
            out.pop("members")
        return out


class _Agreement:
    """Accumulates the worst probability difference and the lowest region Dice."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.cases = 0
        self.worst = 0.0
        self.dice = {name: 1.0 for name in plan.regions}

    def update(self, ref: NDArray[Any], got: NDArray[Any]) -> None:
        self.cases += 1
        self.worst = max(self.worst, float(np.abs(ref - got).max()))
        cut = self.plan.inference.threshold
        for pos, name in enumerate(self.plan.regions):
            self.dice[name] = min(self.dice[name], region_dice(got[pos] >= cut, ref[pos] >= cut))

    def aggregate(self, tolerance: float, dice_floor: float) -> ParityReport:
        return ParityReport(self.cases, self.worst, dict(self.dice), tolerance, dice_floor)


def _refuse(report: ParityReport, what: str = "ONNX Runtime") -> None:
    low = min(report.min_dice.values())
    if report.max_abs_diff > report.tolerance or low < report.dice_floor:
        raise ParityError(
            f"{what} differs from PyTorch on {report.cases} preprocessed case(s): max "
            f"|Δp| {report.max_abs_diff:.2e} (limit {report.tolerance:.0e}), lowest Dice "
            f"{low:.4f} (floor {report.dice_floor}); the network uses an operator ONNX does "
            "not reproduce — export with a supported architecture, or report the network"
        )


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
    return check_ensemble_parity(
        [model], [network], [plan], inputs, tolerance=tolerance, dice_floor=dice_floor
    )


def check_ensemble_parity(
    models: Sequence[nn.Module],
    networks: Sequence[OnnxNetwork],
    plans: Sequence[Plan],
    inputs: Sequence[NDArray[Any]],
    *,
    tolerance: float = 1e-3,
    dice_floor: float = 0.99,
) -> ParityReport:
    """:func:`check_parity` for each member of an ensemble (its own plan's threshold)
    and for the ensemble's mean probabilities (the first plan's); one model: the same
    check as :func:`check_parity`.

    Raises:
        ParityError: If a member, or the ensemble, differs (the message names which).
        ExportError: If ``inputs`` is empty or the counts of models, networks and plans
            differ.
    """
    if not inputs:
        raise ExportError("parity needs at least one preprocessed case; none was given")
    if not len(models) == len(networks) == len(plans) >= 1:
        raise ExportError(
            f"parity needs one network and plan per model; got {len(models)} models, "
            f"{len(networks)} networks, {len(plans)} plans"
        )
    lead = plans[0]
    window, overlap = lead.train.patch_size, lead.inference.overlap
    each = [_Agreement(plan) for plan in plans]
    whole = _Agreement(lead)
    for array in inputs:
        refs, gots = [], []
        for model, network, agreement in zip(models, networks, each, strict=True):
            ref = predict_probabilities(
                model, array, patch_size=window, overlap=overlap, device=_device(model)
            )
            got = sliding_window_probabilities(network, array, window=window, overlap=overlap)
            agreement.update(ref, got)
            refs.append(ref)
            gots.append(got)
        whole.update(np.mean(refs, axis=0), np.mean(gots, axis=0))
    if len(models) == 1:
        report = whole.aggregate(tolerance, dice_floor)
        _refuse(report)
        return report
    reports = tuple(a.aggregate(tolerance, dice_floor) for a in each)
    for i, member in enumerate(reports):
        _refuse(member, f"ensemble member {i}: ONNX Runtime")
    report = replace(whole.aggregate(tolerance, dice_floor), members=reports)
    _refuse(report, f"the ensemble of {len(models)} in ONNX Runtime")
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
        members: For an ensemble (whose figures these are), each member's own report;
            empty for one model.
    """

    cases: int
    max_abs_diff: float
    decision_agreement: float | None
    tolerance: float
    agreement_floor: float
    members: tuple[ImageParityReport, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.members:
            out.pop("members")
        return out


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
    return check_ensemble_image_parity(
        [model], [network], [plan], inputs, tolerance=tolerance, agreement_floor=agreement_floor
    )


def check_ensemble_image_parity(
    models: Sequence[nn.Module],
    networks: Sequence[OnnxNetwork],
    plans: Sequence[Plan],
    inputs: NDArray[np.float32],
    *,
    tolerance: float = 1e-3,
    agreement_floor: float = 0.99,
) -> ImageParityReport:
    """:func:`check_image_parity` for each member of an ensemble (its own plan) and for
    the ensemble: the members' logits in the first plan's terms
    (:func:`medai.runtime.rescale_logits`), decisions on their mean output.

    Raises:
        ParityError: If a member, or the ensemble, differs (the message names which).
        ExportError: If ``inputs`` is empty, or the counts of models, networks and plans
            differ.
    """
    from medai.inference.classify import forward_logits
    from medai.runtime.classify import rescale_logits

    if len(inputs) == 0:
        raise ExportError("parity needs at least one preprocessed case; none was given")
    if not len(models) == len(networks) == len(plans) >= 1:
        raise ExportError(
            f"parity needs one network and plan per model; got {len(models)} models, "
            f"{len(networks)} networks, {len(plans)} plans"
        )
    refs, gots, reports = [], [], []
    for model, network, plan in zip(models, networks, plans, strict=True):
        ref = forward_logits(model, inputs, device=_device(model))
        got = np.concatenate([network(inputs[i : i + 8]) for i in range(0, len(inputs), 8)])
        reports.append(_image_report(ref[None], got[None], plan, tolerance, agreement_floor))
        refs.append(rescale_logits(ref, plan, plans[0]))
        gots.append(rescale_logits(got, plan, plans[0]))
    if len(models) == 1:
        _refuse_image(reports[0])
        return reports[0]
    for i, member in enumerate(reports):
        _refuse_image(member, f"ensemble member {i}: ONNX Runtime")
    both = _image_report(np.stack(refs), np.stack(gots), plans[0], tolerance, agreement_floor)
    report = replace(both, members=tuple(reports))
    _refuse_image(report, f"the ensemble of {len(models)} in ONNX Runtime")
    return report


def _image_report(
    ref: NDArray[Any], got: NDArray[Any], plan: Plan, tolerance: float, agreement_floor: float
) -> ImageParityReport:
    """Compare members' logits ``(M, N, out)``: the worst difference, and the share of
    cases whose decision on the members' mean output is the same."""
    from medai.inference.outputs import decide, outputs_from_logits

    worst = float(np.abs(ref.astype(np.float64) - got).max())
    agreement = None
    if plan.task is not TaskKind.REGRESSION:
        same = decide(outputs_from_logits(ref, plan).mean(axis=0), plan) == decide(
            outputs_from_logits(got, plan).mean(axis=0), plan
        )
        agreement = float(np.mean(same.reshape(ref.shape[1], -1).all(axis=1)))
    return ImageParityReport(ref.shape[1], worst, agreement, tolerance, agreement_floor)


def _refuse_image(report: ImageParityReport, what: str = "ONNX Runtime") -> None:
    agreement = report.decision_agreement
    if report.max_abs_diff > report.tolerance or (
        agreement is not None and agreement < report.agreement_floor
    ):
        raise ParityError(
            f"{what} differs from PyTorch on {report.cases} preprocessed case(s): max "
            f"|Δlogit| {report.max_abs_diff:.2e} (limit {report.tolerance:.0e}), decisions "
            f"agree {agreement if agreement is not None else 'n/a'} (floor "
            f"{report.agreement_floor}); the network uses an operator ONNX does not "
            "reproduce — export with a supported architecture, or report the network"
        )
