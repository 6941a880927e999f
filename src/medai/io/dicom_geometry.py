"""Slice stacking for DICOM: order frames along the slice normal, check spacing, build the affine.

DICOM positions are in the patient's LPS frame; medai images are RAS+, so the
affine built here flips the first two world axes. Array axis ``x`` runs along a
row (increasing column index), ``y`` down the columns (increasing row index), and
``z`` along the slice normal ``row × column``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from medai.errors import GeometryError
from medai.io._dicom_common import DEFAULT_IOP, FrameGeometry

__all__ = ["LPS_TO_RAS", "stack_affine"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Orientation cosines may differ by this much and still count as one plane.
ORIENTATION_TOL = 1e-4
#: Slice gaps may differ from the nominal step by this fraction (plus 1 µm).
SPACING_REL_TOL = 0.01


def _first_mismatch(values: NDArray[np.float64], *, rtol: float, atol: float) -> int | None:
    """Index of the first row of ``values`` not close to row 0, or None."""
    close = np.all(np.isclose(values, values[0], rtol=rtol, atol=atol), axis=1)
    bad = np.flatnonzero(~close)
    return int(bad[0]) if bad.size else None


def _check_same_plane(frames: Sequence[FrameGeometry], where: Path) -> None:
    first = frames[0]
    sizes = np.array([(f.rows, f.columns) for f in frames], dtype=np.float64)
    bad = _first_mismatch(sizes, rtol=0.0, atol=0.0)
    if bad is not None:
        frame = frames[bad]
        raise GeometryError(
            f"{where}: {frame.label} is {frame.rows}x{frame.columns} pixels but "
            f"{first.label} is {first.rows}x{first.columns}; slices of one volume must match"
        )
    spacings = np.array([f.pixel_spacing for f in frames], dtype=np.float64)
    bad = _first_mismatch(spacings, rtol=1e-4, atol=1e-6)
    if bad is not None:
        frame = frames[bad]
        raise GeometryError(
            f"{where}: pixel spacing {frame.pixel_spacing} of {frame.label} differs from "
            f"{first.pixel_spacing} of {first.label}"
        )
    if first.orientation is None:
        return
    located = [f for f in frames if f.orientation is not None]
    orientations = np.array([f.orientation for f in located], dtype=np.float64)
    bad = _first_mismatch(orientations, rtol=1e-5, atol=ORIENTATION_TOL)
    if bad is not None:
        mine, theirs = orientations[bad], first.orientation
        raise GeometryError(
            f"{where}: {located[bad].label} has orientation {mine.round(4).tolist()} but "
            f"{first.label} has {theirs.round(4).tolist()}; is a localizer or another "
            "plane mixed into the series?"
        )


def _nominal_step(gaps: NDArray[np.float64]) -> float:
    return float(np.median(gaps)) if gaps.size >= 3 else float(gaps.min())


def _check_gaps(ordered: Sequence[FrameGeometry], dist: NDArray[np.float64], where: Path) -> None:
    gaps = np.diff(dist)
    for i, gap in enumerate(gaps):
        if gap < 1e-3:
            raise GeometryError(
                f"{where}: {ordered[i].label} and {ordered[i + 1].label} lie at the same slice "
                "position; does the series hold several echoes, phases or time points?"
            )
    step = _nominal_step(gaps)
    tol = SPACING_REL_TOL * step + 1e-3
    for i, gap in enumerate(gaps):
        if abs(gap - step) <= tol:
            continue
        pair = f"{ordered[i].label} and {ordered[i + 1].label}"
        ratio = gap / step
        if ratio > 1.5 and abs(ratio - round(ratio)) * step <= tol:
            raise GeometryError(
                f"{where}: missing slice: gap of {gap:.4g} mm between {pair}, while the series "
                f"steps {step:.4g} mm ({round(ratio) - 1} slice(s) absent)"
            )
        raise GeometryError(
            f"{where}: inconsistent slice spacing: gap of {gap:.4g} mm between {pair}, while "
            f"the other slices are {step:.4g} mm apart"
        )


def _check_collinear(
    positions: NDArray[np.float64],
    step: NDArray[np.float64],
    ordered: Sequence[FrameGeometry],
    where: Path,
) -> None:
    expected = positions[0] + np.outer(np.arange(len(positions)), step)
    error = np.linalg.norm(positions - expected, axis=1)
    worst = int(np.argmax(error))
    if error[worst] > SPACING_REL_TOL * float(np.linalg.norm(step)) + 1e-2:
        raise GeometryError(
            f"{where}: {ordered[worst].label} is {error[worst]:.3g} mm off the line through the "
            "other slice positions; the slices do not form a regular volume"
        )


def stack_affine(
    frames: Sequence[FrameGeometry], where: Path
) -> tuple[list[int], NDArray[np.float64], bool]:
    """Order ``frames`` into a volume and compute its RAS+ affine.

    Args:
        frames: One entry per 2D frame, in file order.
        where: File or folder named in error messages.

    Returns:
        ``(order, affine, from_patient)``: frame indices sorted along the slice normal,
        the 4×4 voxel-to-RAS+ affine, and whether the geometry came from the patient
        position/orientation attributes (``False``: a default plane was assumed).

    Raises:
        GeometryError: If frames differ in size/spacing/orientation, share a position,
            have a missing slice or irregular spacing.
    """
    if not frames:
        raise GeometryError(f"{where}: no image frames to stack")
    _check_same_plane(frames, where)
    first = frames[0]
    row_sp, col_sp = first.pixel_spacing
    located = all(f.position is not None and f.orientation is not None for f in frames)
    iop = first.orientation if located and first.orientation is not None else DEFAULT_IOP
    row_dir = iop[:3] / np.linalg.norm(iop[:3])
    col_dir = iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 1e-3:
        raise GeometryError(f"{where}: ImageOrientationPatient of {first.label} is degenerate")
    normal /= np.linalg.norm(normal)
    if not located:
        order = list(range(len(frames)))
        origin = np.zeros(3)
        step = normal * (first.slice_thickness or 1.0)
    else:
        positions = np.stack([f.position for f in frames if f.position is not None])
        dist = positions @ normal
        order = [int(i) for i in np.argsort(dist, kind="stable")]
        ordered = [frames[i] for i in order]
        origin = positions[order[0]]
        if len(frames) == 1:
            step = normal * (first.slice_thickness or 1.0)
        else:
            _check_gaps(ordered, dist[order], where)
            step = (positions[order[-1]] - origin) / (len(frames) - 1)
            _check_collinear(positions[order], step, ordered, where)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_sp
    lps[:3, 1] = col_dir * row_sp
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return order, LPS_TO_RAS @ lps, located
