"""The dataset manifest: :class:`Case`, :class:`Splits` and :class:`Dataset`.

A manifest is one readable YAML (or JSON) file, usually ``dataset.yaml``. In
memory every path is absolute; on disk paths are written relative to the
manifest's folder, so a dataset folder can be moved or copied as a whole.

Example:
    >>> ds = Dataset.load("cohort/dataset.yaml")  # doctest: +SKIP
    >>> image = ds.load_case_image(ds.cases[0])  # doctest: +SKIP
    >>> masks = region_masks(ds.load_case_label(ds.cases[0]), ds.regions)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medai.data.semantics import resolve_regions
from medai.errors import ConfigError, DatasetError, validation_summary
from medai.fsutil import atomic_write_text
from medai.image import LabelMap, ScalarImage
from medai.io import read_image, read_label

__all__ = ["SPLIT_NAMES", "Case", "Dataset", "Split", "Splits", "TaskType", "region_masks"]


class Split(StrEnum):
    """The named splits of a dataset."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"
    EXTERNAL = "external"

    @classmethod
    def parse(cls, value: Split | str) -> Split:
        """``Split(value)``, or a :class:`ConfigError` naming the choices.

        Raises:
            ConfigError: If ``value`` names no split.
        """
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(s.value for s in cls)
            raise ConfigError(f"split must be one of {choices}; got {value!r}") from None


SPLIT_NAMES: tuple[str, ...] = tuple(s.value for s in Split)

Target = str | float | list[str]


class TaskType(StrEnum):
    """What a model trained on the dataset predicts."""

    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class Case(BaseModel):
    """One imaging case of one patient.

    The image is either ``image`` (one file whose channels follow
    :attr:`Dataset.channels`) or ``channels`` (one file per channel name).

    Args:
        patient_id: The patient; all cases of a patient stay in one split.
        case_id: Unique within the dataset.
        image: One multi-channel (or single-channel) image file.
        channels: Channel name → file, for datasets storing one file per channel.
        label: Segmentation file (segmentation tasks).
        target: Class name(s) or value (classification / regression tasks).
        clinical: Clinical columns (age, sex, site, grade, ...).
    """

    model_config = ConfigDict(extra="forbid")

    patient_id: str
    case_id: str
    image: Path | None = None
    channels: dict[str, Path] = Field(default_factory=dict)
    label: Path | None = None
    target: Target | None = None
    clinical: dict[str, Any] = Field(default_factory=dict)

    @field_validator("patient_id", "case_id", mode="before")
    @classmethod
    def _non_empty_id(cls, value: Any) -> str:
        text = str(value).strip() if value is not None else ""
        if not text:
            raise ValueError("ids must be non-empty strings")
        return text

    @model_validator(mode="after")
    def _one_image_source(self) -> Self:
        if (self.image is None) == (not self.channels):
            raise ValueError(
                f"case {self.case_id!r}: give either 'image' (one file) or 'channels' "
                "(one file per channel), not both and not neither"
            )
        return self

    def files(self) -> list[Path]:
        """Every file the case refers to (image or channel files, then label)."""
        found = [self.image] if self.image is not None else list(self.channels.values())
        return found + ([self.label] if self.label is not None else [])


class Splits(BaseModel):
    """Case ids per split; ``folds[i]`` holds the validation case ids of fold ``i``.

    Folds partition ``train`` (cross-validation inside the development set).
    """

    model_config = ConfigDict(extra="forbid")

    train: list[str] = Field(default_factory=list)
    validation: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)
    external: list[str] = Field(default_factory=list)
    folds: list[list[str]] = Field(default_factory=list)
    seed: int | None = None
    stratify: str | None = None

    def of(self, case_id: str) -> list[str]:
        """Names of the splits listing ``case_id`` (normally zero or one)."""
        return [name for name in SPLIT_NAMES if case_id in getattr(self, name)]

    def all_ids(self) -> Iterator[str]:
        for name in SPLIT_NAMES:
            yield from getattr(self, name)
        for fold in self.folds:
            yield from fold


