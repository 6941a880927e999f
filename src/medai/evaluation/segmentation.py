"""Segmentation metrics in millimetres: overlap, surface distances, volumes.

Inputs are two masks on the same grid: :class:`~medai.image.LabelMap` images (spacing
read from the affine) or bare boolean / integer arrays ``(x, y)`` or ``(x, y, z)`` with
``spacing=`` given in mm. ``label=None`` takes every non-zero voxel as foreground;
``label=k`` takes voxels equal to ``k``.

Surfaces follow MONAI (``monai.metrics.utils.get_mask_edges``): a surface voxel is a
foreground voxel removed by one binary erosion with the face-connected structure
(voxels on the array border count as surface). A surface distance is the Euclidean
distance in mm from a surface voxel centre of one mask to the nearest surface voxel
centre of the other, computed with ``scipy.ndimage.distance_transform_edt(sampling=...)``
on the union's bounding box. HD95 is the larger of the two directed 95th percentiles
(linear interpolation), ASSD the mean of both directed distance sets pooled, and the
normalised surface Dice (NSD) the fraction of both surfaces within the tolerance.

Empty masks (documented convention, as the BraTS challenge):
    * both empty: Dice = IoU = NSD = 1, HD95 = ASSD = 0, volume errors 0;
    * one empty: Dice = IoU = NSD = 0, HD95 = ASSD = ``empty_distance`` (NaN by default;
      BraTS uses 373.13 mm), relative volume error NaN when the reference is empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from medai.errors import GeometryError
from medai.image import LabelMap

__all__ = [
    "SegmentationAccumulator",
    "compute_absolute_volume_error",
    "compute_assd",
    "compute_dice",
    "compute_hd95",
    "compute_iou",
    "compute_relative_volume_error",
    "compute_segmentation_metrics",
    "compute_surface_dice",
    "region_dice",
]

MaskLike = LabelMap | ArrayLike


def _mask(value: MaskLike, label: int | None, name: str) -> NDArray[np.bool_]:
    array = value.numpy3d() if isinstance(value, LabelMap) else np.asarray(value)
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be a LabelMap or a 2-D/3-D array; got shape {array.shape}")
    if isinstance(value, LabelMap) and array.shape[2] == 1:
        array = array[:, :, 0]
    return array != 0 if label is None else array == label


def _masks(
    pred: MaskLike, ref: MaskLike, label: int | None
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    if isinstance(pred, LabelMap) and isinstance(ref, LabelMap) and not pred.same_grid(ref):
        raise GeometryError(
            f"pred and ref are on different grids (shapes {pred.shape} vs {ref.shape} or "
            "different affines); resample the prediction onto the reference first"
        )
    p, r = _mask(pred, label, "pred"), _mask(ref, label, "ref")
    if p.shape != r.shape:
        raise GeometryError(f"pred and ref shapes differ: {p.shape} vs {r.shape}")
    return p, r


def _spacing(
    pred: MaskLike, ref: MaskLike, spacing: Sequence[float] | None, ndim: int
) -> NDArray[np.float64]:
    image = pred if isinstance(pred, LabelMap) else ref if isinstance(ref, LabelMap) else None
    if image is not None:
        from_image = np.asarray(image.spacing[:ndim], dtype=np.float64)
        if spacing is not None and not np.allclose(spacing, from_image, rtol=1e-5):
            raise ValueError(
                f"spacing={tuple(spacing)} contradicts the LabelMap spacing "
                f"{tuple(from_image)}; leave spacing out for LabelMaps"
            )
        return from_image
    if spacing is None:
        raise ValueError("spacing (mm per axis) is required for bare arrays; pass spacing=(...)")
    result = np.asarray(spacing, dtype=np.float64)
    if result.shape != (ndim,) or not np.all(result > 0):
        raise ValueError(f"spacing must be {ndim} positive numbers; got {tuple(spacing)}")
    return result


def _overlap(p: NDArray[np.bool_], r: NDArray[np.bool_]) -> tuple[float, float]:
    inter = float(np.count_nonzero(p & r))
    total = float(np.count_nonzero(p) + np.count_nonzero(r))
    if total == 0:
        return 1.0, 1.0
    return 2.0 * inter / total, inter / (total - inter)


def compute_dice(pred: MaskLike, ref: MaskLike, *, label: int | None = None) -> float:
    """Dice = 2|P∩R| / (|P| + |R|); 1 when both masks are empty."""
    return _overlap(*_masks(pred, ref, label))[0]


def region_dice(pred: NDArray[Any], ref: NDArray[Any]) -> float:
    """Dice of two binary masks of any rank (1D and up): :func:`compute_dice`, BraTS rule.

    An empty reference scores 1 when the prediction is empty too and 0 otherwise.
    Training's validation, export's parity check and the benchmarks score with it, so
    a region's Dice is computed by this module's one implementation everywhere.
    """
    p, r = (np.atleast_2d(np.asarray(m, dtype=bool)) for m in (pred, ref))
    return compute_dice(p, r)


def compute_iou(pred: MaskLike, ref: MaskLike, *, label: int | None = None) -> float:
    """Intersection over union (Jaccard); 1 when both masks are empty."""
    return _overlap(*_masks(pred, ref, label))[1]


def _surface_distances(
    p: NDArray[np.bool_], r: NDArray[np.bool_], spacing: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Directed distances (pred surface → ref surface, ref surface → pred surface) in mm."""
    union = p | r
    lo = np.maximum(np.argwhere(union).min(axis=0) - 1, 0)
    hi = np.argwhere(union).max(axis=0) + 2
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    p, r = p[box], r[box]
    surf_p = p & ~ndimage.binary_erosion(p)
    surf_r = r & ~ndimage.binary_erosion(r)
    to_r = ndimage.distance_transform_edt(~surf_r, sampling=spacing)
    to_p = ndimage.distance_transform_edt(~surf_p, sampling=spacing)
    return np.asarray(to_r[surf_p], np.float64), np.asarray(to_p[surf_r], np.float64)


