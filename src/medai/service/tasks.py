"""What a task does: the work of each job kind, run by the executor in a child process.

:func:`run_task` is the executor's target (``medai.service.tasks:run_task``). It reads
the task's input instances (absolute paths the dispatcher found through the index),
writes only under the payload's ``out`` folder, and returns the outputs (paths relative
to ``out``) and measurements the dispatcher records. Kinds:

- ``noop``: sleeps ``options["seconds"]`` and lists its inputs (``inputs.json``); reports
  ``options["measurements"]`` and, with ``options["sr"]``, writes ``listing.dcm`` (a Basic
  Text SR) — for tests and benchmarks (:mod:`medai.service.task_noop`).
- ``segmentation``: a segmentation bundle on the study → ``labels.nii.gz``,
  ``volumes.json``, ``seg.dcm`` (DICOM SEG), ``sr.dcm`` (TID 1500 SR), measurements
  ``volume_ml.<region>`` and ``uncertainty`` when the prediction has one.
- ``segmentation+radiomics``: the same, then IBSI features per region on the first
  channel → ``radiomics.csv`` (also in the SR), measurements ``radiomics.<region>.<feature>``.
- ``radiomics``: IBSI features of the series ``image`` inside each segment of the DICOM
  SEG ``mask`` → ``radiomics.csv`` and the same measurements.
- ``classification``: a classification / regression bundle → ``prediction.json``,
  measurements ``probability.<class>`` or ``prediction``, and ``uncertainty``.

Everything is deterministic: the same inputs and bundle give the same bytes (DICOM
UIDs derive from the bundle digest and the input instances; the DICOM content dates
are the source series' own). Nothing here imports torch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medai.fsutil import atomic_write_text
from medai.service.task_inputs import (
    input_view,
    match_channels,
    read_channels,
    remove_view,
    view_series,
)
from medai.service.task_noop import given_measurements, write_listing_sr
from medai.service.task_work import (
    Result,
    classify_study,
    radiomics_of_seg,
    segment_study,
)

__all__ = ["KINDS", "TaskPayload", "run_task"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskPayload:
    """The executor's payload, checked (see the service contract for each key).

    Raises:
        ValueError: If a key is missing or of the wrong type, ``out`` is not an existing
            empty-or-own folder given by absolute path, or a kind needs a bundle it lacks.
    """

    task_id: int
    kind: str
    out: Path
    bundle: Path | None = None
    inputs: dict[str, list[str]] = field(default_factory=dict)
    series: dict[str, list[str]] = field(default_factory=dict)
    study_uid: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    cpu: int = 1

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> TaskPayload:
        """Check ``payload`` and build the payload object."""
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict; got {type(payload).__name__}")
        kind = payload.get("kind")
        if kind not in KINDS:
            raise ValueError(f"task kind {kind!r} is unknown; use one of {sorted(KINDS)}")
        out = Path(str(payload.get("out", "")))
        if not out.is_absolute() or not out.is_dir():
            raise ValueError(f"out {str(out)!r} must be an existing folder given by absolute path")
        bundle = payload.get("bundle")
        if kind in _NEEDS_BUNDLE and not bundle:
            raise ValueError(f"a {kind} task needs a bundle; the job must name a registered one")
        cpu = payload.get("cpu", 1)
        if not isinstance(cpu, int) or isinstance(cpu, bool) or cpu < 1:
            raise ValueError(f"cpu must be a positive integer; got {cpu!r}")
        return cls(
            task_id=int(payload.get("task_id", 0)),
            kind=str(kind),
            out=out,
            bundle=Path(str(bundle)) if bundle else None,
            inputs={str(k): [str(f) for f in v] for k, v in _mapping(payload, "inputs").items()},
            series={str(k): [str(u) for u in v] for k, v in _mapping(payload, "series").items()},
            study_uid=payload.get("study_uid") or None,
            options=dict(_mapping(payload, "options")),
            cpu=cpu,
        )


def _mapping(payload: dict[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"payload[{key!r}] must be a mapping; got {type(value).__name__}")
    return value


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one task; the executor's target.

    Args:
        payload: ``task_id``, ``kind``, ``bundle`` (absolute folder or None),
            ``inputs`` ({alias: [absolute instance paths]}), ``series`` ({alias: [series
            UIDs]}), ``study_uid``, ``out`` (an empty staging folder), ``options``, ``cpu``.

    Returns:
        ``{"outputs": [{"name", "kind", "path", "sop_uid"}], "measurements": [{"name",
        "value", "unit"}]}``, output paths relative to ``out``.

    Raises:
        ValueError: If the payload is malformed.
        BundleInputError: If the study does not fit the bundle.
    """
    task = TaskPayload.parse(payload)
    started = time.perf_counter()
    try:
        result = KINDS[task.kind](task)
    finally:
        remove_view(task.out)
    logger.info(
        "task %d (%s): %d outputs, %d measurements in %.1f s", task.task_id, task.kind,
        len(result.outputs), len(result.measurements), time.perf_counter() - started,
    )  # fmt: skip
    return result.as_dict()


