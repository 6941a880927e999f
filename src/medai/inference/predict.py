"""``predict_case``: a trained run + an image (NIfTI file, DICOM study, ScalarImage)
→ a label map on the input grid, optional region probabilities and volumes (mL).

The PyTorch path: it loads ``model.pt`` and runs MONAI's sliding window. The flow
around the network (:func:`medai.inference.study.segment_image`) is torch-free and
shared with the ONNX Runtime path of :mod:`medai.runtime`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import ValidationError
from torch import nn

from medai.errors import PlanError, validation_summary
from medai.image import ScalarImage
from medai.inference.sliding import predict_probabilities
from medai.inference.study import Prediction, read_study, segment_image, write_prediction
from medai.networks import build_plan_network
from medai.preprocess.contrasts import resolve_missing
from medai.preprocess.plan import Plan

__all__ = [
    "LoadedRun",
    "Prediction",
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
    model = build_plan_network(plan)
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
        tta: Flip test-time augmentation; default from the plan. With it the
            prediction carries an uncertainty score and map (none without).
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
            members=flips,
        )

    return segment_image(
        img, plan, probabilities, keep_probabilities=keep_probabilities, missing=gone
    )
