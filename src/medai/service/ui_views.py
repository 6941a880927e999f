"""What the web UI's pages show, computed from the index: no FastAPI here.

- :func:`series_thumbnail`: a PNG of the middle slice of a stored series (found through
  its instance rows, never a path from a request);
- :func:`input_volume`: the first input channel of a task as NIfTI (the series its DICOM
  SEG references, else its first input series), converted once and cached beside the
  task's results;
- :func:`measure_strips`: per measure, the histogram bins over the project's finished
  tasks with an opacity by count (``review.measure_distributions``, which uses
  :func:`medai.service.normality.bin_opacity`), the current task's bin marked;
- :func:`task_rows`: the job list's rows (state, progress, user, rank and colour).
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from medai.image import LabelMap, ScalarImage
from medai.service.context import ServiceContext
from medai.service.db import Instance, Job, Output, Project, Series, Study, Task, User

__all__ = [
    "INPUT_VOLUME",
    "Bin",
    "MeasureStrip",
    "input_volume",
    "label_focus",
    "measure_strips",
    "series_thumbnail",
    "task_rank",
    "task_rows",
]

#: The cached NIfTI of a task's first input channel, in ``ROOT/results/<task>/``.
INPUT_VOLUME = "ui_input.nii.gz"
_THUMB = 128
_COLOURS = ("green", "amber", "red")


def _series_instances(session: Session, project: Project, series_uid: str) -> list[Instance]:
    rows = session.scalars(
        select(Instance)
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(Study.project_id == project.id, Series.series_uid == series_uid)
    ).all()
    return sorted(rows, key=lambda i: (i.instance_number is None, i.instance_number or 0, i.id))


def series_thumbnail(
    session: Session, context: ServiceContext, project: Project, series_uid: str
) -> bytes | None:
    """A PNG (at most 128 px a side) of the series' middle instance, windowed to its 1st and
    99th percentile; None if the project has no such series or it holds no pixels."""
    import pydicom
    from PIL import Image as PilImage

    instances = _series_instances(session, project, series_uid)
    if not instances:
        return None
    middle = instances[len(instances) // 2]
    try:
        ds = pydicom.dcmread(context.archive.path_of(middle))
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    except (OSError, AttributeError, ValueError, TypeError):
        return None
    while pixels.ndim > 2:  # a multi-frame file: its middle frame
        pixels = pixels[pixels.shape[0] // 2] if pixels.shape[-1] not in (3, 4) else pixels[..., 0]
    low, high = np.percentile(pixels, [1, 99]) if pixels.size else (0.0, 1.0)
    scaled = np.clip((pixels - low) / max(float(high - low), 1e-6), 0, 1)
    picture = PilImage.fromarray((scaled * 255).astype(np.uint8), mode="L")
    picture.thumbnail((_THUMB, _THUMB))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _seg_reference(context: ServiceContext, session: Session, task: Task) -> str | None:
    """The series UID the task's DICOM SEG references (the bundle's first channel)."""
    import pydicom

    seg = session.scalar(
        select(Output).where(Output.task_id == task.id, Output.kind == "seg").order_by(Output.id)
    )
    if seg is None:
        return None
    path = context.config.results / seg.path
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except (OSError, AttributeError, IndexError, ValueError):
        return None


def input_volume(session: Session, context: ServiceContext, task: Task) -> Path | None:
    """The task's first input channel as NIfTI, cached as ``results/<task>/ui_input.nii.gz``;
    None when the task has no image input or its results folder is not there."""
    from medai.io import read_dicom_series, write_nifti

    folder = context.config.results / str(task.id)
    cached = folder / INPUT_VOLUME
    if cached.is_file():
        return cached
    if not folder.is_dir():
        return None
    series: dict[str, list[str]] = dict(task.inputs.get("series", {}))
    uid = _seg_reference(context, session, task)
    if uid is None:
        uid = next((uids[0] for uids in series.values() if uids), None)
    project = session.get(Project, task.project_id)
    if uid is None or project is None:
        return None
    instances = _series_instances(session, project, uid)
    if not instances:
        return None
    with tempfile.TemporaryDirectory(prefix="medai-ui-") as scratch:
        view = Path(scratch)
        for index, instance in enumerate(instances):
            (view / f"{index:06d}.dcm").symlink_to(context.archive.path_of(instance))
        image: ScalarImage = read_dicom_series(view, series_uid=uid)
    return write_nifti(image, cached)  # atomic: a reader never sees half a file


@dataclass(frozen=True)
class Bin:
    """One histogram bin of a measure: its edges, count and opacity (= luminance)."""

    low: float
    high: float
    count: int
    opacity: float


@dataclass(frozen=True)
class MeasureStrip:
    """A measure's distribution over the project; ``marked`` is the current task's bin."""

    name: str
    unit: str
    bins: tuple[Bin, ...]
    values: int
    marked: int | None
    value: float | None


def measure_strips(
    session: Session, project: Project, *, task_id: int | None = None, bins: int = 20
) -> list[MeasureStrip]:
    """Every measure of the project's done, not rejected tasks as a strip of bins
    (:func:`medai.service.review.measure_distributions`); ``task_id``'s bin is marked."""
    from medai.service.review import measure_distributions

    strips = []
    for name, found in measure_distributions(session, project, bins=bins).items():
        cells = tuple(
            Bin(found.edges[i], found.edges[i + 1], found.counts[i], found.opacity[i])
            for i in range(len(found.counts))
        )
        value = None if task_id is None else found.values.get(task_id)
        marked = None if task_id is None else found.bin_of(task_id)
        strips.append(MeasureStrip(name, found.unit, cells, len(found.values), marked, value))
    return strips


