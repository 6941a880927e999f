"""DICOM reading: one file (single- or multi-frame), a series folder, and series discovery.

Slices are ordered along the slice normal, the affine comes from
ImagePositionPatient / ImageOrientationPatient / PixelSpacing (converted from
DICOM's LPS to RAS+), rescale slope/intercept are applied per frame, and enhanced
multi-frame files take their geometry from the functional groups. Compressed
transfer syntaxes are decoded by pydicom's pylibjpeg plugins.

Example:
    >>> for info in find_series("study/"):  # doctest: +SKIP
    ...     print(info.uid, info.modality, info.size)
    >>> image = read_dicom_series("study/", series_uid=info.uid)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from medai.errors import GeometryError, ImageReadError, MedaiError
from medai.image import Image, LabelMap, ScalarImage
from medai.io._dicom_common import (
    FrameGeometry,
    dataset_meta,
    frame_geometries,
    load_dataset,
    pydicom_warnings_to_log,
)
from medai.io._dicom_values import header_value
from medai.io._guard import PASS_THROUGH, describe, file_errors
from medai.io.dicom_geometry import stack_affine
from medai.io.dicom_pixels import decode_many

__all__ = ["SeriesInfo", "find_series", "read_dicom", "read_dicom_series"]

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=Image)


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a folder (from headers only; pixels are not decoded).

    ``size``, ``spacing`` and ``orientation`` are ``None`` when the slices do not form a
    regular volume; ``problem`` then says why.
    """

    uid: str
    modality: str
    description: str
    num_files: int
    size: tuple[int, int, int] | None
    spacing: tuple[float, float, float] | None
    orientation: str | None
    study_uid: str
    patient_id: str
    series_number: int | None
    files: tuple[Path, ...]
    problem: str | None = None


def _frames(items: Sequence[tuple[Path, Dataset]]) -> list[tuple[FrameGeometry, int]]:
    frames: list[tuple[FrameGeometry, int]] = []
    for index, (path, ds) in enumerate(items):
        if "Rows" not in ds or "Columns" not in ds:
            raise ImageReadError(path, "DICOM file has no image (no Rows/Columns attributes)")
        frames.extend((geometry, index) for geometry in frame_geometries(ds, path))
    return frames


def _assemble(
    frames: Sequence[tuple[FrameGeometry, int]],
    order: Sequence[int],
    decoded: Sequence[NDArray[Any]],
    dtype: np.dtype[Any] | None,
) -> NDArray[Any]:
    """The frames in slice ``order`` as one ``(z, rows, columns, samples)`` array.

    With ``dtype`` (float), each frame's rescale slope and intercept are applied;
    without, the stored values are kept in their common integer type.
    """
    planes = [decoded[owner][geometry.frame or 0] for geometry, owner in frames]
    shapes = {plane.shape for plane in planes}
    if len(shapes) > 1:
        raise GeometryError(
            f"frames differ in shape or samples per pixel ({sorted(shapes)}); "
            "they do not form one volume"
        )
    out_type = dtype if dtype is not None else np.result_type(*planes)
    volume = np.empty((len(order), *planes[0].shape), dtype=out_type)
    for k, i in enumerate(order):
        volume[k] = planes[i]
    if dtype is None:
        return volume
    slopes = np.array([frames[i][0].slope for i in order])
    intercepts = np.array([frames[i][0].intercept for i in order])
    if np.all(slopes == slopes[0]) and np.all(intercepts == intercepts[0]):
        _rescale_in_place(volume, float(slopes[0]), float(intercepts[0]))
    else:
        for k in range(len(order)):
            _rescale_in_place(volume[k], float(slopes[k]), float(intercepts[k]))
    return volume


def _rescale_in_place(values: NDArray[Any], slope: float, intercept: float) -> None:
    if slope != 1.0:
        values *= slope
    if intercept != 0.0:
        values += intercept


def _build(
    items: Sequence[tuple[Path, Dataset]], where: Path, kind: type[T], threads: int | None
) -> T:
    """Stack the frames of ``items`` (read with pixels) into one image; any failure is a
    medai error naming ``where``."""
    with file_errors(where, "unreadable DICOM content"):  # bad values raise many types
        return _stack(items, where, kind, threads)


