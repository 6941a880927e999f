"""Region of interest preparation: checks, crop, resampling, re-segmentation, bins.

:func:`prepare_roi` turns an image and a label map into a :class:`Roi` holding the
cropped intensities, the morphological mask (the region as drawn, after
interpolation) and the intensity mask (the region after re-segmentation and NaN
exclusion), plus the discretised grey levels used by the texture families.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from medai.errors import GeometryError
from medai.image import Image, LabelMap
from medai.radiomics.settings import Discretisation, RadiomicsSettings

__all__ = ["MASK_TOLERANCE", "Roi", "discretise", "lower_bound", "prepare_roi", "round_intensities"]

logger = logging.getLogger(__name__)

#: Slack on the partial-volume threshold: an interpolated mask value that is exactly
#: the threshold in exact arithmetic (e.g. 0.5 between an inside and an outside voxel)
#: can come out a few ulp below it; IBSI (E8H9) includes it (``R ≥ δ``).
MASK_TOLERANCE = 1e-9
#: Extra crop margin (voxels) per spline order so that the spline pre-filter on the
#: crop equals the one on the whole image to ~1e-12 of the intensity range: the
#: pre-filter's influence decays as ``|z|^k`` with ``z`` its largest pole.
_SPLINE_MARGIN = {2: 16, 3: 21, 4: 27, 5: 33}


@dataclass(frozen=True)
class Roi:
    """A prepared region of interest on a cropped, padded grid.

    Attributes:
        image: Intensities (float64); 0 outside the source image.
        inside: True where ``image`` holds a real voxel of the source image.
        morph_mask: Morphological mask (region as drawn).
        int_mask: Intensity mask (after re-segmentation and NaN exclusion).
        grey: Discretised grey levels 1..``n_levels`` inside ``int_mask``, 0 elsewhere.
        n_levels: Number of grey levels ``Ng``.
        spacing: Voxel size (mm) along the array axes.
        cache: Intermediate results shared between families (e.g. zones).
    """

    image: NDArray[np.float64]
    inside: NDArray[np.bool_]
    morph_mask: NDArray[np.bool_]
    int_mask: NDArray[np.bool_]
    grey: NDArray[np.int64]
    n_levels: int
    spacing: tuple[float, float, float]
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def values(self) -> NDArray[np.float64]:
        """Intensities inside the intensity mask."""
        return self.image[self.int_mask]


def _region(mask: LabelMap, labels: int | Sequence[int] | None) -> NDArray[np.bool_]:
    data = mask.numpy3d()
    if labels is None:
        region = data > 0
    else:
        wanted = [labels] if isinstance(labels, int) else list(labels)
        region = np.isin(data, wanted)
    if not region.any():
        present = [v for v in mask.labels if v != 0]
        raise ValueError(
            f"mask has no voxels with label(s) {labels if labels is not None else '> 0'}; "
            f"labels present: {present or 'none (empty mask)'}: pass a non-empty region"
        )
    return np.asarray(region, dtype=bool)


def _check_inputs(image: Image, mask: Image) -> None:
    if not isinstance(image, Image):
        raise TypeError(f"image must be a ScalarImage; got {type(image).__name__}")
    if not isinstance(mask, LabelMap):
        raise TypeError(
            f"mask must be a LabelMap; got {type(mask).__name__}: wrap it with LabelMap(array, "
            "affine)"
        )
    if image.num_channels != 1 or mask.num_channels != 1:
        raise ValueError(
            f"image and mask need one channel each; got {image.num_channels} and "
            f"{mask.num_channels}: pick one with .channel(i)"
        )
    if not image.same_grid(mask):
        raise GeometryError(
            f"mask is not on the image grid: image {image.shape} spacing {image.spacing}, "
            f"mask {mask.shape} spacing {mask.spacing} (affines differ or shapes differ); "
            "resample the mask onto the image first"
        )


def _check_nan(
    data: NDArray[np.float64], region: NDArray[np.bool_], settings: RadiomicsSettings
) -> None:
    n_nan = int(np.count_nonzero(~np.isfinite(data[region])))
    if n_nan and settings.nan_policy == "raise":
        raise ValueError(
            f"image holds {n_nan} NaN/infinite value(s) inside the ROI; clean the image or pass "
            "RadiomicsSettings(nan_policy='exclude') to drop them from the intensity mask"
        )


def _crop_box(
    region: NDArray[np.bool_], margin: Sequence[int]
) -> tuple[tuple[slice, ...], list[tuple[int, int]]]:
    """Slices of the bounding box grown by ``margin`` and the padding beyond the image."""
    idx = np.nonzero(region)
    slices, pads = [], []
    for axis, n in enumerate(region.shape):
        lo, hi = int(idx[axis].min()) - margin[axis], int(idx[axis].max()) + 1 + margin[axis]
        slices.append(slice(max(lo, 0), min(hi, n)))
        pads.append((max(-lo, 0), max(hi - n, 0)))
    return tuple(slices), pads


def _new_grid(
    full_shape: Sequence[int],
    box: Sequence[slice],
    spacing: tuple[float, float, float],
    target: tuple[float, float, float],
) -> list[NDArray[np.float64]]:
    """Crop-local coordinates of the IBSI centre-aligned grid points inside ``box``.

    The new grid of voxel size ``target`` covers the whole image with
    ``ceil(n · s_old / s_new)`` points and shares its centre with the original grid
    (IBSI "align grid centres", QCY4); only the points inside the crop are kept. Where
    the crop reaches the image border, the grid points beyond the outermost voxel
    centre (always less than half a voxel beyond it) are kept too: IBSI (026Q)
    extrapolates them by padding with the border values.
    """
    coords = []
    for n, sl, s_old, s_new in zip(full_shape, box, spacing, target, strict=True):
        n_new = max(math.ceil(n * s_old / s_new), 1)
        x = (n - 1) / 2.0 + (np.arange(n_new) - (n_new - 1) / 2.0) * s_new / s_old
        start, stop = int(sl.start), int(sl.stop)
        above = x > -1.0 if start == 0 else x >= start - 1e-9
        below = x < n if stop == n else x <= stop - 1 + 1e-9
        keep = above & below
        coords.append(np.asarray(x[keep] - start, dtype=np.float64))
    return coords


def _resample(
    data: NDArray[Any], coords: list[NDArray[np.float64]], order: int, mode: str
) -> NDArray[np.float64]:
    """Values of ``data`` at the grid ``coords`` (spline ``order``, ``mode`` outside)."""
    grid = np.meshgrid(*coords, indexing="ij")
    out = ndimage.map_coordinates(
        data.astype(np.float64), grid, order=order, mode=mode, cval=0.0, prefilter=order > 1
    )
    return np.asarray(out, dtype=np.float64)


def round_intensities(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Interpolated intensities rounded to integers (IBSI 68QD), ties to even.

    Grid ratios such as 1.5 mm → 2 mm put new voxels exactly halfway between old ones,
    so exact ties (``k + ½``) are common; interpolation leaves them a few ulp off, which
    would let floating-point noise pick the direction. Snapping to 1e-6 first makes
    every exact tie round to the even integer, as NumPy and MIRP do.
    """
    return np.asarray(np.round(np.round(values, 6)), dtype=np.float64)


