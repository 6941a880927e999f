"""``predict_case``: a trained run + an image (NIfTI file, DICOM study, ScalarImage)
→ a label map on the input grid, optional region probabilities and volumes (mL).

The PyTorch path: it loads ``model.pt`` and runs MONAI's sliding window. The flow
around the network (:func:`medai.inference.study.segment_image`) is torch-free and
shared with the ONNX Runtime path of :mod:`medai.runtime`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import ValidationError
from torch import nn

from medai.errors import DatasetError, PlanError, validation_summary
from medai.image import ScalarImage
from medai.inference.sliding import predict_probabilities
from medai.inference.study import Prediction, read_study, segment_image, write_prediction
from medai.preprocess.contrasts import resolve_missing
from medai.preprocess.plan import Plan

__all__ = [
    "LoadedRun",
    "Prediction",
    "evaluate_cases",
    "load_run",
    "predict_case",
    "read_study",
    "write_prediction",
]


@dataclass(frozen=True)
class LoadedRun:
    """A trained model with its plan, ready to predict."""

    plan: Plan
    model: nn.Module
    device: torch.device


def load_run(run_dir: str | Path, *, device: str | None = None) -> LoadedRun:
    """Load ``model.pt`` (weights + final plan) from a training run folder.

    Raises:
        FileNotFoundError: If the folder has no ``model.pt``.
        PlanError: If ``model.pt`` holds no plan this version of medai can read.
    """
    from medai.training.networks import build_network

    path = Path(run_dir) / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {run_dir} a finished training run?")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    payload = torch.load(path, map_location=dev, weights_only=False)
    try:
        plan = Plan.model_validate(payload["plan"])
    except (KeyError, TypeError, ValidationError) as exc:
        raise PlanError(
            f"{path} holds no valid plan ({validation_summary(exc)}); retrain the run, or "
            "predict with the medai version that trained it"
        ) from exc
    model = build_network(
        plan.network, in_channels=len(plan.channels), out_channels=len(plan.regions)
    )
    model.load_state_dict(payload["model"])
    return LoadedRun(plan, model.to(dev).eval(), dev)


def predict_case(
    run: LoadedRun | str | Path,
    image: ScalarImage | str | Path,
    *,
    tta: bool | None = None,
    keep_probabilities: bool = False,
    missing: Sequence[str] = (),
) -> Prediction:
    """Segment one case and return the result on the input image's grid.

    Args:
        run: A :class:`LoadedRun` or a run folder.
        image: A multi-channel ScalarImage, a NIfTI file or a DICOM study folder.
        tta: Flip test-time augmentation; default from the plan.
        keep_probabilities: Also return region probabilities (input grid).
        missing: Contrasts the study lacks; the prediction says which it used.
    """
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    plan = loaded.plan
    gone = resolve_missing(plan.channels, missing)
    present = [c for c in plan.channels if c not in gone]
    img = image if isinstance(image, ScalarImage) else read_study(image, present)
    flips = plan.inference.tta_flips if tta is None else tta

    def probabilities(array: NDArray[np.float32]) -> NDArray[np.float32]:
        return predict_probabilities(
            loaded.model,
            array,
            patch_size=plan.train.patch_size,
            overlap=plan.inference.overlap,
            tta_flips=flips,
            device=loaded.device,
            amp=plan.train.amp,
        )

    return segment_image(
        img, plan, probabilities, keep_probabilities=keep_probabilities, missing=gone
    )


def evaluate_cases(
    run: LoadedRun | str | Path,
    source: Any,
    case_ids: list[str],
    *,
    tta: bool | None = None,
    on_case: Callable[[str, dict[str, float]], None] | None = None,
) -> dict[str, list[float]]:
    """Predict labelled cases and score each region's Dice on the input grid.

    Uses the BraTS rule for an empty reference (no prediction scores 1, any scores 0).

    Args:
        run: A :class:`LoadedRun` or a run folder.
        source: MSD folder, ``medai.data.Dataset`` or ``SegCohort``.
        case_ids: The (test) cases to score.
        tta: Flip test-time augmentation; default from the plan.
        on_case: Called with ``(case_id, {region: dice})`` after each case.

    Returns:
        Region → per-case Dice, in ``case_ids`` order.
    """
    from medai.inference.postprocess import region_dice
    from medai.preprocess.cases import as_cohort

    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    cohort = as_cohort(source)
    scores: dict[str, list[float]] = {name: [] for name in loaded.plan.regions}
    for case in cohort.subset(list(case_ids)):
        label = case.load_label()
        if label is None:
            raise DatasetError(
                f"case {case.case_id!r} has no label to score against; add its label or "
                "leave it out of the scored cases"
            )
        pred = predict_case(loaded, case.load_image(), tta=tta).labels.array[0]
        ref = label.array[0]
        dice = {
            name: region_dice(np.isin(pred, ids), np.isin(ref, ids))
            for name, ids in loaded.plan.regions.items()
        }
        for name, value in dice.items():
            scores[name].append(value)
        if on_case is not None:
            on_case(case.case_id, dice)
    return scores