def _stack(
    items: Sequence[tuple[Path, Dataset]], where: Path, kind: type[T], threads: int | None
) -> T:
    frames = _frames(items)
    order, affine, located = stack_affine([f for f, _ in frames], where)
    decoded = decode_many(items, threads=threads)
    rescale = any(f.slope != 1.0 or f.intercept != 0.0 for f, _ in frames)
    bits = max(int(header_value(ds, "BitsStored") or 16) for _, ds in items)
    needs_rescale = rescale or not issubclass(kind, LabelMap)
    dtype = np.dtype(np.float32 if bits <= 24 else np.float64) if needs_rescale else None
    volume = _assemble(frames, order, decoded, dtype)  # (z, rows, columns, samples)
    array = volume.transpose(3, 2, 1, 0)  # (samples, x=column, y=row, z)
    meta = dataset_meta(items[0][1], items[0][0])
    meta.update(source=str(where), num_files=len(items), geometry_from_patient=located)
    try:
        return kind(array, affine, meta=meta)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(where, str(exc)) from exc


def read_dicom(
    path: str | Path,
    *,
    kind: type[T] = ScalarImage,  # type: ignore[assignment]
    threads: int | None = None,
) -> T:
    """Read one DICOM file (single frame, classic or enhanced multi-frame).

    Files without patient geometry (ultrasound, secondary capture, radiographs) get
    a default axial plane with PixelSpacing/ImagerPixelSpacing (or 1 mm);
    ``image.meta["geometry_from_patient"]`` is then ``False``. Colour (RGB, YBR,
    palette) becomes three channels. The frames of a compressed multi-frame file are
    decoded in ``threads`` threads (by default one per usable core, at most 8).

    Raises:
        ImageReadError: If the file is missing, not DICOM, truncated, has no or
            undecodable pixel data (the message names the frame of a multi-frame file).
        GeometryError: If its frames do not form a regular volume.
    """
    path = Path(path)
    with pydicom_warnings_to_log(path):
        return _build([(path, load_dataset(path))], path, kind, threads)


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _scan(
    folder: Path, *, pixels: bool, on_file: Callable[[int, int], None] | None = None
) -> dict[str, list[tuple[Path, Dataset]]]:
    """The image files under ``folder``, grouped by SeriesInstanceUID.

    With ``pixels``, the pixel data stay on disk until decoded (deferred read)."""
    if not folder.is_dir():
        raise ImageReadError(folder, "folder not found")
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    candidates = _candidate_files(folder)
    for done, path in enumerate(candidates, start=1):
        if on_file is not None:
            on_file(done, len(candidates))
        try:
            ds = load_dataset(path, pixels=pixels, defer=pixels)
        except ImageReadError as exc:
            logger.info("skipping %s: %s", path, exc.reason)
            continue
        if "Rows" not in ds:
            logger.info("skipping %s: not an image (no Rows attribute)", path)
            continue
        uid = str(header_value(ds, "SeriesInstanceUID") or f"(no SeriesInstanceUID: {path.name})")
        groups.setdefault(uid, []).append((path, ds))
    for items in groups.values():  # file order matters only where no geometry is given
        items.sort(key=lambda item: (_instance_number(item[1]), str(item[0])))
    return groups


def _series_number(ds: Dataset) -> int | None:
    try:
        return int(header_value(ds, "SeriesNumber"))
    except (TypeError, ValueError):  # absent, empty or damaged
        return None


def _instance_number(ds: Dataset) -> int:
    try:
        return int(header_value(ds, "InstanceNumber"))
    except (TypeError, ValueError):
        return 2**31


def _describe(uid: str, items: Sequence[tuple[Path, Dataset]]) -> str:
    ds = items[0][1]
    desc = str(ds.get("SeriesDescription", "") or "")
    return f"{uid} ({ds.get('Modality', '?')} '{desc}', {len(items)} files)"


