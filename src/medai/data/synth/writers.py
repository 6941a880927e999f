"""Writing synthetic cases: MSD Task01_BrainTumour, BraTS 2021, DICOM MR, clinical table.

MSD: ``imagesTr/BRATS_001.nii.gz`` (4D, channels FLAIR, T1w, t1gd, T2w on the last
axis), ``labelsTr/BRATS_001.nii.gz`` (0 background, 1 oedema, 2 non-enhancing tumour
and necrosis, 3 enhancing tumour) and ``dataset.json``.
BraTS 2021: ``BraTS2021_00001/BraTS2021_00001_{t1,t1ce,t2,flair,seg}.nii.gz`` with
labels 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing tumour.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medai.data.synth.clinical import (
    SurvivalModel,
    draw_survival,
    survival_covariates,
)
from medai.data.synth.cohort import MSD_CHANNELS, SyntheticCase
from medai.fsutil import atomic_path, atomic_write_text
from medai.image import LabelMap

__all__ = [
    "brats_name",
    "msd_name",
    "write_brats_case",
    "write_clinical",
    "write_dicom_case",
    "write_msd_case",
    "write_msd_dataset_json",
]

MSD_DIR = "Task01_BrainTumour"
BRATS_DIR = "BraTS2021"
#: BraTS file suffix -> index into the MSD channel order (FLAIR, T1w, t1gd, T2w).
BRATS_CHANNELS = {"t1": 1, "t1ce": 2, "t2": 3, "flair": 0}
CLINICAL_COLUMNS = (
    "patient_id",
    "age",
    "sex",
    "site",
    "grade",
    "survival_days",
    "event",
    "wt_ml",
    "tc_ml",
    "et_ml",
    "ncr_ml",
    "atrophy",
    "msd_case_id",
    "brats_case_id",
)


def _scanner_integers(array: np.ndarray) -> np.ndarray:
    """Intensities rounded to int16, as scanners store them (half the bytes of float32)."""
    info = np.iinfo(np.int16)
    return np.clip(np.round(array), info.min, info.max).astype(np.int16)


def msd_name(index: int) -> str:
    return f"BRATS_{index + 1:03d}"


def brats_name(index: int) -> str:
    return f"BraTS2021_{index + 1:05d}"


def write_msd_case(case: SyntheticCase, root: str | Path) -> tuple[Path, Path]:
    """Write one case's 4D image and label into ``root/Task01_BrainTumour``."""
    from medai.io import write_nifti

    base = Path(root) / MSD_DIR
    name = f"{msd_name(case.index)}.nii.gz"
    image = write_nifti(
        case.image.with_array(_scanner_integers(case.image.array)), base / "imagesTr" / name
    )
    label = write_nifti(
        case.label.with_array(case.label.array.astype(np.uint8)), base / "labelsTr" / name
    )
    return image, label


def write_msd_dataset_json(root: str | Path, cases: int) -> Path:
    """Write ``dataset.json`` listing ``cases`` training cases, atomically."""
    names = [msd_name(i) for i in range(cases)]
    doc: dict[str, Any] = {
        "name": "BRATS",
        "description": "Synthetic gliomas (medai synth glioma), BraTS-like",
        "reference": "medai synthetic cohort; anatomy: MNI ICBM152 2009 (nilearn)",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0",
        "tensorImageSize": "4D",
        "modality": {str(i): c for i, c in enumerate(MSD_CHANNELS)},
        "labels": {
            "0": "background",
            "1": "edema",
            "2": "non-enhancing tumor",
            "3": "enhancing tumour",
        },
        "numTraining": cases,
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names
        ],
        "test": [],
    }
    path = Path(root) / MSD_DIR / "dataset.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path


def brats_labels(case: SyntheticCase) -> LabelMap:
    """MSD labels converted to BraTS 2021 numbering (1 NCR/NET, 2 ED, 4 ET)."""
    msd = case.label.array
    out = np.zeros(msd.shape, dtype=np.uint8)
    out[msd == 1] = 2
    out[msd == 2] = 1
    out[msd == 3] = 4
    return case.label.with_array(out)


def write_brats_case(case: SyntheticCase, root: str | Path) -> list[Path]:
    """Write one case as ``root/BraTS2021/BraTS2021_NNNNN/BraTS2021_NNNNN_*.nii.gz``."""
    from medai.io import write_nifti

    name = brats_name(case.index)
    folder = Path(root) / BRATS_DIR / name
    paths = []
    for suffix, channel in BRATS_CHANNELS.items():
        img = case.image.channel(channel)
        paths.append(
            write_nifti(
                img.with_array(_scanner_integers(img.array)), folder / f"{name}_{suffix}.nii.gz"
            )
        )
    paths.append(write_nifti(brats_labels(case), folder / f"{name}_seg.nii.gz"))
    return paths


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["medai-synth", *[str(p) for p in parts]]))


def write_dicom_case(case: SyntheticCase, root: str | Path, *, seed: int) -> list[Path]:
    """Write one MR series per contrast under ``root/dicom/<patient_id>/<contrast>/``.

    UIDs are derived from (seed, patient, series) so a rerun reproduces them.
    """
    from medai.io import write_dicom_series

    pid = str(case.clinical["patient_id"])
    study_uid = _uid(seed, pid, "study")
    date = dt.date(2020, 1, 1) + dt.timedelta(days=case.index)
    written: list[Path] = []
    for number, (suffix, channel) in enumerate(BRATS_CHANNELS.items(), start=1):
        written += write_dicom_series(
            case.image.channel(channel).with_array(case.image.array[channel : channel + 1]),
            Path(root) / "dicom" / pid / suffix,
            modality="MR",
            patient_id=pid,
            patient_name=f"Synthetic^{pid}",
            study_uid=study_uid,
            series_uid=_uid(seed, pid, suffix),
            series_number=number,
            series_description=suffix.upper(),
            study_description="Synthetic glioma MRI",
            study_date=date,
            extra={
                "PatientSex": case.clinical["sex"],
                "PatientAge": f"{int(case.clinical['age']):03d}Y",
            },
            overwrite=True,
        )
    return written


def write_clinical(
    rows: Sequence[dict[str, Any]], root: str | Path, *, seed: int
) -> tuple[Path, Path]:
    """Draw survival for ``rows`` and write ``clinical.csv`` and ``survival_model.json``."""
    model = SurvivalModel()
    table = pd.DataFrame(list(rows))
    cov = survival_covariates(
        np.maximum(table["wt_ml"].to_numpy(), 1e-3), table["et_ml"], table["age"]
    )
    time, event = draw_survival(np.random.default_rng([seed, 2**20]), cov, model=model)
    table["survival_days"], table["event"] = time, event
    table = table[list(CLINICAL_COLUMNS)]
    csv_path = Path(root) / "clinical.csv"
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    model_path = Path(root) / "survival_model.json"
    atomic_write_text(model_path, model.to_json())
    return csv_path, model_path
