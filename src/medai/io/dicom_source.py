"""The source series a derived DICOM object (SEG, SR, secondary capture) refers to.

:class:`SourceSeries` holds the headers of a series' instances, which source frame lies
at which slice of the volume medai reads from it, and that volume's affine. The slice
order and affine come from the same code as :func:`medai.io.read_dicom_series`, so a
label map predicted on the volume maps onto the source frames exactly.

Example:
    >>> source = SourceSeries.load("study/t1ce")  # doctest: +SKIP
    >>> planes = source.frame_planes(label)  # one (rows, columns) plane per source frame
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from medai.errors import GeometryError, ImageReadError, ImageWriteError
from medai.image import Image
from medai.io._dicom_common import FrameGeometry, frame_geometries, load_dataset
from medai.io.dicom import find_series
from medai.io.dicom_geometry import stack_affine

__all__ = ["DERIVED_MODALITIES", "SourceLike", "SourceSeries"]

#: Modalities of derived objects, never a source image series.
DERIVED_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "KO", "PR", "RTPLAN", "RTDOSE"})

#: A series folder, its files, or its datasets (headers suffice).
SourceLike = str | Path | Sequence[str | Path] | Sequence[Dataset]

#: Largest difference (mm) between a label map's affine and the source grid accepted.
GRID_TOLERANCE_MM = 0.01


def _image_series(folder: Path, series_uid: str | None) -> list[Path]:
    """The files of the one image series under ``folder`` (or of ``series_uid``)."""
    infos = [s for s in find_series(folder) if s.modality not in DERIVED_MODALITIES]
    if series_uid is not None:
        infos = [s for s in infos if s.uid == series_uid]
        if not infos:
            raise ImageReadError(folder, f"no image series {series_uid} in this folder")
    if not infos:
        raise ImageReadError(folder, "no DICOM image series found in this folder")
    if len(infos) > 1:
        listing = ", ".join(f"{s.uid} ({s.modality} '{s.description}')" for s in infos)
        raise ImageReadError(
            folder, f"folder holds {len(infos)} image series; pass series_uid= one of {listing}"
        )
    return list(infos[0].files)


def _datasets(source: SourceLike, series_uid: str | None) -> list[tuple[Path, Dataset]]:
    if isinstance(source, str | Path):
        folder = Path(source)
        if not folder.is_dir():
            return [(folder, load_dataset(folder, pixels=False))]
        return [(p, load_dataset(p, pixels=False)) for p in _image_series(folder, series_uid)]
    items: list[tuple[Path, Dataset]] = []
    for index, entry in enumerate(source):
        if isinstance(entry, Dataset):
            path = Path(str(getattr(entry, "filename", "") or f"<dataset {index}>"))
            items.append((path, entry))
        else:
            items.append((Path(entry), load_dataset(Path(entry), pixels=False)))
    if not items:
        raise ValueError("source holds no DICOM instance; pass a series folder or its files")
    return items


@dataclass(frozen=True)
class SourceSeries:
    """The instances of one image series, their frames in slice order, and the volume grid.

    Attributes:
        datasets: The instances (headers), single-frame files or one multi-frame file.
        frames: Every source frame in instance order: ``(geometry, dataset index)``.
        slice_of_frame: The volume's z index of each entry of ``frames``.
        affine: The volume's voxel-to-RAS+ affine (as :func:`read_dicom_series` gives).
        shape: The volume's ``(x, y, z)`` = ``(columns, rows, frames)``.
    """

    datasets: tuple[Dataset, ...]
    frames: tuple[tuple[FrameGeometry, int], ...]
    slice_of_frame: tuple[int, ...]
    affine: NDArray[np.float64]
    shape: tuple[int, int, int]

    @classmethod
    def load(cls, source: SourceLike, *, series_uid: str | None = None) -> SourceSeries:
        """Read a series' headers (pixel data is not needed) and its geometry.

        Args:
            source: A folder holding the series (derived objects such as SEG are
                ignored), one multi-frame file, a list of files, or a list of datasets.
            series_uid: Which image series when the folder holds several.

        Raises:
            ImageReadError: If no (or more than one) image series is found.
            ImageWriteError: If the instances belong to different series or carry no
                patient geometry, or several multi-frame files are given.
            GeometryError: If the frames do not form a regular volume.
        """
        items = _datasets(source, series_uid)
        datasets = tuple(ds for _, ds in items)
        _check_one_series(datasets)
        frames = tuple(
            (geometry, index)
            for index, (path, ds) in enumerate(items)
            for geometry in frame_geometries(ds, path)
        )
        if len(datasets) > 1 and any(f.frame is not None for f, _ in frames):
            raise ImageWriteError(
                "source mixes several instances with multi-frame ones; pass single-frame "
                "instances or exactly one multi-frame instance"
            )
        where = items[0][0].parent if len(items) > 1 else items[0][0]
        order, affine, located = stack_affine([f for f, _ in frames], where)
        if not located:
            raise ImageWriteError(
                f"{where}: source images carry no patient position/orientation; a SEG or SR "
                "needs a series with ImagePositionPatient and ImageOrientationPatient"
            )
        slice_of = [0] * len(frames)
        for z, index in enumerate(order):
            slice_of[index] = z
        first = frames[0][0]
        shape = (first.columns, first.rows, len(frames))
        return cls(datasets, frames, tuple(slice_of), affine, shape)

    # -- identity ---------------------------------------------------------------------
    @property
    def first(self) -> Dataset:
        return self.datasets[0]

    @property
    def series_uid(self) -> str:
        return str(self.first.SeriesInstanceUID)

    @property
    def sop_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    @property
    def multi_frame(self) -> bool:
        return self.frames[0][0].frame is not None

    def dataset_of_slice(self, z: int) -> tuple[Dataset, int | None]:
        """The instance holding slice ``z`` and its frame index (``None``: single frame)."""
        index = self.slice_of_frame.index(z)
        geometry, owner = self.frames[index]
        return self.datasets[owner], geometry.frame

    # -- label maps on this grid --------------------------------------------------------
    def on_grid(self, image: Image, *, what: str = "label map") -> NDArray[Any]:
        """``image``'s single-channel ``(x, y, z)`` array on this series' grid.

        A volume stored in another axis order or direction (e.g. reoriented to RAS) is
        permuted and flipped back; nothing is interpolated.

        Raises:
            GeometryError: If ``image`` does not lie on the source grid.
        """
        data = image.numpy3d()
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(image.affine),
            nib.orientations.io_orientation(self.affine),
        )
        data = nib.orientations.apply_orientation(data, transform)
        affine = image.affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
        if data.shape != self.shape or not np.allclose(
            affine, self.affine, rtol=0.0, atol=GRID_TOLERANCE_MM
        ):
            raise GeometryError(
                f"{what} (shape {image.shape}, spacing "
                f"{tuple(round(s, 4) for s in image.spacing)}) is not on the grid of source "
                f"series {self.series_uid} (shape {self.shape}); resample it onto the source "
                "image first (medai predict writes labels on the input grid)"
            )
        return np.asarray(data)

    def frame_planes(self, volume: NDArray[Any]) -> NDArray[Any]:
        """``(frames, rows, columns, ...)`` planes of an ``(x, y, z, ...)`` grid volume,
        one per source frame in instance (and frame) order."""
        picked = volume[:, :, np.asarray(self.slice_of_frame)]  # a copy, in frame order
        return np.ascontiguousarray(np.moveaxis(picked, (0, 1, 2), (2, 1, 0)))


def _check_one_series(datasets: Sequence[Dataset]) -> None:
    needed = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID")
    for index, ds in enumerate(datasets):
        missing = [k for k in needed if not ds.get(k)]
        if missing:
            raise ImageWriteError(f"source instance {index} lacks {', '.join(missing)}")
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    if len(series) > 1:
        raise ImageWriteError(
            f"source instances belong to {len(series)} series ({', '.join(sorted(series))}); "
            "a derived object refers to one series"
        )
    if len({str(ds.SOPInstanceUID) for ds in datasets}) != len(datasets):
        raise ImageWriteError("source lists an instance twice (repeated SOPInstanceUID)")
