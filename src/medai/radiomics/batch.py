"""Radiomics over a whole dataset: one row per (case, region, channel), in parallel.

:func:`extract_dataset` reads each case's image and mask (the dataset's reference
labels or a folder of predicted label maps), builds one binary mask per region (a union
of labels, e.g. WT = {1, 2, 3}) and extracts IBSI features for every chosen channel.
An empty region gives a row with volume 0 and the other features NaN; a case that
cannot be read gives rows of NaN features; ``status`` says why, and the batch never
stops on one bad case.

Example:
    >>> ds = Dataset.load("cohort/dataset.yaml")  # doctest: +SKIP
    >>> df = extract_dataset(ds, split="test", regions=("WT", "ET"))  # doctest: +SKIP
    >>> write_features_csv(df, "features.csv")  # doctest: +SKIP
    >>> X = wide_table(df)  # one row per case, columns WT_t1gd_morph_volume, ...  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medai.data.manifest import Case, Dataset, Splits
from medai.errors import ConfigError
from medai.fsutil import atomic_path, atomic_write_text
from medai.image import LabelMap, ScalarImage
from medai.io import read_label
from medai.radiomics.catalogue import feature_catalogue
from medai.radiomics.extract import extract_features, features_table
from medai.radiomics.settings import Family, RadiomicsSettings

__all__ = [
    "ID_COLUMNS",
    "STATUS_EMPTY",
    "STATUS_OK",
    "ZERO_WHEN_EMPTY",
    "MaskSource",
    "extract_dataset",
    "find_prediction",
    "wide_table",
    "write_features_csv",
]

logger = logging.getLogger(__name__)

#: Identifier columns leading every batch table, in order.
ID_COLUMNS: tuple[str, ...] = (
    "case_id",
    "patient_id",
    "split",
    "region",
    "channel",
    "mask_source",
    "status",
)
STATUS_OK = "ok"
STATUS_EMPTY = "empty mask"
#: Size features that are 0 for an empty region (every other feature is undefined: NaN).
ZERO_WHEN_EMPTY: tuple[str, ...] = (
    "morph_volume",
    "morph_vol_approx",
    "morph_area_mesh",
    "morph_integ_int",
)

Progress = Callable[[int, int], None]


class MaskSource(StrEnum):
    """Where the region masks come from."""

    REFERENCE = "reference"
    PREDICTED = "predicted"


@dataclass(frozen=True)
class _CaseJob:
    """Everything one worker needs for one case (picklable)."""

    dataset: Dataset
    case: Case
    split: str
    mask_path: Path | None
    mask_source: MaskSource
    regions: dict[str, list[int]]
    channels: dict[str, int]
    settings: RadiomicsSettings


def find_prediction(
    predictions_dir: str | Path, case_id: str, *, split: str | None = None
) -> Path | None:
    """The predicted label map of ``case_id`` in ``predictions_dir``, or ``None``.

    Looks for ``<case_id>.nii.gz`` (``medai predict``), ``<split>/<case_id>.nii.gz``
    (``medai evaluate``), ``<case_id>.nii`` and ``<case_id>/labels.nii.gz``.
    """
    root = Path(predictions_dir)
    candidates = [root / f"{case_id}.nii.gz"]
    if split:
        candidates.append(root / split / f"{case_id}.nii.gz")
    candidates += [root / f"{case_id}.nii", root / case_id / "labels.nii.gz"]
    return next((c for c in candidates if c.is_file()), None)


def extract_dataset(
    dataset: Dataset,
    *,
    masks: MaskSource | str = MaskSource.REFERENCE,
    predictions_dir: str | Path | None = None,
    split: str | None = None,
    regions: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    settings: RadiomicsSettings | None = None,
    workers: int = 2,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """IBSI features of every (case, region, channel) of a dataset, as a tidy table.

    Args:
        dataset: The dataset manifest.
        masks: ``"reference"`` (the dataset's label files) or ``"predicted"`` (label
            maps in ``predictions_dir`` named ``<case_id>.nii.gz``).
        predictions_dir: Folder of predicted label maps (``masks="predicted"`` only);
            see :func:`find_prediction` for the names looked for.
        split: Only the cases of this split (``train``, ``validation``, ``test``,
            ``external``); default every case.
        regions: Region names of ``dataset.regions`` (e.g. ``("WT", "TC", "ET")``);
            default all of them, or one region per declared label if none are declared.
        channels: Channel names (case-insensitive); default every channel.
        settings: Extraction settings; default :class:`RadiomicsSettings()`.
        workers: Processes working on cases in parallel; 1 runs in this process.
        progress: Called as ``progress(done, total)`` after each case.

    Returns:
        One row per ROI: :data:`ID_COLUMNS` (``split`` is ``""`` for a case in no
        split), the feature columns (IBSI metadata in ``df.attrs["features"]``), then
        the case's clinical columns. Rows of an empty
        region have ``status == "empty mask"``, size features (:data:`ZERO_WHEN_EMPTY`)
        0 and the others NaN (an absent enhancing tumour has volume 0); a case that fails
        gets ``status`` ``"failed: <reason>"`` on each of its rows.

    Raises:
        ConfigError: On an unknown mask source, split, region or channel, a bad
            ``workers``, or ``masks="predicted"`` without an existing ``predictions_dir``.
    """
    source = _mask_source(masks, predictions_dir)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1; got {workers!r}")
    s = settings or RadiomicsSettings()
    region_map = _select_regions(dataset, regions)
    channel_map = _select_channels(dataset, channels)
    jobs = [
        _CaseJob(
            dataset=_single_case(dataset, case),
            case=case,
            split=name,
            mask_path=_mask_path(case, name, source, predictions_dir),
            mask_source=source,
            regions=region_map,
            channels=channel_map,
            settings=s,
        )
        for case, name in _cases(dataset, split)
    ]
    results = _run_jobs(jobs, workers=workers, progress=progress)
    rows = [row for case_rows in results for row in case_rows]
    table = _assemble(rows, jobs, s)
    table.attrs.update(
        dataset=dataset.name,
        mask_source=source.value,
        settings=s.model_dump(mode="json"),
    )
    logger.info("radiomics: %d rows from %d cases", len(table), len(jobs))
    return table


# -- argument checks ---------------------------------------------------------------------
def _mask_source(masks: MaskSource | str, predictions_dir: str | Path | None) -> MaskSource:
    try:
        source = MaskSource(masks)
    except ValueError:
        raise ConfigError(
            f"masks must be one of {[m.value for m in MaskSource]}; got {masks!r}"
        ) from None
    if source is MaskSource.PREDICTED:
        if predictions_dir is None:
            raise ConfigError(
                "masks='predicted' needs predictions_dir: the folder of <case_id>.nii.gz "
                "label maps written by `medai predict`"
            )
        if not Path(predictions_dir).is_dir():
            raise ConfigError(f"predictions_dir {str(predictions_dir)!r} is not a folder")
    return source


def _select_regions(dataset: Dataset, regions: Sequence[str] | None) -> dict[str, list[int]]:
    available = dataset.segmentation_regions()  # the data layer's one region rule
    if not available:
        available = {"foreground": []}  # every label > 0
    if regions is None:
        return available
    if isinstance(regions, str):
        regions = [regions]
    unknown = [r for r in regions if r not in available]
    if unknown or not regions:
        raise ConfigError(
            f"regions {list(regions)}: unknown {unknown}; dataset {dataset.name!r} has "
            f"regions {list(available)}"
        )
    return {r: available[r] for r in dict.fromkeys(regions)}


def _select_channels(dataset: Dataset, channels: Sequence[str] | None) -> dict[str, int]:
    if channels is None:
        return {name: i for i, name in enumerate(dataset.channels)}
    if isinstance(channels, str):
        channels = [channels]
    lower = {name.lower(): (name, i) for i, name in enumerate(dataset.channels)}
    chosen: dict[str, int] = {}
    for wanted in channels:
        if wanted.lower() not in lower:
            raise ConfigError(
                f"channel {wanted!r} is not in dataset {dataset.name!r}; "
                f"choose from {dataset.channels}"
            )
        name, index = lower[wanted.lower()]
        chosen[name] = index
    if not chosen:
        raise ConfigError(f"channels is empty; choose from {dataset.channels}")
    return chosen


def _cases(dataset: Dataset, split: str | None) -> list[tuple[Case, str]]:
    if split is not None:
        return [(case, split) for case in dataset.split_cases(split)]
    return [(case, ",".join(dataset.splits.of(case.case_id))) for case in dataset.cases]


def _single_case(dataset: Dataset, case: Case) -> Dataset:
    """A copy of the manifest holding only ``case`` (small to send to a worker)."""
    return dataset.model_copy(update={"cases": [case], "splits": Splits()})


def _mask_path(
    case: Case, split: str, source: MaskSource, predictions_dir: str | Path | None
) -> Path | None:
    if source is MaskSource.REFERENCE:
        return case.label
    for name in split.split(",") if split else [None]:
        found = find_prediction(predictions_dir or ".", case.case_id, split=name)
        if found is not None:
            return found
    return None


# -- per case (runs in a worker) ---------------------------------------------------------
def _case_rows(job: _CaseJob) -> list[dict[str, Any]]:
    """Rows of one case; never raises (failures become ``status``)."""
    base = _id_row(job)
    try:
        image, label = _load(job)
    except Exception as exc:
        reason = f"failed: {type(exc).__name__}: {exc}"
        logger.warning("radiomics: case %s: %s", job.case.case_id, reason)
        return [
            {**base, "region": r, "channel": c, "status": reason}
            for r in job.regions
            for c in job.channels
        ]
    rows = []
    for region, members in job.regions.items():
        mask = label.with_array(_region_array(label, members))
        empty = not mask.array.any()
        for channel, index in job.channels.items():
            row: dict[str, Any] = {**base, "region": region, "channel": channel}
            row.update(_roi_values(image.channel(index), mask, empty, job.settings))
            rows.append(row)
    return rows


def _id_row(job: _CaseJob) -> dict[str, Any]:
    return {
        "case_id": job.case.case_id,
        "patient_id": job.case.patient_id,
        "split": job.split,
        "mask_source": job.mask_source.value,
    }


def _load(job: _CaseJob) -> tuple[ScalarImage, LabelMap]:
    if job.mask_path is None:
        what = "reference label" if job.mask_source is MaskSource.REFERENCE else "prediction"
        raise FileNotFoundError(f"no {what} file for case {job.case.case_id!r}")
    image = job.dataset.load_case_image(job.case)
    label = read_label(job.mask_path)
    return image, label


def _region_array(label: LabelMap, members: list[int]) -> np.ndarray:
    if not members:
        return (label.array > 0).astype(np.uint8)
    return np.isin(label.array, np.asarray(members)).astype(np.uint8)


def _roi_values(
    image: ScalarImage, mask: LabelMap, empty: bool, settings: RadiomicsSettings
) -> dict[str, Any]:
    if empty:
        if Family.MORPHOLOGY not in settings.families:
            return {"status": STATUS_EMPTY}
        return {"status": STATUS_EMPTY, **dict.fromkeys(ZERO_WHEN_EMPTY, 0.0)}
    try:
        values: dict[str, Any] = dict(extract_features(image, mask, settings=settings))
    except Exception as exc:
        return {"status": f"failed: {type(exc).__name__}: {exc}"}
    return {"status": STATUS_OK, **values}


# -- scheduling and assembly -------------------------------------------------------------
def _run_jobs(
    jobs: list[_CaseJob], *, workers: int, progress: Progress | None
) -> list[list[dict[str, Any]]]:
    total = len(jobs)
    results: list[list[dict[str, Any]]] = [[] for _ in jobs]
    if workers == 1 or total <= 1:
        for i, job in enumerate(jobs):
            results[i] = _case_rows(job)
            if progress is not None:
                progress(i + 1, total)
        return results
    with ProcessPoolExecutor(max_workers=min(workers, total)) as pool:
        futures: dict[Future[list[dict[str, Any]]], int] = {
            pool.submit(_case_rows, job): i for i, job in enumerate(jobs)
        }
        for done, future in enumerate(as_completed(futures), start=1):
            i = futures[future]
            try:
                results[i] = future.result()
            except Exception as exc:
                results[i] = _failed_rows(jobs[i], f"failed: {type(exc).__name__}: {exc}")
            if progress is not None:
                progress(done, total)
    return results


def _failed_rows(job: _CaseJob, reason: str) -> list[dict[str, Any]]:
    base = _id_row(job)
    return [
        {**base, "region": r, "channel": c, "status": reason}
        for r in job.regions
        for c in job.channels
    ]


def _assemble(
    rows: list[dict[str, Any]], jobs: list[_CaseJob], settings: RadiomicsSettings
) -> pd.DataFrame:
    features = _feature_columns(rows, settings)
    clinical_of = {job.case.case_id: job.case.clinical for job in jobs}
    clinical_cols = list(
        dict.fromkeys(
            k
            for job in jobs
            for k in job.case.clinical
            if k not in ID_COLUMNS and k not in features
        )
    )
    records = []
    for row in rows:
        record: dict[str, Any] = {c: row.get(c) for c in ID_COLUMNS}
        record.update({f: row.get(f, math.nan) for f in features})
        clinical = clinical_of[row["case_id"]]
        record.update({c: clinical.get(c) for c in clinical_cols})
        records.append(record)
    if not records:
        empty = pd.DataFrame(columns=[*ID_COLUMNS, *features])
        empty.attrs["features"] = {name: _ibsi_meta(name) for name in features}
        return empty
    table = features_table(records)
    ordered = [*ID_COLUMNS, *features, *clinical_cols]
    attrs = dict(table.attrs)
    table = table[ordered]
    table.attrs.update(attrs)
    table[features] = table[features].astype(np.float64)
    return table


def _feature_columns(rows: list[dict[str, Any]], settings: RadiomicsSettings) -> list[str]:
    """Feature columns in catalogue order: those produced, else those the settings ask for."""
    catalogue = feature_catalogue(settings.aggregations)
    produced = {k for row in rows if row.get("status") == STATUS_OK for k in row}
    names = [n for n in catalogue if n in produced]
    if names:
        return names
    families = set(settings.families)
    return [n for n, info in catalogue.items() if info.family in families]


# -- outputs -----------------------------------------------------------------------------
def wide_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per case with columns ``<region>_<channel>_<feature>``, for modelling.

    Args:
        df: A table from :func:`extract_dataset`.

    Returns:
        ``case_id``, ``patient_id``, ``split``, ``mask_source``, the feature columns
        (region, then channel, then catalogue order), then the clinical columns. A ROI
        that failed or was empty gives NaN. ``attrs["features"]`` maps each feature
        column to its IBSI metadata plus ``feature``, ``region`` and ``channel``.

    Raises:
        ValueError: If ``df`` lacks the identifier columns or repeats a ROI.
    """
    missing = [c for c in ID_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"df is not a radiomics batch table: columns {missing} missing")
    if df.duplicated(["case_id", "region", "channel"]).any():
        raise ValueError("df repeats a (case_id, region, channel) ROI; one row per ROI expected")
    catalogue = feature_catalogue()
    features = [c for c in df.columns if c in catalogue]
    extra = [c for c in df.columns if c not in catalogue and c not in ID_COLUMNS]
    left = df.groupby("case_id", sort=False)[["patient_id", "split", "mask_source", *extra]].first()
    pivot = df.pivot(index="case_id", columns=["region", "channel"], values=features)
    blocks: dict[str, Any] = {}
    meta: dict[str, dict[str, Any]] = {}
    for region in dict.fromkeys(df["region"]):
        for channel in dict.fromkeys(df["channel"]):
            for feature in features:
                key = (feature, region, channel)
                name = f"{region}_{channel}_{feature}"
                blocks[name] = pivot[key] if key in pivot.columns else math.nan
                meta[name] = {**_ibsi_meta(feature), "region": region, "channel": channel}
    wide = pd.DataFrame(blocks, index=pivot.index).reindex(left.index)
    base = left[["patient_id", "split", "mask_source"]]
    out = pd.concat([base, wide, left[extra]], axis=1).reset_index()
    out.attrs.update(df.attrs)
    out.attrs["features"] = meta
    return out


