"""The torch-free half of segmentation inference: read a study, run the preprocessing,
turn region probabilities into a label map on the input grid, write the result.

:func:`segment_image` is the one inference flow; it takes the network as a function of
the preprocessed array, so PyTorch (:func:`medai.inference.predict_case`) and ONNX Runtime
(:mod:`medai.runtime`) share it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from medai.errors import ImageReadError
from medai.fsutil import atomic_write_text
from medai.image import LabelMap, ScalarImage
from medai.inference.postprocess import postprocess_regions, region_volumes_ml, regions_to_labels
from medai.preprocess.contrasts import complete_contrasts
from medai.preprocess.pipeline import GridRecord, preprocess_image
from medai.preprocess.plan import Plan
from medai.preprocess.steps import resample_to_grid, uncrop

if TYPE_CHECKING:
    from medai.evaluation.uncertainty import SegUncertainty

__all__ = ["Prediction", "ProbabilityFn", "read_study", "segment_image", "write_prediction"]

ProbabilityFn = Callable[[NDArray[np.float32]], NDArray[np.float32]]
"""Preprocessed ``(C, x, y, z)`` image → ``(R, x, y, z)`` sigmoid region probabilities, or
``(M, R, x, y, z)``: the probabilities of ``M`` TTA members (their mean is the prediction)."""


@dataclass(frozen=True)
class Prediction:
    """A prediction on the input grid.

    Every prediction carries its uncertainty about the largest region
    (``uncertainty_region``, e.g. WT; with TTA members ``M > 1`` their disagreement is
    included, and ``volume_spread_ml`` is set), from
    :func:`medai.evaluation.segmentation_uncertainty` on the network grid: ``uncertainty``
    is the mean voxel entropy (nats) of the members' mean probability inside the region,
    ``volume_spread_ml`` the spread of the members' volumes, and ``uncertainty_map`` the
    voxel entropy on the input grid. Without TTA (one member) all four are ``None``.
    """

    labels: LabelMap
    probabilities: ScalarImage | None
    volumes_ml: dict[str, float]
    contrasts_used: tuple[str, ...] = ()
    contrasts_missing: tuple[str, ...] = ()
    uncertainty: float | None = None
    uncertainty_map: ScalarImage | None = None
    volume_spread_ml: float | None = None
    uncertainty_region: str | None = None


def read_study(path: str | Path, channels: list[str]) -> ScalarImage:
    """Read a multi-channel image: a NIfTI/ITK file, or a DICOM folder with one
    series per channel (matched to ``channels`` by series description, else by order;
    ``meta`` names the folder and the first channel's series, whose grid it is).

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
    # the grid's series: DICOM results (SEG, SR) reference it
    meta = {"source": str(path), "series_uid": chosen[0].uid}
    return ScalarImage(data, images[0].affine, meta=meta)


def segment_image(
    img: ScalarImage,
    plan: Plan,
    probabilities: ProbabilityFn,
    *,
    keep_probabilities: bool = False,
    missing: Sequence[str] = (),
) -> Prediction:
    """Preprocess ``img`` with ``plan``, predict, and post-process on the input grid.

    Args:
        img: The multi-channel study, channels in ``plan.channels`` order (the
            declared missing ones may be left out).
        plan: The model's plan (preprocessing, regions, post-processing).
        probabilities: The network with its sliding window and TTA; when it returns
            ``M > 1`` TTA members, their mean is post-processed (the same labels as
            from the averaged output) and their disagreement enters the uncertainty.
        keep_probabilities: Also return region probabilities (input grid).
        missing: Contrasts the study lacks (:mod:`medai.preprocess.contrasts`).

    Raises:
        DatasetError: If ``img`` does not hold the plan's channels, or a channel is
            empty but not declared missing.
    """
    img = complete_contrasts(img, plan, missing=missing)
    pre = preprocess_image(img, plan.preprocess)
    probs = probabilities(pre.image.array.astype(np.float32, copy=False))
    members = probs if probs.ndim == 5 else probs[None]
    probs = _member_mean(members)
    on_input = _back_to_input(ScalarImage(probs, pre.image.affine), pre.record)
    masks = postprocess_regions(
        on_input.array, plan.regions, spacing=img.spacing, plan=plan.inference
    )
    labels = LabelMap(regions_to_labels(masks, plan.regions)[None], img.affine, meta=img.meta)
    volumes = region_volumes_ml(labels.array[0], plan.regions, img.spacing)
    kept = on_input.with_array(on_input.array) if keep_probabilities else None
    used, gone = img.meta["contrasts_used"], img.meta["contrasts_missing"]
    region = max(plan.regions, key=lambda name: len(plan.regions[name]))  # WT for BraTS
    index = list(plan.regions).index(region)
    spacing_ml = float(np.prod(pre.image.spacing)) / 1000.0
    unc = _uncertainty(members[:, index : index + 1], plan.inference.threshold, spacing_ml)
    entropy = ScalarImage(unc.map[None].astype(np.float32), pre.image.affine)
    return Prediction(
        labels, kept, volumes, tuple(used), tuple(gone),
        uncertainty=unc.score, uncertainty_map=_back_to_input(entropy, pre.record),
        volume_spread_ml=unc.volume_spread_ml if members.shape[0] > 1 else None,
        uncertainty_region=region,
    )  # fmt: skip


def _member_mean(members: NDArray[np.float32]) -> NDArray[np.float32]:
    """Mean over the first axis summed in member order, as the TTA loops sum their
    members (so the labels are the same, bit for bit, as from the averaged output)."""
    if members.ndim != 5 or members.shape[0] < 1:
        raise ValueError(
            f"the probability function returned shape {members.shape}; expected (R, x, y, z) "
            "or (M, R, x, y, z) with M >= 1 members"
        )
    total = members[0].astype(np.float32, copy=True)
    for member in members[1:]:
        total += member
    return total / np.float32(members.shape[0]) if members.shape[0] > 1 else total


def _uncertainty(
    members: NDArray[np.float32], threshold: float, spacing_ml: float
) -> SegUncertainty:
    """:func:`medai.evaluation.segmentation_uncertainty` of one region's ``(M, 1, …)``
    members (imported here: the evaluation package is only needed with TTA)."""
    from medai.evaluation.uncertainty import segmentation_uncertainty

    return segmentation_uncertainty(
        members, threshold=threshold, region_index=0, spacing_ml=spacing_ml
    )


def _input_box(rec: GridRecord) -> list[tuple[int, int]] | None:
    """The input-grid box outside which linear interpolation of the uncropped
    probabilities reads only the zeros around the crop (``None``: no overlap)."""
    lo_hi = np.array([(lo - 1, hi) for lo, hi in rec.bbox], dtype=np.float64)
    corners = np.array(np.meshgrid(*lo_hi, indexing="ij")).reshape(3, -1)
    to_input = np.linalg.inv(rec.input_affine) @ rec.resampled_affine
    ijk = to_input[:3, :3] @ corners + to_input[:3, 3:4]
    box = []
    for axis, size in enumerate(rec.input_shape):
        lo = max(int(np.floor(ijk[axis].min())) - 1, 0)
        hi = min(int(np.ceil(ijk[axis].max())) + 2, size)
        if lo >= hi:
            return None
        box.append((lo, hi))
    return box


def _back_to_input(cropped: ScalarImage, rec: GridRecord) -> ScalarImage:
    """Cropped network-grid probabilities → the input grid (linear interpolation).

    Only the input voxels whose interpolation can reach the crop are resampled; the
    others read zeros only, so they are set to 0 directly (the same values, a fraction
    of the time on a large study).
    """
    full = uncrop(cropped, rec.bbox, rec.resampled_shape, rec.resampled_affine)
    out = np.zeros((cropped.num_channels, *rec.input_shape), dtype=np.float32)
    box = _input_box(rec)
    if box is not None:
        start = np.array([lo for lo, _ in box] + [1.0])
        affine = rec.input_affine.copy()
        affine[:3, 3] = (rec.input_affine @ start)[:3]
        shape = (box[0][1] - box[0][0], box[1][1] - box[1][0], box[2][1] - box[2][0])
        part = resample_to_grid(full, shape, affine, order=1)
        out[:, box[0][0] : box[0][1], box[1][0] : box[1][1], box[2][0] : box[2][1]] = part.array
    return ScalarImage(out, rec.input_affine)


def write_prediction(prediction: Prediction, out: str | Path) -> dict[str, Path]:
    """Write ``labels.nii.gz``, ``volumes.json`` and (if kept) ``probabilities.nii.gz``;
    with TTA also ``uncertainty.nii.gz`` (voxel entropy) and the score in ``volumes.json``.

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
    payload: dict[str, Any] = {
        "volumes_ml": prediction.volumes_ml,
        "contrasts_used": list(prediction.contrasts_used),
        "contrasts_missing": list(prediction.contrasts_missing),
    }
    if prediction.uncertainty is not None:
        payload["uncertainty"] = {
            "score": prediction.uncertainty,
            "region": prediction.uncertainty_region,
            "volume_spread_ml": prediction.volume_spread_ml,
            "measure": "mean voxel entropy (nats) inside the region, TTA members",
        }
    atomic_write_text(volumes, json.dumps(payload, indent=2) + "\n")
    paths["volumes"] = volumes
    if prediction.probabilities is not None:
        prob_path = folder / f"{prefix}probabilities.nii.gz"
        paths["probabilities"] = write_nifti(prediction.probabilities, prob_path)
    if prediction.uncertainty_map is not None:
        map_path = folder / f"{prefix}uncertainty.nii.gz"
        paths["uncertainty"] = write_nifti(prediction.uncertainty_map, map_path)
    return paths
