"""Importers for volumetric segmentation layouts: MSD, BraTS 2021, nnU-Net raw.

Importers read folder structure and JSON only; they never open an image, so a
large dataset imports in seconds. Whether the label files agree with the declared
labels is checked by :func:`medai.data.check_dataset` (kind ``label_values``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pandas as pd
from pydantic import ValidationError

from medai.data.manifest import Case, Dataset, TaskType
from medai.data.semantics import BRATS2021_LABELS, BRATS2021_REGIONS, brain_tumour_regions
from medai.errors import DatasetError, validation_summary

__all__ = [
    "attach_clinical",
    "import_brats",
    "import_msd",
    "import_nnunet_raw",
]

logger = logging.getLogger(__name__)

BRATS2021_CHANNELS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
_NIFTI_ENDINGS = (".nii.gz", ".nii")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def typed_import_errors(importer: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn what a malformed input file makes the parsers raise into a :class:`DatasetError`.

    A manifest field pydantic rejects, a CSV pandas cannot parse, or bytes that are not
    text all become one message naming the file (the importer's first argument), the
    problem and the fix; programming errors pass through untouched.
    """

    @functools.wraps(importer)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        where = args[0] if args else next(iter(kwargs.values()), "?")
        try:
            return importer(*args, **kwargs)
        except ValidationError as exc:
            raise DatasetError(
                f"{where}: not a valid dataset: {validation_summary(exc)}; fix the file"
            ) from exc
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise DatasetError(f"{where}: not a readable table ({exc}); fix the CSV") from exc
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{where}: not a text file ({exc.reason}); wrong file?") from exc

    return wrapper


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return data


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV file as a table.

    Raises:
        DatasetError: If the file is not a readable CSV table.
    """
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"{path}: not a readable CSV table ({exc}); fix or re-export it"
        ) from exc


def _stem(path: Path) -> str:
    name = path.name
    for ending in (*_NIFTI_ENDINGS, ".nrrd", ".mha", ".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return path.stem


def _clean(value: Any) -> Any:
    """Clinical cell → plain YAML value (NaN → None, numpy scalars → Python)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):
        value = value.item()
        if isinstance(value, float) and math.isnan(value):
            return None
    return value


def _case_column(table: pd.DataFrame, case_ids: set[str], skip: str) -> str | None:
    """``case_id`` if present, else the column (not ``skip``) naming the most case ids,
    provided it names at least half of them (so a stray numeric column never matches)."""
    if "case_id" in table.columns:
        return "case_id"
    best, overlap = None, 0
    for column in table.columns:
        if column == skip:
            continue
        hits = len(case_ids & {str(v) for v in table[column]})
        if hits > overlap:
            best, overlap = str(column), hits
    return best if overlap * 2 >= len(case_ids) else None


def attach_clinical(
    cases: list[Case], csv_path: str | Path, *, patient_column: str = "patient_id"
) -> list[Case]:
    """Join a clinical CSV onto cases.

    A row belongs to a case when a column holds the case id (``case_id``, or any
    column whose values are case ids, e.g. ``msd_case_id``); otherwise when
    ``patient_column`` holds the case's patient (or case) id. A row matched by case
    id also sets the case's patient id from ``patient_column``, so several scans of
    one patient stay together. The remaining columns go into ``case.clinical``;
    unmatched cases keep what they had and are logged.

    Raises:
        DatasetError: If no column of the CSV matches any case.
    """
    csv_path = Path(csv_path)
    table = _read_csv(csv_path)
    case_col = _case_column(table, {c.case_id for c in cases}, patient_column)
    records = table.to_dict(orient="records")
    by_case = {str(r[case_col]): r for r in records} if case_col else {}
    by_patient = {str(r[patient_column]): r for r in records} if patient_column in table else {}
    if not by_case and not by_patient:
        raise DatasetError(
            f"{csv_path}: no column names the cases; add {patient_column!r} or 'case_id' "
            f"(columns are {list(table.columns)})"
        )
    out, unmatched = [], []
    for case in cases:
        row = by_case.get(case.case_id)
        update: dict[str, Any] = {}
        if row is not None and _clean(row.get(patient_column)) is not None:
            update["patient_id"] = str(row[patient_column])
        row = row or by_patient.get(case.patient_id) or by_patient.get(case.case_id)
        if row is None:
            unmatched.append(case.case_id)
            out.append(case)
            continue
        extra = {str(k): _clean(v) for k, v in row.items() if k not in (patient_column, case_col)}
        update["clinical"] = {**case.clinical, **extra}
        out.append(case.model_copy(update=update))
    if unmatched:
        logger.warning(
            "%s: no clinical row for %d case(s), e.g. %s", csv_path, len(unmatched), unmatched[:3]
        )
    return out