class Dataset(BaseModel):
    """A dataset manifest: cases, channels, declared labels and regions, splits.

    Raises:
        pydantic.ValidationError: (a ``ValueError``) if case ids repeat, a region
            names an undeclared label, a split names an unknown case, or a
            segmentation dataset has no background label 0.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    task: TaskType = TaskType.SEGMENTATION
    channels: list[str] = Field(default_factory=lambda: ["image"])
    labels: dict[int, str] = Field(default_factory=dict)
    regions: dict[str, list[int]] = Field(default_factory=dict)
    classes: list[str] = Field(default_factory=list)
    cases: list[Case] = Field(default_factory=list)
    splits: Splits = Field(default_factory=Splits)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels must be unique names; got {self.channels}")
        if self.task is TaskType.SEGMENTATION and self.labels and 0 not in self.labels:
            raise ValueError(f"labels must declare 0 (background); got {sorted(self.labels)}")
        for region, members in self.regions.items():
            unknown = sorted(set(members) - set(self.labels))
            if not members or unknown or 0 in members:
                raise ValueError(
                    f"region {region!r} = {members}: a region is a non-empty union of "
                    f"declared foreground labels {sorted(set(self.labels) - {0})}"
                )
        ids = [c.case_id for c in self.cases]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"case ids must be unique; repeated: {dupes[:5]}")
        unknown_ids = sorted(set(self.splits.all_ids()) - set(ids))
        if unknown_ids:
            raise ValueError(f"splits name case ids not in the dataset: {unknown_ids[:5]}")
        return self

    # -- look-ups -------------------------------------------------------------------
    def case(self, case_id: str) -> Case:
        """The case with ``case_id``.

        Raises:
            DatasetError: If there is none.
        """
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise DatasetError(f"dataset {self.name!r} has no case {case_id!r}")

    def split_cases(self, split: Split | str) -> list[Case]:
        """The cases of ``split`` (one of ``train``, ``validation``, ``test``, ``external``).

        Raises:
            ConfigError: If ``split`` names no split.
        """
        return [self.case(i) for i in getattr(self.splits, Split.parse(split).value)]

    def segmentation_regions(self) -> dict[str, list[int]]:
        """The regions a model is trained and scored on: the declared ones, else the
        brain-tumour regions when the label names say so, else one per foreground label
        (:func:`medai.data.semantics.resolve_regions`)."""
        return resolve_regions(self.labels, self.regions)

    # -- images ---------------------------------------------------------------------
    def load_case_image(self, case: Case) -> ScalarImage:
        """The case's image with channels in :attr:`channels` order.

        Raises:
            DatasetError: If a file or channel is missing, the channel count is wrong, or the
                channel files are not on one grid.
            ImageReadError: If a file cannot be read.
        """
        image: ScalarImage
        if case.image is not None:
            image = read_image(_existing(case, case.image, "image"))
            if image.num_channels != len(self.channels):
                raise DatasetError(
                    f"case {case.case_id!r}: {case.image} has {image.num_channels} channels; "
                    f"the dataset declares {len(self.channels)} ({', '.join(self.channels)})"
                )
        else:
            image = self._stack_channels(case)
        image.meta.update(case_id=case.case_id, channels=list(self.channels))
        return image

    def _stack_channels(self, case: Case) -> ScalarImage:
        missing = [c for c in self.channels if c not in case.channels]
        if missing:
            raise DatasetError(f"case {case.case_id!r}: missing channel(s) {missing}")
        parts: list[ScalarImage] = [
            read_image(_existing(case, case.channels[name], f"channel {name!r}"))
            for name in self.channels
        ]
        for name, part in zip(self.channels, parts, strict=True):
            if not part.same_grid(parts[0]):
                raise DatasetError(
                    f"case {case.case_id!r}: channel {name!r} is not on the grid of "
                    f"{self.channels[0]!r} (shape {part.shape} vs {parts[0].shape} or "
                    "affine differs); resample it first"
                )
        array = np.concatenate([p.array for p in parts], axis=0)
        return ScalarImage(array, parts[0].affine, meta={"source": str(case.channels)})

    def load_case_label(self, case: Case) -> LabelMap | None:
        """The case's segmentation, or ``None`` when it has none.

        Raises:
            DatasetError: If the label file named in the manifest does not exist.
        """
        if case.label is None:
            return None
        label = read_label(_existing(case, case.label, "label"))
        label.meta["case_id"] = case.case_id
        return label

    # -- persistence ----------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the manifest (YAML unless ``path`` ends in ``.json``), atomically."""
        path = Path(path)
        root = path.resolve().parent
        data = self.model_dump(mode="json")
        for case in data["cases"]:
            _map_paths(case, lambda p: _relative(p, root))
        if path.suffix.lower() == ".json":
            text = json.dumps(data, indent=1)
        else:
            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
        atomic_write_text(path, text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        """Read a manifest written by :meth:`save` (or by hand).

        Raises:
            DatasetError: If the file is missing, not YAML/JSON, or not a valid manifest.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "dataset.yaml"
        if not path.is_file():
            raise DatasetError(f"{path}: manifest not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise DatasetError(f"{path}: not YAML/JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise DatasetError(f"{path}: a manifest is a mapping with 'name' and 'cases'")
        root = path.resolve().parent
        for case in data.get("cases") or []:
            if isinstance(case, dict):
                _map_paths(case, lambda p: str((root / p).resolve()))
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise DatasetError(
                f"{path}: invalid manifest: {validation_summary(exc)}; fix the file"
            ) from exc


def _existing(case: Case, path: Path, what: str) -> Path:
    """``path`` if it exists, else a :class:`DatasetError` naming the case and the fix."""
    if not Path(path).exists():
        raise DatasetError(
            f"case {case.case_id!r}: {what} file {path} does not exist; fix the path in the "
            "manifest (or run `medai data check` to list every missing file)"
        )
    return Path(path)


def _relative(path: str, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive on Windows
        return path


def _map_paths(case: dict[str, Any], fn: Any) -> None:
    for key in ("image", "label"):
        if case.get(key):
            case[key] = fn(case[key])
    case["channels"] = {k: fn(v) for k, v in (case.get("channels") or {}).items()}


def region_masks(label: LabelMap, regions: Mapping[str, list[int]]) -> dict[str, LabelMap]:
    """One binary :class:`LabelMap` per region (a region is a union of label values).

    Example:
        >>> lab = LabelMap(np.array([[0, 1], [2, 3]]))
        >>> int(region_masks(lab, {"TC": [2, 3]})["TC"].array.sum())
        2
    """
    if not isinstance(label, LabelMap):
        raise TypeError(f"label must be a LabelMap; got {type(label).__name__}")
    out = {}
    for name, members in regions.items():
        if not members:
            raise ValueError(f"region {name!r} has no label values")
        mask = np.isin(label.array, np.asarray(members)).astype(np.uint8)
        out[name] = label.with_array(mask)
    return out