def _distance_metrics(
    p: NDArray[np.bool_],
    r: NDArray[np.bool_],
    spacing: NDArray[np.float64],
    tolerance_mm: float,
    empty_distance: float,
) -> dict[str, float]:
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return {"hd95": 0.0, "assd": 0.0, "nsd": 1.0}
    if not has_p or not has_r:
        return {"hd95": empty_distance, "assd": empty_distance, "nsd": 0.0}
    d_pr, d_rp = _surface_distances(p, r, spacing)
    pooled = np.concatenate([d_pr, d_rp])
    return {
        "hd95": float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
        "assd": float(pooled.mean()),
        "nsd": float(np.count_nonzero(pooled <= tolerance_mm) / pooled.size),
    }


def _volumes(
    p: NDArray[np.bool_], r: NDArray[np.bool_], spacing: NDArray[np.float64]
) -> dict[str, float]:
    voxel = float(np.prod(spacing))
    v_p, v_r = np.count_nonzero(p) * voxel, np.count_nonzero(r) * voxel
    relative = (v_p - v_r) / v_r if v_r > 0 else (0.0 if v_p == 0 else float("nan"))
    return {
        "volume_pred_mm3": v_p,
        "volume_ref_mm3": v_r,
        "abs_volume_error_mm3": abs(v_p - v_r),
        "rel_volume_error": relative,
    }


def compute_segmentation_metrics(
    pred: MaskLike,
    ref: MaskLike,
    *,
    spacing: Sequence[float] | None = None,
    label: int | None = None,
    tolerance_mm: float = 1.0,
    empty_distance: float = float("nan"),
) -> dict[str, float]:
    """Every segmentation metric for one case, computing the surfaces once.

    Args:
        pred: Predicted mask (LabelMap or array).
        ref: Reference mask on the same grid.
        spacing: Voxel size in mm per axis; required for bare arrays only.
        label: Foreground label; ``None`` means any non-zero voxel.
        tolerance_mm: Surface Dice tolerance.
        empty_distance: HD95 / ASSD when exactly one mask is empty.

    Returns:
        ``dice, iou, hd95, assd, nsd, volume_pred_mm3, volume_ref_mm3,
        abs_volume_error_mm3, rel_volume_error`` (signed, ``(V_pred − V_ref) / V_ref``).
    """
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0; got {tolerance_mm}")
    p, r = _masks(pred, ref, label)
    sp = _spacing(pred, ref, spacing, p.ndim)
    dice, iou = _overlap(p, r)
    return {
        "dice": dice,
        "iou": iou,
        **_distance_metrics(p, r, sp, tolerance_mm, empty_distance),
        **_volumes(p, r, sp),
    }


def _one(metric: str, pred: MaskLike, ref: MaskLike, **kwargs: Any) -> float:
    return compute_segmentation_metrics(pred, ref, **kwargs)[metric]