def _select(
    folder: Path, groups: dict[str, list[tuple[Path, Dataset]]], series_uid: str | None
) -> list[tuple[Path, Dataset]]:
    if not groups:
        raise ImageReadError(folder, "no DICOM image files found in this folder")
    if series_uid is not None:
        if series_uid not in groups:
            raise ImageReadError(
                folder, f"series {series_uid} not found; present: {', '.join(sorted(groups))}"
            )
        return groups[series_uid]
    if len(groups) > 1:
        listing = "; ".join(_describe(uid, items) for uid, items in sorted(groups.items()))
        raise ImageReadError(
            folder,
            f"folder holds {len(groups)} image series, read one at a time with series_uid= "
            f"(see find_series): {listing}",
        )
    return next(iter(groups.values()))


def read_dicom_series(
    source: str | Path,
    *,
    kind: type[T] = ScalarImage,  # type: ignore[assignment]
    series_uid: str | None = None,
    threads: int | None = None,
) -> T:
    """Read a DICOM series from a folder (searched recursively) as one volume.

    Only the header is parsed before the files are grouped and checked; native pixel
    data is then read straight from each file, and compressed frames are decoded in
    parallel threads.

    Args:
        source: Folder holding the series' files (non-DICOM files are skipped).
        kind: :class:`ScalarImage` or :class:`LabelMap`.
        series_uid: Which series to read when the folder holds several.
        threads: Threads decoding compressed frames; by default one per usable core
            (at most 8). Native (uncompressed) data needs none.

    Raises:
        ImageReadError: If there is no image series, several without ``series_uid``,
            or a file cannot be read.
        GeometryError: If slices are missing, irregularly spaced or inconsistent.
    """
    folder = Path(source)
    with pydicom_warnings_to_log(folder):
        items = _select(folder, _scan(folder, pixels=True), series_uid)
        image = _build(items, folder, kind, threads)
    image.meta["files"] = [str(p) for p, _ in items]
    return image


def _series_info(uid: str, items: Sequence[tuple[Path, Dataset]], folder: Path) -> SeriesInfo:
    ds = items[0][1]
    size: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    orientation: str | None = None
    problem: str | None = None
    try:
        frames = _frames(items)
        _, affine, _ = stack_affine([f for f, _ in frames], folder)
        first = frames[0][0]
        size = (first.columns, first.rows, len(frames))
        sizes = np.linalg.norm(affine[:3, :3], axis=0)
        spacing = (float(sizes[0]), float(sizes[1]), float(sizes[2]))
        orientation = "".join(str(c) for c in nib.orientations.aff2axcodes(affine))
    except MedaiError as exc:
        problem = str(exc).removeprefix(f"{folder}: ")
    except PASS_THROUGH:
        raise
    except BaseException as exc:  # malformed attribute values surface as many types
        problem = f"unreadable DICOM content ({describe(exc)})"
    return SeriesInfo(
        uid=uid,
        modality=str(ds.get("Modality", "") or ""),
        description=str(ds.get("SeriesDescription", "") or ""),
        num_files=len(items),
        size=size,
        spacing=spacing,
        orientation=orientation,
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        patient_id=str(ds.get("PatientID", "") or ""),
        series_number=_series_number(ds),
        files=tuple(p for p, _ in items),
        problem=problem,
    )


def find_series(
    folder: str | Path, *, on_file: Callable[[int, int], None] | None = None
) -> list[SeriesInfo]:
    """List the DICOM image series under ``folder``, sorted by study, number and UID.

    Geometry problems (a missing slice, mixed orientations) do not raise; they are
    reported in :attr:`SeriesInfo.problem`.

    Args:
        folder: Searched recursively; non-DICOM and non-image files are skipped.
        on_file: Called as ``on_file(done, total)`` before each file is read (for
            progress bars).

    Raises:
        ImageReadError: If ``folder`` does not exist.
    """
    root = Path(folder)
    with pydicom_warnings_to_log(root):
        groups = _scan(root, pixels=False, on_file=on_file)
        infos = [_series_info(uid, items, root) for uid, items in groups.items()]
    return sorted(infos, key=lambda s: (s.study_uid, s.series_number or 0, s.uid))


def is_dicom_file(path: str | Path) -> bool:
    """True when ``path`` starts with the DICOM preamble and ``DICM`` marker."""
    try:
        with Path(path).open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"