def task_rows(session: Session, project: Project, *, limit: int = 500) -> list[dict[str, Any]]:
    """The project's tasks, newest first: job, kind, unit, user, state, progress, rank."""
    found = session.execute(
        select(Task, Job.kind, Job.bundle, User.name)
        .join(Job, Job.id == Task.job_id)
        .join(User, User.id == Task.user_id)
        .where(Task.project_id == project.id)
        .order_by(Task.seq.desc())
        .limit(limit)
    ).all()
    rows = []
    for task, kind, bundle, user in found:
        rows.append(
            {
                "id": task.id, "job": task.job_id, "kind": kind, "bundle": bundle,
                "unit": task.unit, "user": user, "state": task.state,
                "progress": round(100 * float(task.progress or 0.0)), "error": task.error,
                **task_rank(task),
            }
        )  # fmt: skip
    return rows


def task_rank(task: Task) -> dict[str, Any]:
    """The task's ranking (:mod:`medai.service.review` fills it): ``colour`` (green, amber,
    red or None), ``rank_score``, ``uncertain``, ``reasons`` and ``review_state``."""
    colour = getattr(task, "colour", None)
    score = getattr(task, "rank_score", None)
    return {
        "colour": colour if colour in _COLOURS else None,
        "rank_score": None if score is None else float(score),
        "uncertain": bool(getattr(task, "uncertain", False)),
        "reasons": [str(r) for r in getattr(task, "rank_reasons", None) or []],
        "review_state": getattr(task, "review_state", None) or "none",
    }


def label_focus(path: Path) -> tuple[float, float, float] | None:
    """The world position (mm, RAS) of the label map's centroid, or None if it is empty."""
    from medai.io import read_nifti

    if not path.is_file():
        return None
    labels: LabelMap = read_nifti(path, kind=LabelMap)
    voxels = np.argwhere(labels.array[0] > 0)
    if voxels.size == 0:
        return None
    centre = voxels.mean(axis=0)
    world = labels.affine @ np.append(centre, 1.0)
    return (round(float(world[0]), 2), round(float(world[1]), 2), round(float(world[2]), 2))
