"""``predict_case``: a trained run + an image (NIfTI file, DICOM study, ScalarImage)
→ a label map on the input grid, optional region probabilities and volumes (mL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from medai.errors import DatasetError, ImageReadError, PlanError, validation_summary
from medai.fsutil import atomic_write_text
from medai.image import LabelMap, ScalarImage
from medai.inference.postprocess import postprocess_regions, region_volumes_ml, regions_to_labels
from medai.inference.sliding import predict_probabilities
from medai.preprocess.pipeline import preprocess_image
from medai.preprocess.plan import Plan
from medai.preprocess.steps import resample_to_grid, uncrop

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


@dataclass(frozen=True)
class Prediction:
    """A prediction on the input grid."""

    labels: LabelMap
    probabilities: ScalarImage | None
    volumes_ml: dict[str, float]


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


def read_study(path: str | Path, channels: list[str]) -> ScalarImage:
    """Read a multi-channel image: a NIfTI/ITK file, or a DICOM folder with one
    series per channel (matched to ``channels`` by series description, else by order).

    Raises:
        ImageReadError: If the channels cannot be found or do not share a grid.
    """
    from medai.io import find_series, read_dicom_series, read_image

    path = Path(path)
    if not path.is_dir():
        return read_image(path)
    series = [s for s in find_series(path) if s.problem is None]
    if len(series) < len(channels):
        raise ImageReadError(path, f"found {len(series)} usable series; need {channels}")
    by_name = {s.description.strip().lower(): s for s in series}
    if all(c.lower() in by_name for c in channels):
        chosen = [by_name[c.lower()] for c in channels]
    else:
        chosen = series[: len(channels)]
    images: list[ScalarImage] = [read_dicom_series(path, series_uid=s.uid) for s in chosen]
    for other in images[1:]:
        if not other.same_grid(images[0], atol=1e-3):
            raise ImageReadError(path, "the channel series do not share one voxel grid")
    data = np.concatenate([im.array.astype(np.float32) for im in images])
    return ScalarImage(data, images[0].affine, meta={"source": str(path)})


def predict_case(
    run: LoadedRun | str | Path,
    image: ScalarImage | str | Path,
    *,
    tta: bool | None = None,
    keep_probabilities: bool = False,
) -> Prediction:
    """Segment one case and return the result on the input image's grid.

    Args:
        run: A :class:`LoadedRun` or a run folder.
        image: A multi-channel ScalarImage, a NIfTI file or a DICOM study folder.
        tta: Flip test-time augmentation; default from the plan.
        keep_probabilities: Also return region probabilities (input grid).
    """
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    plan = loaded.plan
    img = image if isinstance(image, ScalarImage) else read_study(image, plan.channels)
    if img.num_channels != len(plan.channels):
        raise DatasetError(
            f"image has {img.num_channels} channels; the model needs {len(plan.channels)} "
            f"({', '.join(plan.channels)}), in that order"
        )
    pre = preprocess_image(img, plan.preprocess)
    probs = predict_probabilities(
        loaded.model,
        pre.image.array,
        patch_size=plan.train.patch_size,
        overlap=plan.inference.overlap,
        tta_flips=plan.inference.tta_flips if tta is None else tta,
        device=loaded.device,
        amp=plan.train.amp,
    )
    rec = pre.record
    cropped = ScalarImage(probs, pre.image.affine)
    full = uncrop(cropped, rec.bbox, rec.resampled_shape, rec.resampled_affine)
    on_input = resample_to_grid(full, rec.input_shape, rec.input_affine, order=1)
    masks = postprocess_regions(
        on_input.array, plan.regions, spacing=img.spacing, plan=plan.inference
    )
    labels = LabelMap(regions_to_labels(masks, plan.regions)[None], img.affine, meta=img.meta)
    volumes = region_volumes_ml(labels.array[0], plan.regions, img.spacing)
    probabilities = on_input.with_array(on_input.array) if keep_probabilities else None
    return Prediction(labels, probabilities, volumes)


def write_prediction(prediction: Prediction, out: str | Path) -> dict[str, Path]:
    """Write ``labels.nii.gz``, ``volumes.json`` and (if kept) ``probabilities.nii.gz``.

    ``out`` is a folder, or a ``.nii.gz`` path for the label map (the other files go
    beside it with the same stem).
    """
    from medai.io import write_nifti

    out = Path(out)
    if str(out).endswith((".nii", ".nii.gz")):
        stem = out.name.split(".")[0]
        folder, label_path = out.parent, out
    else:
        stem, folder, label_path = "labels", out, out / "labels.nii.gz"
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"labels": write_nifti(prediction.labels, label_path)}
    prefix = "" if stem == "labels" else f"{stem}_"
    volumes = folder / f"{prefix}volumes.json"
    payload: dict[str, Any] = {"volumes_ml": prediction.volumes_ml}
    atomic_write_text(volumes, json.dumps(payload, indent=2) + "\n")
    paths["volumes"] = volumes
    if prediction.probabilities is not None:
        prob_path = folder / f"{prefix}probabilities.nii.gz"
        paths["probabilities"] = write_nifti(prediction.probabilities, prob_path)
    return paths


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
