"""Fixed-size network input for classification and regression (numpy/scipy, no torch).

:func:`fixed_input` turns one image into a ``(channels, *size)`` float32 array:

1. 3D images are reoriented to RAS (2D images keep their stored pixel order:
   reorienting one slice could move its one-voxel axis into the plane);
2. resample to ``spacing`` (mm; ``None`` keeps the image's own);
3. crop to the bounding box of the non-zero voxels of all channels;
4. if that box is larger than ``size`` along any axis, resample it down by one factor
   on every spatial axis (anti-aliased), so it fits without distortion;
5. centre it in ``size``, zero padding around it;
6. z-score each channel over the foreground (non-zero voxels), 0 elsewhere; with
   ``crop_to_foreground=False`` zero is not background, so the statistics cover every
   voxel of the image and only the padding stays 0.

:func:`preprocess_fixed` runs it over a dataset's cases and caches one ``.npy`` per case,
keyed by the :class:`InputPlan` digest and each image file's path, size and mtime.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError
from scipy import ndimage

from medai.errors import ConfigError, DatasetError, validation_summary
from medai.fsutil import atomic_path
from medai.image import ScalarImage
from medai.preprocess.steps import (
    BBox,
    crop,
    foreground_bbox,
    reorient_to_ras,
    resample_to_spacing,
)
from medai.preprocess.task_plan import FixedNormalisation, InputPlan

if TYPE_CHECKING:
    from medai.data import Case, Dataset

__all__ = ["FixedNormalisation", "InputPlan", "fixed_input", "preprocess_fixed"]

log = logging.getLogger(__name__)


def _settings(**values: Any) -> InputPlan:
    try:
        return InputPlan(**values)
    except ValidationError as exc:
        raise ConfigError(f"invalid fixed-input settings: {validation_summary(exc)}") from exc


def fixed_input(
    image: ScalarImage,
    *,
    spatial_dims: int,
    spacing: tuple[float, ...] | None,
    size: tuple[int, ...],
    crop_to_foreground: bool = True,
    normalise: str = "zscore",
    channels: int | None = None,
) -> NDArray[np.float32]:
    """``image`` as a ``(channels, *size)`` float32 array (see the module's steps).

    Args:
        image: The case's image; ``meta["case_id"]`` names it in errors.
        spatial_dims: 2 for a one-slice image (the result drops the slice axis), else 3.
        spacing: Target voxel size (mm) per spatial axis, or ``None`` to keep it.
        size: Output spatial shape.
        crop_to_foreground: Crop to the non-zero voxels first.
        normalise: ``"zscore"`` or ``"none"``.
        channels: The channel count the image must have (``None``: any).

    Raises:
        ConfigError: If the settings are invalid.
        DatasetError: If the image holds NaN or infinity, has no non-zero voxel, has
            another channel count, or its dimensionality is not ``spatial_dims``.
    """
    settings = _settings(
        spatial_dims=spatial_dims,
        spacing=spacing,
        size=size,
        crop_to_foreground=crop_to_foreground,
        normalise=normalise,
    )
    return _fixed_array(image, settings, channels=channels)


class _Steps(NamedTuple):
    """Steps 1–4 of :func:`fixed_input` on one image, and what each did."""

    image: ScalarImage  # after shrinking: the image step 5 centres in ``size``
    reoriented: bool
    resampled: ScalarImage  # after step 2: the grid ``box`` indexes
    box: BBox | None
    factor: float


def _steps(image: ScalarImage, settings: InputPlan) -> _Steps:
    img = reorient_to_ras(image) if settings.spatial_dims == 3 else image
    reoriented = img is not image
    if settings.spacing is not None:
        img = resample_to_spacing(img, _spacing3(img, settings.spacing))
    resampled, box = img, None
    if settings.crop_to_foreground:
        box = foreground_bbox(img)
        img = crop(img, box)
    factor = _shrink_factor(img, _size3(settings.size))
    return _Steps(_shrink_to_fit(img, _size3(settings.size)), reoriented, resampled, box, factor)


def _fixed_array(
    image: ScalarImage, settings: InputPlan, *, channels: int | None
) -> NDArray[np.float32]:
    _check_image(image, settings.spatial_dims, channels)
    return _finish(_steps(image, settings).image, settings)


def _finish(img: ScalarImage, settings: InputPlan) -> NDArray[np.float32]:
    """Steps 5 and 6: centre in ``size``, normalise; 2D drops the slice axis."""
    fitted, inside = _centre_fit(img, _size3(settings.size))
    if settings.normalise is FixedNormalisation.ZSCORE:
        mask = np.any(fitted != 0, axis=0) if settings.crop_to_foreground else inside
        fitted = _zscore(fitted, mask)
    out = fitted.astype(np.float32, copy=False)
    return out[..., 0] if settings.spatial_dims == 2 else out


def _case_name(image: ScalarImage) -> str:
    return str(image.meta.get("case_id") or image.meta.get("source") or "<unnamed image>")


def _check_image(image: ScalarImage, spatial_dims: int, channels: int | None) -> None:
    if not isinstance(image, ScalarImage):
        raise TypeError(f"image must be a ScalarImage; got {type(image).__name__}")
    name = _case_name(image)
    bad = int(np.count_nonzero(~np.isfinite(image.array)))
    if bad:
        raise DatasetError(
            f"case {name!r}: image holds {bad} NaN or infinite value(s); fix the source "
            "file or replace them (e.g. with 0 outside the body) before preprocessing"
        )
    if channels is not None and image.num_channels != channels:
        raise DatasetError(
            f"case {name!r}: image has {image.num_channels} channel(s); {channels} expected "
            "(the dataset's channels); fix the file or the manifest's 'channels'"
        )
    if not np.any(image.array != 0):
        raise DatasetError(f"case {name!r}: image has no non-zero voxel (empty); remove the case")
    if spatial_dims == 2 and not image.is_2d:
        raise DatasetError(
            f"case {name!r}: image is 3D (shape {image.shape}); spatial_dims=2 needs "
            "one-slice images (set spatial_dims=3 for volumes)"
        )
    if spatial_dims == 3 and image.is_2d:
        raise DatasetError(
            f"case {name!r}: image has one slice (shape {image.shape}); use spatial_dims=2"
        )


def _spacing3(image: ScalarImage, spacing: tuple[float, ...]) -> tuple[float, float, float]:
    if len(spacing) == 2:
        return (float(spacing[0]), float(spacing[1]), image.spacing[2])
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _size3(size: tuple[int, ...]) -> tuple[int, int, int]:
    return (size[0], size[1], size[2] if len(size) == 3 else 1)


def _shrink_factor(image: ScalarImage, size3: tuple[int, int, int]) -> float:
    """How many times larger than ``size3`` the image is along its tightest axis."""
    return max(n / s for n, s in zip(image.shape, size3, strict=True))


def _shrink_to_fit(image: ScalarImage, size3: tuple[int, int, int]) -> ScalarImage:
    """Resample down by one factor on every axis (z too only in 3D) when ``image`` is
    larger than ``size3`` somewhere; Gaussian-smoothed first against aliasing."""
    factor = _shrink_factor(image, size3)
    if factor <= 1.0:
        return image
    scaled = [factor if s > 1 or n > 1 else 1.0 for n, s in zip(image.shape, size3, strict=True)]
    sigma = [0.0] + [(f - 1.0) / 2.0 for f in scaled]
    smooth = ndimage.gaussian_filter(image.array.astype(np.float32), sigma=sigma, mode="nearest")
    spacing = tuple(float(sp * f) for sp, f in zip(image.spacing, scaled, strict=True))
    return resample_to_spacing(image.with_array(smooth), (spacing[0], spacing[1], spacing[2]))


def _centre_offsets(shape: tuple[int, ...], size3: tuple[int, int, int]) -> list[tuple[int, int]]:
    """Per axis: the first voxel of ``shape`` kept (centre crop) and where it goes in
    ``size3`` (centre pad)."""
    return [(max(0, (n - s) // 2), max(0, (s - n) // 2)) for n, s in zip(shape, size3, strict=True)]


def _centre_fit(
    image: ScalarImage, size3: tuple[int, int, int]
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """The image centred in ``size3`` (zero padding, or a centre crop), and where it lies."""
    out = np.zeros((image.num_channels, *size3), dtype=np.float32)
    inside = np.zeros(size3, dtype=bool)
    src, dst = [], []
    offsets = _centre_offsets(image.shape, size3)
    for (lo, before), n, s in zip(offsets, image.shape, size3, strict=True):
        span = min(n, s)
        src.append(slice(lo, lo + span))
        dst.append(slice(before, before + span))
    out[(slice(None), *dst)] = image.array[(slice(None), *src)]
    inside[tuple(dst)] = True
    return out, inside


def _zscore(array: NDArray[np.float32], mask: NDArray[np.bool_]) -> NDArray[np.float32]:
    out = np.zeros_like(array)
    for c, data in enumerate(array):
        values = data[mask].astype(np.float64)
        std = float(values.std()) if values.size else 0.0
        mean = float(values.mean()) if values.size else 0.0
        out[c][mask] = (values - mean) / (std if std > 1e-8 else 1.0)
    return out


# -- a dataset's cases, cached ---------------------------------------------------------


def _image_files(dataset: Dataset, case: Case) -> list[Path]:
    if case.image is not None:
        return [case.image]
    return [case.channels[name] for name in dataset.channels if name in case.channels]


def _file_stamp(case: Case, path: Path) -> str:
    try:
        stat = Path(path).stat()
    except OSError as exc:
        raise DatasetError(
            f"case {case.case_id!r}: image file {path} cannot be read ({exc.strerror}); fix "
            "the path in the manifest (or run `medai data check` to list every missing file)"
        ) from exc
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _cache_path(cache_dir: Path, dataset: Dataset, case: Case, settings: InputPlan) -> Path:
    stamps = [_file_stamp(case, p) for p in _image_files(dataset, case)]
    text = "|".join([case.case_id, settings.digest(), ",".join(dataset.channels), *stamps])
    key = hashlib.sha256(text.encode()).hexdigest()[:24]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", case.case_id)
    return cache_dir / f"{stem}.{key}.npy"


def preprocess_fixed(
    cases: Sequence[Case],
    *,
    dataset: Dataset,
    settings: InputPlan,
    cache_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Path]:
    """Fixed-size input of every case, computed once; cached files are reused while
    the settings and each image file's path, size and modification time are unchanged.

    Args:
        cases: Cases of ``dataset`` (e.g. ``dataset.cases`` or one split's).
        dataset: Their dataset: reads the images, in its channel order.
        settings: The fixed-input settings (their digest is part of the cache key).
        cache_dir: Folder for the ``.npy`` files (written atomically).
        progress: Called with ``(done, total)`` after each case.

    Returns:
        Case id → ``.npy`` file holding the ``(channels, *size)`` float32 array.

    Raises:
        DatasetError: If a file is missing or an image is refused by :func:`fixed_input`.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for done, case in enumerate(cases, start=1):
        path = _cache_path(cache, dataset, case, settings)
        if not path.is_file():
            image = dataset.load_case_image(case)
            array = _fixed_array(image, settings, channels=len(dataset.channels))
            with atomic_path(path) as tmp, tmp.open("wb") as handle:
                np.save(handle, array)
            log.debug("fixed input %s -> %s", case.case_id, path)
        out[case.case_id] = path
        if progress is not None:
            progress(done, len(cases))
    return out