def compute_hd95(
    pred: MaskLike,
    ref: MaskLike,
    *,
    spacing: Sequence[float] | None = None,
    label: int | None = None,
    empty_distance: float = float("nan"),
) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (see module notes)."""
    return _one("hd95", pred, ref, spacing=spacing, label=label, empty_distance=empty_distance)


def compute_assd(
    pred: MaskLike,
    ref: MaskLike,
    *,
    spacing: Sequence[float] | None = None,
    label: int | None = None,
    empty_distance: float = float("nan"),
) -> float:
    """Average symmetric surface distance in mm (mean over both surfaces' voxels)."""
    return _one("assd", pred, ref, spacing=spacing, label=label, empty_distance=empty_distance)


def compute_surface_dice(
    pred: MaskLike,
    ref: MaskLike,
    *,
    tolerance_mm: float,
    spacing: Sequence[float] | None = None,
    label: int | None = None,
) -> float:
    """Normalised surface Dice: share of both surfaces' voxels within ``tolerance_mm``."""
    return _one("nsd", pred, ref, spacing=spacing, label=label, tolerance_mm=tolerance_mm)


def compute_absolute_volume_error(
    pred: MaskLike,
    ref: MaskLike,
    *,
    spacing: Sequence[float] | None = None,
    label: int | None = None,
) -> float:
    """``|V_pred − V_ref|`` in mm³."""
    p, r = _masks(pred, ref, label)
    return _volumes(p, r, _spacing(pred, ref, spacing, p.ndim))["abs_volume_error_mm3"]


def compute_relative_volume_error(
    pred: MaskLike,
    ref: MaskLike,
    *,
    spacing: Sequence[float] | None = None,
    label: int | None = None,
) -> float:
    """Signed ``(V_pred − V_ref) / V_ref``; 0 when both are empty, NaN when only ref is."""
    p, r = _masks(pred, ref, label)
    return _volumes(p, r, _spacing(pred, ref, spacing, p.ndim))["rel_volume_error"]


class SegmentationAccumulator:
    """Per-case segmentation metrics for one or more labels, MONAI-style.

    Args:
        labels: Region name → label value; ``None`` gives one region ``"foreground"``
            (any non-zero voxel).
        tolerance_mm: Surface Dice tolerance.
        empty_distance: HD95 / ASSD when exactly one mask is empty.

    Example:
        >>> acc = SegmentationAccumulator(labels={"tumour": 1})
        >>> acc.update(pred, ref, case_id="case01")  # doctest: +SKIP
        >>> acc.aggregate()["tumour/dice"]  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        labels: Mapping[str, int] | None = None,
        tolerance_mm: float = 1.0,
        empty_distance: float = float("nan"),
    ) -> None:
        self.labels: dict[str, int | None] = (
            {"foreground": None} if labels is None else dict(labels)
        )
        if not self.labels:
            raise ValueError("labels is empty; give at least one region name → label value")
        self.tolerance_mm = tolerance_mm
        self.empty_distance = empty_distance
        self._rows: list[dict[str, Any]] = []

    def update(
        self,
        pred: MaskLike,
        ref: MaskLike,
        *,
        case_id: str | None = None,
        spacing: Sequence[float] | None = None,
    ) -> dict[str, float]:
        """Score one case; returns its ``region/metric`` values."""
        row: dict[str, Any] = {"case_id": case_id or f"case{len(self._rows):04d}"}
        for name, value in self.labels.items():
            metrics = compute_segmentation_metrics(
                pred,
                ref,
                spacing=spacing,
                label=value,
                tolerance_mm=self.tolerance_mm,
                empty_distance=self.empty_distance,
            )
            row.update({f"{name}/{key}": val for key, val in metrics.items()})
        self._rows.append(row)
        return {key: val for key, val in row.items() if key != "case_id"}

    def per_case(self) -> pd.DataFrame:
        """One row per case, one column per ``region/metric``."""
        return pd.DataFrame(self._rows)

    def aggregate(self) -> dict[str, float]:
        """Mean of each ``region/metric`` over cases, NaN values left out."""
        if not self._rows:
            raise ValueError("SegmentationAccumulator is empty; call update() first")
        frame = self.per_case().drop(columns="case_id")
        return {str(key): float(val) for key, val in frame.mean(skipna=True).items()}

    def reset(self) -> None:
        self._rows.clear()