def _ibsi_meta(name: str) -> dict[str, Any]:
    info = feature_catalogue()[name]
    return {
        "feature": name,
        "ibsi_code": info.ibsi_code,
        "ibsi_name": info.ibsi_name,
        "family": info.family.value,
        "family_code": info.family_code,
        "aggregation": info.aggregation,
        "aggregation_code": info.aggregation_code,
    }


def write_features_csv(df: pd.DataFrame, path: str | Path) -> tuple[Path, Path]:
    """Write ``df`` as CSV and its IBSI metadata as a JSON sidecar, both atomically.

    The sidecar ``<stem>.ibsi.json`` maps each feature column (tidy or wide) to its
    IBSI code, family and aggregation, and records the extraction settings when
    ``df.attrs`` holds them.

    Returns:
        ``(csv_path, sidecar_path)``.

    Raises:
        ValueError: If ``path`` does not end in ``.csv``.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"path must end in .csv; got {path.name!r}")
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    catalogue = feature_catalogue()
    known = df.attrs.get("features", {})
    features = {
        str(name): _ibsi_meta(name) if name in catalogue else dict(known[name])
        for name in df.columns
        if name in catalogue or name in known
    }
    meta = {k: df.attrs[k] for k in ("dataset", "mask_source", "settings") if k in df.attrs}
    sidecar = path.with_name(f"{path.stem}.ibsi.json")
    atomic_write_text(sidecar, json.dumps({**meta, "features": features}, indent=1) + "\n")
    return path, sidecar
