"""Normality ranking of a project's results, the review queue and held exports.

* :func:`rank_project` scores every done task of a project against the project's accepted
  results (:func:`medai.service.normality.score_tasks`), per population of tasks that ran
  the same job kind with the same bundle (measures of different models are not
  comparable). Accepted = done and review state ``none``, ``accepted`` or ``corrected``.
  The bundle's ``reference.json`` stands in for a measure the project has too few values
  of, and its review threshold (``bundle.json`` ``uncertainty.review_above``, else the
  plan's ``target.review_above``) flags an ``uncertainty`` above it. The project's
  ``ranking`` column holds its :class:`~medai.service.normality.NormalityConfig`.
  A red or uncertain task whose review state is ``none`` becomes ``pending`` (once; a
  decided review is never re-opened) and, when the project holds unreviewed results
  (``hold_unreviewed``), its deliveries not yet sent are ``held``. The dispatcher calls it
  in the transaction that marks a task done, after the task's deliveries are added, so a
  task's deliveries are created held or pending atomically with its result.
* :func:`review_queue`: the pending tasks, red before amber, the oddest first.
* :func:`record_review`: a reviewer's (or owner's) decision, audited, appended to the
  reviews. ``accept`` releases held deliveries (``held`` → ``pending``). ``reject``
  cancels the deliveries not yet sent. ``correct`` stores the corrected label map as a new
  version of ``labels.nii.gz`` (:mod:`medai.service.review_correction`) and cancels the
  original DICOM deliveries not yet sent: a SEG the reviewer corrected must not reach the
  archive as if approved, and the SEG is not regenerated from the correction (yet) — the
  corrected label map is served by the API as the output's newest version.
* :func:`measure_distributions`: per measure, the values over the project's done,
  not rejected results with a histogram and its opacity per bin for the UI.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from medai.errors import MedaiError
from medai.service.auth import audit, project_for
from medai.service.context import ServiceContext
from medai.service.db import (
    Delivery,
    Job,
    Measurement,
    Output,
    Project,
    Review,
    ReviewState,
    Task,
    TaskState,
    User,
)
from medai.service.normality import (
    Colour,
    MeasureTable,
    NormalityConfig,
    bin_index,
    bin_opacity,
    histogram,
    score_tasks,
)

__all__ = [
    "ACCEPTED_STATES",
    "BundleReview",
    "Decision",
    "DeliveryHold",
    "Distribution",
    "QueueItem",
    "ReviewError",
    "bundle_review",
    "measure_distributions",
    "rank_project",
    "ranking_config",
    "record_review",
    "review_queue",
]

logger = logging.getLogger(__name__)

#: Review states whose results form the distribution a task is judged against.
ACCEPTED_STATES = frozenset({ReviewState.NONE, ReviewState.ACCEPTED, ReviewState.CORRECTED})
_SEVERITY = {Colour.RED.value: 2, Colour.AMBER.value: 1, Colour.GREEN.value: 0}
_MAX_COMMENT = 4000


class Decision(StrEnum):
    """What a reviewer decides about a result."""

    ACCEPT = "accept"
    CORRECT = "correct"
    REJECT = "reject"


class DeliveryHold:
    """The delivery states review adds to :class:`~medai.service.deliver.DeliveryState`."""

    HELD = "held"
    CANCELLED = "cancelled"
    UNSENT = frozenset({"pending", "retrying", HELD})


class ReviewError(MedaiError, ValueError):
    """A review that cannot be recorded as asked; the message says what to do."""


@dataclass(frozen=True)
class BundleReview:
    """What a bundle contributes to ranking: reference values per measure, review threshold."""

    reference: Mapping[str, Sequence[float]] = field(default_factory=dict)
    review_threshold: float | None = None
    labels: frozenset[int] | None = None


@dataclass(frozen=True)
class QueueItem:
    """One task waiting for review."""

    task_id: int
    job_id: int
    unit: str
    kind: str
    colour: str | None
    rank_score: float | None
    reasons: tuple[str, ...]
    uncertain: bool
    finished_at: dt.datetime | None


@dataclass(frozen=True)
class Distribution:
    """One measure over the project: values per task, histogram, opacity per bin."""

    measure: str
    unit: str
    values: Mapping[int, float]
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    opacity: tuple[float, ...]

    def bin_of(self, task_id: int) -> int | None:
        """The histogram bin of ``task_id``'s value (None if it has none)."""
        value = self.values.get(task_id)
        return None if value is None else bin_index(self.edges, value)