def _maybe_clinical(cases: list[Case], folder: Path) -> list[Case]:
    """Join ``clinical.csv`` from the dataset folder, or else from its parent."""
    for csv in (folder / "clinical.csv", folder.parent / "clinical.csv"):
        if csv.is_file():
            return attach_clinical(cases, csv)
    return cases


# -- Medical Segmentation Decathlon ---------------------------------------------------
@typed_import_errors
def import_msd(folder: str | Path) -> Dataset:
    """Import a Medical Segmentation Decathlon task folder (``dataset.json``).

    Channel order comes from ``modality`` (keys "0", "1", ... in numeric order),
    label numbering from ``labels``. Cases are the ``training`` entries (``imagesTs``
    has no labels and is not imported; an entry without ``label`` is an unlabelled
    case). A ``clinical.csv`` beside ``dataset.json`` (or one folder up) is joined with
    :func:`attach_clinical`. Regions are set only when the label names are the MSD
    brain-tumour labels (:func:`medai.data.semantics.brain_tumour_regions`).

    Raises:
        DatasetError: If ``dataset.json`` is missing or malformed.
    """
    folder = Path(folder).resolve()
    where = folder / "dataset.json"
    meta = _read_json(where)
    modality = meta.get("modality") or {"0": "image"}
    labels_raw = meta.get("labels") or {}
    try:
        if not isinstance(modality, dict) or not isinstance(labels_raw, dict):
            raise TypeError("not a mapping")
        channels = [str(modality[k]) for k in sorted(modality, key=int)]
        labels = {int(k): str(v) for k, v in labels_raw.items()}
    except (TypeError, ValueError) as exc:
        raise DatasetError(
            f"{where}: 'modality' and 'labels' must map integer keys (\"0\", \"1\", ...) to names"
        ) from exc
    training = meta.get("training") or []
    if not isinstance(training, list):
        raise DatasetError(f"{where}: 'training' must be a list of {{image, label}} entries")
    cases = [_msd_case(folder, entry, where) for entry in training]
    if not cases:
        raise DatasetError(f"{where}: 'training' lists no case")
    return Dataset(
        name=str(meta.get("name") or folder.name),
        description=str(meta.get("description") or ""),
        task=TaskType.SEGMENTATION,
        channels=channels,
        labels=labels,
        regions=brain_tumour_regions(labels) or {},
        cases=_maybe_clinical(cases, folder),
    )