def _resample_all(
    crop: NDArray[np.float64],
    region: NDArray[np.bool_],
    coords: list[NDArray[np.float64]],
    settings: RadiomicsSettings,
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.bool_]]:
    """Resampled intensities, in-image flags and morphological mask of a crop.

    Grid points beyond the outermost voxel centres (less than half a voxel out, so
    still inside the image's extent) take the border values: IBSI (026Q) pads the
    grid with them, for the image and, here, for the mask alike. The mask is
    interpolated linearly and kept where it reaches ``mask_threshold`` (IBSI E8H9).
    """
    finite = np.isfinite(crop)
    order = settings.interpolation_order
    image = _resample(np.where(finite, crop, 0.0), coords, order, "nearest")
    if settings.round_intensities:
        image = round_intensities(image)
    inside = _resample(finite.astype(np.float64), coords, 1, "nearest") > 0.5
    morph = _resample(region.astype(np.float64), coords, 1, "nearest")
    return image, inside, morph >= settings.mask_threshold - MASK_TOLERANCE


def _resegment(
    values: NDArray[np.float64], morph: NDArray[np.bool_], settings: RadiomicsSettings
) -> NDArray[np.bool_]:
    """Intensity mask: the ROI within the re-segmentation range and the outlier range.

    IBSI (IF9H, 7ACA): the outlier range ``μ ± kσ`` comes from the grey levels of the
    ROI voxels; combined methods keep the intersection of their ranges, so ``μ`` and
    ``σ`` do not depend on the re-segmentation range.
    """
    roi = morph & np.isfinite(values)
    keep = roi.copy()
    if settings.resegment_range is not None:
        low, high = settings.resegment_range
        if low is not None:
            keep &= values >= low
        if high is not None:
            keep &= values <= high
    if settings.outlier_sigma is not None and roi.any():
        inner = values[roi]
        mu, sd = float(inner.mean()), float(inner.std())
        keep &= np.abs(values - mu) <= settings.outlier_sigma * sd
    return keep


def discretise(
    values: NDArray[np.float64], settings: RadiomicsSettings
) -> tuple[NDArray[np.int64], int]:
    """Grey levels (1-based) of ``values`` and the number of levels ``Ng``."""
    if settings.discretisation is Discretisation.FIXED_BIN_NUMBER:
        n_bins = settings.bin_number
        lo, hi = float(values.min()), float(values.max())
        if hi == lo:
            return np.ones(values.shape, dtype=np.int64), n_bins
        grey = np.floor(n_bins * (values - lo) / (hi - lo)).astype(np.int64) + 1
        return np.clip(grey, 1, n_bins), n_bins
    grey, _ = _fixed_width(values, settings.bin_width, lower_bound(values, settings))
    return grey, int(grey.max())