def _noop(task: TaskPayload) -> Result:
    seconds = float(task.options.get("seconds", 0) or 0)
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"options.seconds must be a non-negative number; got {seconds}")
    measurements = given_measurements(task.options)
    time.sleep(seconds)
    listing = {alias: [Path(f).name for f in files] for alias, files in task.inputs.items()}
    atomic_write_text(task.out / "inputs.json", json.dumps(listing, indent=2) + "\n")
    result = Result()
    result.add_output(task.out, "inputs.json", "json")
    if task.options.get("sr"):
        files = [f for alias in sorted(task.inputs) for f in task.inputs[alias]]
        sop_uid = write_listing_sr(task.out / "listing.dcm", files, listing)
        result.add_output(task.out, "listing.dcm", "sr", sop_uid)
    for name, value, unit in measurements:
        result.measure(name, value, unit)
    return result


def _bundle(task: TaskPayload) -> Path:
    if task.bundle is None:
        raise ValueError(f"a {task.kind} task needs a bundle; the job must name a registered one")
    return task.bundle


def _channels_image(task: TaskPayload, channels: list[str]) -> Any:
    """The study's series matched to ``channels``, read as one image."""
    folders = input_view(task.out, task.inputs)
    return read_channels(match_channels(channels, view_series(folders, task.series)))


def _segmentation(task: TaskPayload, *, radiomics: bool = False) -> Result:
    from medai.runtime import Segmenter

    segmenter = Segmenter(_bundle(task), threads=task.cpu)
    image = _channels_image(task, segmenter.loaded.channels)
    return segment_study(
        segmenter, image, task.out, tta=task.options.get("tta"),
        radiomics=task.options.get("radiomics", {}) if radiomics else None,
    )  # fmt: skip


def _segmentation_radiomics(task: TaskPayload) -> Result:
    return _segmentation(task, radiomics=True)


def _radiomics(task: TaskPayload) -> Result:
    folders = input_view(task.out, task.inputs)
    lower = {alias.lower(): alias for alias in folders}
    missing = [name for name in ("image", "mask") if name not in lower]
    if missing:
        raise ValueError(
            f"a radiomics task needs the aliases 'image' and 'mask' (a DICOM SEG); missing "
            f"{missing} among {sorted(folders)}: bind them in the selection"
        )
    image_alias, mask_alias = lower["image"], lower["mask"]
    found = view_series({image_alias: folders[image_alias]}, task.series)
    if not found:
        raise ValueError(f"alias {image_alias!r} holds no readable image series")
    image = read_channels(found[:1])
    segs = [Path(name) for name in task.inputs[mask_alias]]  # checked by input_view
    return radiomics_of_seg(image, segs, task.out, settings=task.options.get("radiomics", {}))


def _classification(task: TaskPayload) -> Result:
    from medai.runtime import Classifier

    classifier = Classifier(_bundle(task), threads=task.cpu)
    image = _channels_image(task, classifier.loaded.channels)
    return classify_study(classifier, image, task.out, case_id=task.study_uid or "study")


#: The job kinds' work, by kind name (the values of ``medai.service.jobs.JobKind``).
KINDS: dict[str, Callable[[TaskPayload], Result]] = {
    "classification": _classification,
    "noop": _noop,
    "radiomics": _radiomics,
    "segmentation": _segmentation,
    "segmentation+radiomics": _segmentation_radiomics,
}
_NEEDS_BUNDLE = frozenset({"classification", "segmentation", "segmentation+radiomics"})
