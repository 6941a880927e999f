"""Trainer tasks: what differs between segmentation, classification and regression."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medai.data import Dataset, TaskType, import_dataset
from medai.errors import DatasetError, PlanError
from medai.preprocess.cases import SegCohort, as_cohort
from medai.preprocess.plan import Plan, TaskKind
from medai.training.tasks.base import Finalised, Task, Validation
from medai.training.tasks.classification import ImageTask
from medai.training.tasks.segmentation import SegmentationTask

__all__ = [
    "Finalised",
    "ImageTask",
    "SegmentationTask",
    "Task",
    "Validation",
    "as_dataset",
    "task_for",
]


def as_dataset(source: Any) -> Dataset:
    """A ``Dataset`` from itself or from a path the data layer imports."""
    if isinstance(source, Dataset):
        return source
    if isinstance(source, str | Path):
        return import_dataset(Path(source))
    raise TypeError(f"source must be a path or a Dataset; got {type(source).__name__}")


def task_for(source: Any, plan: Plan) -> Task:
    """The task serving ``plan.task`` on ``source``, checked against the plan.

    Raises:
        PlanError: If the data's channels or kind do not match the plan.
        DatasetError: If the source is not a dataset the task can use.
    """
    if plan.task is TaskKind.SEGMENTATION:
        cohort: SegCohort = as_cohort(source)
        channels = cohort.channels
        task: Task = SegmentationTask(cohort)
    else:
        dataset = as_dataset(source)
        wanted = (
            TaskType.REGRESSION if plan.task is TaskKind.REGRESSION else TaskType.CLASSIFICATION
        )
        if dataset.task is not wanted:
            raise DatasetError(
                f"dataset {dataset.name!r} is a {dataset.task.value} dataset; a "
                f"{plan.task.value} run needs a {wanted.value} dataset (derive one with "
                "`medai data derive`)"
            )
        channels = dataset.channels
        task = ImageTask(dataset)
    if len(plan.channels) != len(channels):
        raise PlanError(
            f"plan has {len(plan.channels)} channels, dataset {len(channels)}; "
            "make the plan from this dataset (medai plan)"
        )
    return task