def lower_bound(values: NDArray[np.float64], settings: RadiomicsSettings) -> float:
    if settings.lower_bound is not None:
        return settings.lower_bound
    rng = settings.resegment_range
    if rng is not None and rng[0] is not None:
        return float(rng[0])
    return float(values.min())


def _fixed_width(
    values: NDArray[np.float64], width: float, lower: float
) -> tuple[NDArray[np.int64], float]:
    grey = np.floor((values - lower) / width + 1e-9).astype(np.int64) + 1
    return np.maximum(grey, 1), lower


def _resampled_crop(
    data: NDArray[np.float64],
    region: NDArray[np.bool_],
    grids: tuple[tuple[float, float, float], tuple[float, float, float]],
    margin: list[int],
    settings: RadiomicsSettings,
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.bool_], list[tuple[int, int]]]:
    """Resample a crop around the ROI from ``grids`` = (old, new) spacing.

    Returns the resampled intensities, in-image flags and morphological mask cut to the
    ROI box ± ``margin`` (new voxels), and the padding still needed beyond the image.
    The crop is wider than ``margin`` by the spline pre-filter's reach, so that the
    result equals interpolating the whole image.
    """
    extra = _SPLINE_MARGIN.get(settings.interpolation_order, 0)
    box, _ = _crop_box(region, [m + extra for m in margin])
    coords = _new_grid(data.shape, box, *grids)
    crop, inside, morph = _resample_all(data[box], region[box], coords, settings)
    if not morph.any():
        raise ValueError(
            "the ROI vanished after resampling (thinner than the new voxel size); "
            "use a finer resample_spacing or a lower mask_threshold"
        )
    sub, pads = _crop_box(morph, margin)
    return crop[sub], inside[sub], morph[sub], pads


def prepare_roi(
    image: Image,
    mask: LabelMap,
    *,
    settings: RadiomicsSettings,
    labels: int | Sequence[int] | None = None,
) -> Roi:
    """Check, crop, resample, re-segment and discretise one region of interest.

    Args:
        image: Intensity image (one channel).
        mask: Label map on the same grid as ``image``.
        settings: Extraction settings.
        labels: Label value(s) forming the region; default every label > 0.

    Returns:
        The prepared :class:`Roi`.

    Raises:
        TypeError: If ``mask`` is not a :class:`LabelMap`.
        GeometryError: If ``mask`` is not on the image grid.
        ValueError: If the region is empty, or holds NaN with ``nan_policy="raise"``, or
            nothing survives re-segmentation.
    """
    _check_inputs(image, mask)
    region = _region(mask, labels)
    data = np.asarray(image.numpy3d(), dtype=np.float64)
    _check_nan(data, region, settings)
    spacing = image.spacing
    radius_mm = (3.0 * settings.peak_volume_cc * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    target = settings.resample_spacing or spacing
    margin = [math.ceil(radius_mm / min(s, t)) + 2 for s, t in zip(spacing, target, strict=True)]
    if settings.resample_spacing is None:
        box, pads = _crop_box(region, margin)
        crop, crop_region = data[box], region[box]
        inside = np.ones(crop.shape, dtype=bool)
    else:
        grids = (spacing, settings.resample_spacing)
        crop, inside, crop_region, pads = _resampled_crop(data, region, grids, margin, settings)
        spacing = settings.resample_spacing
    morph = np.pad(crop_region, pads)
    crop = np.pad(crop, pads)
    inside = np.pad(inside, pads)
    int_mask = _resegment(crop, morph, settings)
    if not int_mask.any():
        raise ValueError(
            f"no ROI voxel is left after re-segmentation (range {settings.resegment_range}, "
            f"outlier_sigma {settings.outlier_sigma}, NaN excluded); widen the range"
        )
    return _finish_roi(crop, inside, morph, int_mask, spacing, settings)


def _finish_roi(
    crop: NDArray[np.float64],
    inside: NDArray[np.bool_],
    morph: NDArray[np.bool_],
    int_mask: NDArray[np.bool_],
    spacing: tuple[float, float, float],
    settings: RadiomicsSettings,
) -> Roi:
    inside = inside & np.isfinite(crop)  # NaN voxels never enter a local mean
    crop = np.where(inside, crop, 0.0)
    values = crop[int_mask]
    levels, n_levels = discretise(values, settings)
    grey = np.zeros(crop.shape, dtype=np.int64)
    grey[int_mask] = levels
    return Roi(
        image=crop,
        inside=inside,
        morph_mask=morph,
        int_mask=int_mask,
        grey=grey,
        n_levels=int(n_levels),
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
    )