def _reference_measures(reference: Mapping[str, Any], classes: Sequence[str]) -> dict[str, list]:
    """``reference.json`` (segmentation or image bundle) as measure → values."""
    found: dict[str, list[float]] = {}
    for region, item in (reference.get("regions") or {}).items():
        found[f"volume_ml.{region}"] = list(item.get("values") or [])
    for name, item in (reference.get("outputs") or {}).items():
        if name == "value":
            key = "prediction"
        elif name == "probability":
            key = f"probability.{classes[-1]}" if classes else "probability"
        else:
            key = f"probability.{name}"
        found[key] = list((item or {}).get("values") or [])
    uncertainty = reference.get("uncertainty")
    if isinstance(uncertainty, Mapping):
        found["uncertainty"] = list(uncertainty.get("values") or [])
    return {k: v for k, v in found.items() if v}


@lru_cache(maxsize=32)
def _bundle_review(folder: str, _stamp: int) -> BundleReview:
    from medai.runtime.bundle import load_bundle  # lazily: the dispatcher imports this module

    bundle = load_bundle(folder)
    settings = bundle.info.get("uncertainty")
    threshold = settings.get("review_above") if isinstance(settings, Mapping) else None
    if threshold is None:
        threshold = bundle.plan.target.review_above
    reference = bundle.documents.get("reference.json") or {}
    labels = frozenset(int(k) for k in bundle.plan.labels) if bundle.plan.labels else None
    return BundleReview(
        _reference_measures(reference, list(bundle.plan.classes)),
        None if threshold is None else float(threshold),
        labels,
    )


def bundle_review(folder: Path) -> BundleReview:
    """The reference values and review threshold of the bundle in ``folder`` (verified,
    cached until its manifest changes); empty when it cannot be loaded (logged)."""
    from medai.errors import BundleError

    try:
        stamp = (folder / "manifest.json").stat().st_mtime_ns
        return _bundle_review(str(folder), stamp)
    except (OSError, BundleError) as exc:
        logger.warning("bundle %s: no reference or review threshold (%s)", folder, exc)
        return BundleReview()


def _bundle_of(context: ServiceContext, name: str | None) -> BundleReview:
    if name is None:
        return BundleReview()
    return bundle_review(context.config.root / "bundles" / name)


def ranking_config(project: Project) -> NormalityConfig:
    """The project's :class:`NormalityConfig` (its ``ranking`` column).

    Raises:
        ReviewError: The settings do not validate (the message names the fix).
    """
    try:
        return NormalityConfig.model_validate(project.ranking or {})
    except ValueError as exc:
        raise ReviewError(
            f"project {project.name!r}: its ranking settings {project.ranking!r} do not "
            f"validate ({exc}); fix them (NormalityConfig fields) or reset them to {{}}"
        ) from exc


def _config_or_default(project: Project) -> NormalityConfig:
    """The project's settings; the defaults (logged) when they are broken, so that a bad
    setting never stops results from being recorded and held for review."""
    try:
        return ranking_config(project)
    except ReviewError as exc:
        logger.error("%s; ranking with the defaults meanwhile", exc)
        return NormalityConfig()


def _done_tasks(session: Session, project_id: int) -> dict[tuple[str, str | None], list[Task]]:
    rows = session.execute(
        select(Task, Job.kind, Job.bundle)
        .join(Job, Job.id == Task.job_id)
        .where(Task.project_id == project_id, Task.state == TaskState.DONE)
        .order_by(Task.seq)
    ).all()
    groups: dict[tuple[str, str | None], list[Task]] = defaultdict(list)
    for task, kind, bundle in rows:
        groups[(kind, bundle)].append(task)
    return groups


def _measures(
    session: Session, project_id: int
) -> tuple[dict[int, dict[str, float]], dict[str, str]]:
    records: dict[int, dict[str, float]] = defaultdict(dict)
    units: dict[str, str] = {}
    rows = session.execute(
        select(Measurement.task_id, Measurement.name, Measurement.value, Measurement.unit).where(
            Measurement.project_id == project_id
        )
    ).all()
    for task_id, name, value, unit in rows:
        if math.isfinite(value):
            records[task_id][name] = value
            units.setdefault(name, unit)
    return records, units


