"""One function turns a case into network input, at training and at inference.

:func:`preprocess_image` (and :func:`preprocess_case` with a label) runs reorient →
resample → crop to the foreground → z-score inside the foreground and returns a
:class:`Preprocessed` holding the result plus the :class:`GridRecord` needed to map
predictions back onto the input grid. :func:`preprocess_cohort` caches results as
``.npz`` keyed by (case content, plan digest).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from medai.fsutil import atomic_path
from medai.image import LabelMap, ScalarImage
from medai.preprocess.plan import PreprocessPlan
from medai.preprocess.steps import (
    BBox,
    crop,
    foreground_bbox,
    foreground_mask,
    reorient_to_ras,
    resample_to_grid,
    resample_to_spacing,
    zscore_in_mask,
)

if TYPE_CHECKING:
    from medai.preprocess.cases import SegCase

__all__ = [
    "GridRecord",
    "Preprocessed",
    "load_preprocessed",
    "preprocess_case",
    "preprocess_cohort",
    "preprocess_image",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridRecord:
    """Where the preprocessed array sits: the resampled grid and the crop box in it."""

    input_shape: tuple[int, int, int]
    input_affine: NDArray[np.float64]
    resampled_shape: tuple[int, int, int]
    resampled_affine: NDArray[np.float64]
    bbox: BBox

    def to_arrays(self) -> dict[str, NDArray[Any]]:
        return {
            "input_shape": np.asarray(self.input_shape),
            "input_affine": self.input_affine,
            "resampled_shape": np.asarray(self.resampled_shape),
            "resampled_affine": self.resampled_affine,
            "bbox": np.asarray(self.bbox),
        }

    @classmethod
    def from_arrays(cls, data: Any) -> GridRecord:
        box = np.asarray(data["bbox"]).astype(int)
        return cls(
            tuple(int(v) for v in data["input_shape"]),  # type: ignore[arg-type]
            np.asarray(data["input_affine"], dtype=np.float64),
            tuple(int(v) for v in data["resampled_shape"]),  # type: ignore[arg-type]
            np.asarray(data["resampled_affine"], dtype=np.float64),
            ((box[0, 0], box[0, 1]), (box[1, 0], box[1, 1]), (box[2, 0], box[2, 1])),
        )


@dataclass(frozen=True)
class Preprocessed:
    """Network-ready image (and label) plus the record to undo the geometry."""

    image: ScalarImage
    label: LabelMap | None
    record: GridRecord


def preprocess_image(image: ScalarImage, plan: PreprocessPlan) -> Preprocessed:
    """Reorient to RAS, resample, crop to the non-zero box, z-score inside it."""
    return preprocess_case(image, None, plan)


def preprocess_case(
    image: ScalarImage, label: LabelMap | None, plan: PreprocessPlan
) -> Preprocessed:
    """Like :func:`preprocess_image`, carrying a label map along (nearest neighbour).

    Raises:
        TypeError: If ``image`` is not a ScalarImage or ``label`` not a LabelMap.
    """
    if not isinstance(image, ScalarImage):
        raise TypeError(f"image must be a ScalarImage; got {type(image).__name__}")
    if label is not None and not isinstance(label, LabelMap):
        raise TypeError(f"label must be a LabelMap; got {type(label).__name__}")
    ras = reorient_to_ras(image)
    resampled = resample_to_spacing(ras, plan.target_spacing, order=plan.image_order)
    if plan.crop_to_foreground and foreground_mask(resampled).any():
        bbox = foreground_bbox(resampled, margin=plan.crop_margin)
    else:
        bbox = ((0, resampled.shape[0]), (0, resampled.shape[1]), (0, resampled.shape[2]))
    cropped = crop(resampled, bbox)
    normed = zscore_in_mask(cropped, foreground_mask(cropped))
    normed = normed.with_array(normed.array.astype(np.float32))
    out_label = None
    if label is not None:
        on_grid = resample_to_grid(label, resampled.shape, resampled.affine)
        out_label = crop(on_grid, bbox)
        out_label = out_label.with_array(out_label.array.astype(np.uint8))
    record = GridRecord(image.shape, image.affine, resampled.shape, resampled.affine, bbox)
    return Preprocessed(normed, out_label, record)


def _cache_path(cache_dir: Path, case: SegCase, plan: PreprocessPlan) -> Path:
    key = hashlib.sha256(f"{case.content_key()}|{plan.digest()}".encode()).hexdigest()[:24]
    return cache_dir / f"{case.case_id}.{key}.npz"


def _save(path: Path, pre: Preprocessed) -> None:
    arrays: dict[str, Any] = {"image": pre.image.array, "affine": pre.image.affine}
    if pre.label is not None:
        arrays["label"] = pre.label.array
    arrays.update({f"rec_{k}": v for k, v in pre.record.to_arrays().items()})
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez(handle, **arrays)


def load_preprocessed(path: str | Path) -> Preprocessed:
    """Read a cached ``.npz`` written by :func:`preprocess_cohort`."""
    with np.load(Path(path)) as data:
        affine = data["affine"]
        image = ScalarImage(data["image"], affine)
        label = LabelMap(data["label"], affine) if "label" in data else None
        record = GridRecord.from_arrays(
            {k[4:]: data[k] for k in data.files if k.startswith("rec_")}
        )
    return Preprocessed(image, label, record)


def preprocess_cohort(
    cases: Sequence[SegCase],
    plan: PreprocessPlan,
    cache_dir: str | Path,
    *,
    on_case: Callable[[str, bool], None] | None = None,
) -> dict[str, Path]:
    """Preprocess every case once; reuse cached files whose key still matches.

    Args:
        cases: Cases to process.
        plan: Preprocessing settings (their digest is part of the cache key).
        cache_dir: Folder for the ``.npz`` files.
        on_case: Called with ``(case_id, was_cached)`` after each case.

    Returns:
        Case id → cached file.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for case in cases:
        path = _cache_path(cache, case, plan)
        hit = path.is_file()
        if not hit:
            pre = preprocess_case(case.load_image(), case.load_label(), plan)
            _save(path, pre)
            log.debug("preprocessed %s -> %s", case.case_id, path)
        out[case.case_id] = path
        if on_case is not None:
            on_case(case.case_id, hit)
    return out
