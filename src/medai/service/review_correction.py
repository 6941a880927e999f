"""A reviewer's corrected label map, stored as a new version beside the original.

The upload must be a NIfTI label map on the task's label grid: the same shape and affine
as the task's ``labels.nii.gz`` (version 1), integer labels, each one of the bundle's
labels (or, without a bundle, of the original map's). It is written, gzipped, as
``ROOT/results/<task>/labels.v<n>.nii.gz`` — created, never replacing a file — and
recorded as an :class:`~medai.service.db.Output` named ``labels.nii.gz`` with version n.
"""

from __future__ import annotations

import gzip
import zlib

import nibabel as nib
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medai.fsutil import atomic_write_bytes, file_sha256
from medai.service.context import ServiceContext
from medai.service.db import Output, Task

__all__ = ["LABELS_OUTPUT", "read_label_map", "store_correction"]

LABELS_OUTPUT = "labels.nii.gz"
_GZIP_MAGIC = b"\x1f\x8b"
_UNREADABLE = (
    OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError,
    nib.wrapstruct.WrapStructError, nib.spatialimages.HeaderDataError,
)  # fmt: skip


def _error(message: str) -> Exception:
    from medai.service.review import ReviewError  # review imports this module lazily

    return ReviewError(message)


def read_label_map(data: bytes) -> nib.Nifti1Image:
    """A NIfTI-1 image from ``data`` (gzipped or not).

    Raises:
        ReviewError: If ``data`` is not a NIfTI-1 image.
    """
    try:
        raw = gzip.decompress(data) if data[:2] == _GZIP_MAGIC else data
        return nib.Nifti1Image.from_bytes(raw)
    except _UNREADABLE as exc:
        raise _error(
            f"the upload is not a NIfTI-1 label map ({type(exc).__name__}: {exc}); "
            "send the corrected labels.nii.gz"
        ) from exc


def _labels_of(image: nib.Nifti1Image) -> set[int]:
    data = np.asanyarray(image.dataobj)
    integral = np.issubdtype(data.dtype, np.integer) or (
        np.all(np.isfinite(data)) and np.array_equal(data, np.round(data))
    )
    if not integral:
        raise _error("the corrected label map holds non-integer values; save integer labels")
    return {int(v) for v in np.unique(data)}


def _check_fits(
    corrected: nib.Nifti1Image, original: nib.Nifti1Image, labels: frozenset[int] | None
) -> None:
    if corrected.shape != original.shape:
        raise _error(
            f"the corrected label map has shape {corrected.shape}, the task's "
            f"{original.shape}; correct the task's own labels.nii.gz (same grid)"
        )
    if not np.allclose(corrected.affine, original.affine, atol=1e-4):
        raise _error(
            "the corrected label map's affine differs from the task's label grid; keep the "
            "original geometry (do not resample or reorient)"
        )
    allowed = set(labels) if labels is not None else _labels_of(original)
    allowed.add(0)
    extra = sorted(_labels_of(corrected) - allowed)
    if extra:
        raise _error(
            f"the corrected label map holds labels {extra} the bundle does not have "
            f"(allowed: {sorted(allowed)}); use the bundle's labels"
        )


def store_correction(
    session: Session, context: ServiceContext, task: Task, data: bytes, *,
    labels: frozenset[int] | None = None,
) -> int:  # fmt: skip
    """Validate ``data`` against the task's label map, store it as the next version.

    Returns:
        The new version number (2 for the first correction).

    Raises:
        ReviewError: No label map to correct, an upload that is not one, or one that
            does not fit the task's grid or the bundle's labels.
    """
    rows = session.scalars(
        select(Output)
        .where(Output.task_id == task.id, Output.name == LABELS_OUTPUT)
        .order_by(Output.version)
    ).all()
    if not rows:
        raise _error(
            f"task {task.id} has no {LABELS_OUTPUT} to correct; corrections apply to "
            "segmentation results"
        )
    results = context.config.results
    original_path = (results / rows[0].path).resolve()
    if not original_path.is_relative_to(results.resolve()) or not original_path.is_file():
        raise _error(f"task {task.id}'s {LABELS_OUTPUT} is gone from the results folder")
    original = nib.load(original_path)
    if not isinstance(original, nib.Nifti1Image):
        raise _error(f"task {task.id}'s {LABELS_OUTPUT} is not a NIfTI-1 image")
    _check_fits(read_label_map(data), original, labels)
    version = int(session.scalar(
        select(func.max(Output.version)).where(
            Output.task_id == task.id, Output.name == LABELS_OUTPUT
        )
    ) or 1) + 1  # fmt: skip
    relative = f"{task.id}/labels.v{version}.nii.gz"
    stored = data if data[:2] == _GZIP_MAGIC else gzip.compress(data, mtime=0)
    try:
        atomic_write_bytes(results / relative, stored, overwrite=False)
    except FileExistsError as exc:
        raise _error(
            f"{relative} exists already (another correction is being saved): reload and try again"
        ) from exc
    session.add(
        Output(
            task_id=task.id, name=LABELS_OUTPUT, kind="nifti", path=relative,
            sha256=file_sha256(results / relative), sop_uid=None, version=version,
        )
    )  # fmt: skip
    return version