def _rank_group(
    tasks: Sequence[Task], records: Mapping[int, dict[str, float]], units: Mapping[str, str],
    bundle: BundleReview, config: NormalityConfig,
) -> list[int]:  # fmt: skip
    """Score one population; returns the ids of tasks whose review became pending now."""
    table = MeasureTable.from_records({str(t.id): records.get(t.id, {}) for t in tasks})
    accepted = MeasureTable.from_records(
        {str(t.id): records.get(t.id, {}) for t in tasks if t.review_state in ACCEPTED_STATES}
    )
    threshold = bundle.review_threshold
    uncertainty = {str(t.id): records[t.id]["uncertainty"] for t in tasks
                   if "uncertainty" in records.get(t.id, {})}  # fmt: skip
    results = score_tasks(
        accepted, table, reference=bundle.reference, units=units, config=config,
        uncertainty=uncertainty if threshold is not None else None, review_threshold=threshold,
    )  # fmt: skip
    pending = []
    for task, result in zip(tasks, results, strict=True):
        task.rank_score = float(result.rank_score) if np.isfinite(result.rank_score) else None
        task.colour = result.colour.value
        task.rank_reasons = list(result.reasons)
        task.uncertain = result.uncertain
        needs = result.colour is Colour.RED or result.uncertain
        if needs and task.review_state == ReviewState.NONE:
            task.review_state = ReviewState.PENDING
            pending.append(task.id)
    return pending


def _deliveries(session: Session, task_id: int, states: frozenset[str]) -> list[Delivery]:
    return list(
        session.scalars(
            select(Delivery)
            .join(Output, Output.id == Delivery.output_id)
            .where(Output.task_id == task_id, Delivery.state.in_(states))
            .order_by(Delivery.id)
        )
    )


def rank_project(session: Session, context: ServiceContext, project: Project | int) -> list[int]:
    """Rank the project's done tasks again; hold the deliveries of newly pending ones.

    Args:
        session: The caller's transaction (nothing is committed here).
        context: The service (for the registered bundles).
        project: The project or its id.

    Broken ranking settings in the project are logged and the defaults used.

    Returns:
        The ids of tasks whose review became ``pending`` in this call.
    """
    row = project if isinstance(project, Project) else session.get_one(Project, project)
    config = _config_or_default(row)
    session.flush()
    records, units = _measures(session, row.id)
    pending: list[int] = []
    for (_kind, bundle), tasks in _done_tasks(session, row.id).items():
        pending += _rank_group(tasks, records, units, _bundle_of(context, bundle), config)
    if row.hold_unreviewed:
        for task_id in pending:
            for delivery in _deliveries(session, task_id, frozenset({"pending", "retrying"})):
                delivery.state = DeliveryHold.HELD
    if pending:
        logger.info("project %s: tasks %s wait for review", row.name, pending)
    return pending


def review_queue(session: Session, project: Project) -> list[QueueItem]:
    """The project's tasks waiting for review: red before amber, highest score first."""
    rows = session.execute(
        select(Task, Job.kind)
        .join(Job, Job.id == Task.job_id)
        .where(Task.project_id == project.id, Task.review_state == ReviewState.PENDING)
    ).all()
    items = [
        QueueItem(
            task.id, task.job_id, task.unit, kind, task.colour, task.rank_score,
            tuple(task.rank_reasons or ()), task.uncertain, task.finished_at,
        )
        for task, kind in rows
    ]  # fmt: skip
    return sorted(
        items,
        key=lambda i: (
            -_SEVERITY.get(i.colour or "", -1),
            -(i.rank_score if i.rank_score is not None else -math.inf),
            i.task_id,
        ),
    )