def _msd_case(folder: Path, entry: Any, where: Path) -> Case:
    """One ``training`` entry: ``image`` required, ``label`` optional (an unlabelled case)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        raise DatasetError(
            f"{where}: training entry {entry!r} has no 'image' path; give each entry "
            '{"image": "./imagesTr/<case>.nii.gz", "label": "./labelsTr/<case>.nii.gz"}'
        )
    image = (folder / entry["image"]).resolve()
    label = (folder / entry["label"]).resolve() if entry.get("label") else None
    case_id = _stem(image)
    return Case(patient_id=case_id, case_id=case_id, image=image, label=label)


# -- BraTS 2021 -----------------------------------------------------------------------
def _find_nifti(folder: Path, prefix: str) -> Path | None:
    for ending in _NIFTI_ENDINGS:
        candidate = folder / f"{prefix}{ending}"
        if candidate.is_file():
            return candidate
    return None


@typed_import_errors
def import_brats(folder: str | Path) -> Dataset:
    """Import a BraTS 2021 folder: one sub-folder per case holding
    ``<case>_t1``, ``_t1ce``, ``_t2``, ``_flair`` and (training data) ``_seg`` NIfTIs.

    Labels 0, 1 NCR, 2 ED, 4 ET; regions WT {1, 2, 4}, TC {1, 4}, ET {4}. A channel
    file that is absent is still listed (at its expected path) so that
    :func:`check_dataset` reports it as a missing channel.

    Raises:
        DatasetError: If no case folder is found.
    """
    folder = Path(folder).resolve()
    cases = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not any(_find_nifti(sub, f"{sub.name}_{ch}") for ch in BRATS2021_CHANNELS):
            continue
        channels = {
            ch: _find_nifti(sub, f"{sub.name}_{ch}") or sub / f"{sub.name}_{ch}.nii.gz"
            for ch in BRATS2021_CHANNELS
        }
        label = _find_nifti(sub, f"{sub.name}_seg")
        cases.append(Case(patient_id=sub.name, case_id=sub.name, channels=channels, label=label))
    if not cases:
        raise DatasetError(
            f"{folder}: no BraTS case folders (expected <case>/<case>_flair.nii.gz, ...)"
        )
    return Dataset(
        name=folder.name,
        description="BraTS 2021 layout",
        task=TaskType.SEGMENTATION,
        channels=list(BRATS2021_CHANNELS),
        labels=dict(BRATS2021_LABELS),
        regions={k: list(v) for k, v in BRATS2021_REGIONS.items()},
        cases=_maybe_clinical(cases, folder),
    )


# -- nnU-Net v2 raw -------------------------------------------------------------------
def _nnunet_labels(raw: dict[str, Any], where: Path) -> tuple[dict[int, str], dict[str, list[int]]]:
    labels: dict[int, str] = {}
    regions: dict[str, list[int]] = {}
    for name, value in raw.items():
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            regions[str(name)] = sorted(int(v) for v in value)
        elif isinstance(value, int | str) and str(value).lstrip("-").isdigit():
            labels[int(value)] = str(name)
        else:
            raise DatasetError(f"{where}: label {name!r} has value {value!r}; need int or list")
    for members in regions.values():
        for value in members:
            labels.setdefault(value, f"label_{value}")
    if regions:  # region-based training: single labels become one-label regions too
        for value, name in labels.items():
            if value != 0 and name not in regions and not name.startswith("label_"):
                regions[name] = [value]
    return dict(sorted(labels.items())), regions


@typed_import_errors
def import_nnunet_raw(folder: str | Path) -> Dataset:
    """Import an nnU-Net v2 raw dataset folder (``dataset.json``, ``imagesTr``,
    ``labelsTr``; channel files ``<case>_<XXXX><file_ending>``).

    ``labels`` may be region-based (a name mapped to a list of values): those
    entries become :attr:`Dataset.regions`.

    Raises:
        DatasetError: If ``dataset.json`` lacks ``channel_names``/``labels`` or no case
            is found.
    """
    folder = Path(folder).resolve()
    where = folder / "dataset.json"
    meta = _read_json(where)
    names, raw_labels = meta.get("channel_names"), meta.get("labels")
    if not isinstance(names, dict) or not names or not isinstance(raw_labels, dict):
        raise DatasetError(
            f"{where}: nnU-Net needs 'channel_names' ({{\"0\": \"T2\", ...}}) and 'labels' "
            '({"background": 0, ...}) mappings'
        )
    try:
        order = sorted(names, key=int)
    except ValueError as exc:
        raise DatasetError(
            f'{where}: \'channel_names\' keys must be integers "0", "1", ...'
        ) from exc
    channels = [str(names[k]) for k in order]
    ending = str(meta.get("file_ending", ".nii.gz"))
    labels, regions = _nnunet_labels(raw_labels, where)
    images_dir = folder / "imagesTr"
    suffix0 = f"_{int(order[0]):04d}{ending}"
    ids = sorted(p.name[: -len(suffix0)] for p in images_dir.glob(f"*{suffix0}"))
    if not ids:
        raise DatasetError(f"{images_dir}: no files ending in {suffix0!r}")
    cases = []
    for case_id in ids:
        files = {
            name: images_dir / f"{case_id}_{int(k):04d}{ending}"
            for k, name in zip(order, channels, strict=True)
        }
        label = folder / "labelsTr" / f"{case_id}{ending}"
        cases.append(
            Case(
                patient_id=case_id,
                case_id=case_id,
                channels=files,
                label=label if label.is_file() else None,
            )
        )
    return Dataset(
        name=str(meta.get("name") or folder.name),
        description=str(meta.get("description") or ""),
        channels=channels,
        labels=labels,
        regions=regions,
        cases=_maybe_clinical(cases, folder),
    )