def _check_review(task: Task, decision: Decision, comment: str, corrected: bytes | None) -> None:
    if task.state != TaskState.DONE:
        raise ReviewError(
            f"task {task.id} is {task.state}; only a done task's result can be reviewed"
        )
    if task.review_state == ReviewState.REJECTED:
        raise ReviewError(
            f"task {task.id} was rejected; submit its unit again for a new result to review"
        )
    if len(comment) > _MAX_COMMENT:
        raise ReviewError(f"the comment has {len(comment)} characters; keep it to {_MAX_COMMENT}")
    if decision is Decision.CORRECT and corrected is None:
        raise ReviewError(
            "a correction needs the corrected label map: upload it to "
            "POST /api/projects/{project}/tasks/{id}/correction"
        )
    if decision is not Decision.CORRECT and corrected is not None:
        raise ReviewError(f"a corrected label map comes with decision 'correct', not {decision}")


def _decision(value: str | Decision) -> Decision:
    try:
        return Decision(value)
    except ValueError:
        known = ", ".join(d.value for d in Decision)
        raise ReviewError(f"decision {value!r} is not one of {known}") from None


def record_review(
    session: Session, context: ServiceContext, user: User, task: Task,
    decision: str | Decision, comment: str = "", corrected: bytes | None = None,
) -> Review:  # fmt: skip
    """Record a reviewer's decision on ``task``, release or cancel its deliveries, audit it.

    Args:
        corrected: With ``correct``: the corrected label map (NIfTI, optionally gzipped)
            on the task's label grid, labels among the bundle's.

    Raises:
        AccessDeniedError: ``user`` is not a reviewer or owner of the task's project.
        ReviewError: Not a done task, a rejected one, a bad decision, or a correction
            that does not fit (the message says what to fix).
    """
    project = session.get_one(Project, task.project_id)
    project_for(session, user, project.name, role="reviewer")
    chosen = _decision(decision)
    _check_review(task, chosen, comment, corrected)
    version: int | None = None
    if chosen is Decision.ACCEPT:
        released = _deliveries(session, task.id, frozenset({DeliveryHold.HELD}))
        for delivery in released:
            delivery.state = "pending"
        moved, state = len(released), ReviewState.ACCEPTED
    else:
        if chosen is Decision.CORRECT:
            from medai.service.review_correction import store_correction

            job = session.get_one(Job, task.job_id)
            labels = _bundle_of(context, job.bundle).labels
            version = store_correction(session, context, task, corrected or b"", labels=labels)
        why = (
            f"rejected by {user.name}" if chosen is Decision.REJECT
            else f"superseded by {user.name}'s correction (labels.nii.gz version {version})"
        )  # fmt: skip
        cancelled = _deliveries(session, task.id, DeliveryHold.UNSENT)
        for delivery in cancelled:
            delivery.state, delivery.error = DeliveryHold.CANCELLED, why
        moved = len(cancelled)
        state = ReviewState.REJECTED if chosen is Decision.REJECT else ReviewState.CORRECTED
    task.review_state = state
    review = Review(
        task_id=task.id, actor=user.name, decision=chosen.value, comment=comment,
        output_version=version,
    )  # fmt: skip
    session.add(review)
    audit(
        session, user.name, "review", project_id=project.id, target=f"task {task.id}",
        decision=chosen.value, comment=comment, version=version, deliveries=moved,
    )  # fmt: skip
    session.flush()
    return review


def measure_distributions(
    session: Session, project: Project, *, bins: int = 20
) -> dict[str, Distribution]:
    """Per measure, its values over the project's done, not rejected tasks and a histogram
    with opacity per bin (``normality.bin_opacity``), by measure name."""
    ids = set(
        session.scalars(
            select(Task.id).where(
                Task.project_id == project.id,
                Task.state == TaskState.DONE,
                Task.review_state != ReviewState.REJECTED,
            )
        )
    )
    records, units = _measures(session, project.id)
    per_measure: dict[str, dict[int, float]] = defaultdict(dict)
    for task_id, measured in records.items():
        if task_id in ids:
            for name, value in measured.items():
                per_measure[name][task_id] = value
    found = {}
    for name in sorted(per_measure):
        values = per_measure[name]
        edges, counts = histogram(list(values.values()), bins)
        found[name] = Distribution(
            name, units.get(name, ""), dict(sorted(values.items())),
            tuple(float(e) for e in edges), tuple(int(c) for c in counts),
            tuple(float(o) for o in bin_opacity(counts)),
        )  # fmt: skip
    return found
