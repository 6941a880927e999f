"""IBSI chapter 1 digital phantom: every published reference value, within tolerance.

Data: ``tests/data/ibsi/`` in this repository (IBSI digital phantom and its 482
reference values, CC BY 4.0; Zwanenburg et al., Radiology 2020;295:328–338; see the
README there). Missing data is a failure, never a skip: each of the 482 value tests
fails with the path to restore.
"""

from __future__ import annotations

import csv
import math
from functools import cache
from pathlib import Path

import pytest

from medai.image import LabelMap, ScalarImage
from medai.io.nifti import read_nifti
from medai.radiomics import Aggregation, RadiomicsSettings, extract_features, feature_catalogue

IBSI_DIR = Path(__file__).resolve().parent / "data" / "ibsi"
REFERENCE_CSV = IBSI_DIR / "reference_values_digital_phantom.csv"
#: Rows of the reference table: one per feature and aggregation method.
N_REFERENCE = 482

#: Reference rows not compared, each with the reason. Empty: every row is checked.
SKIPPED: dict[str, str] = {}


def _read_rows() -> list[dict[str, str]]:
    if not REFERENCE_CSV.is_file():
        return []
    with REFERENCE_CSV.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


_ROWS = _read_rows()


def _rows() -> list[dict[str, str]]:
    """The reference rows; fails the calling test when the data are not in the repository."""
    missing = [
        p.name
        for p in (REFERENCE_CSV, IBSI_DIR / "phantom.nii.gz", IBSI_DIR / "mask.nii.gz")
        if not p.is_file()
    ]
    if missing:
        pytest.fail(
            f"IBSI phantom data missing from {IBSI_DIR}: {missing}; restore them with "
            "`git checkout HEAD -- tests/data/ibsi` (they are committed test data)",
            pytrace=False,
        )
    return _ROWS


@cache
def _lookup() -> dict[tuple[str, str, str], str]:
    return {
        (info.family_code, info.ibsi_name, info.aggregation_code): name
        for name, info in feature_catalogue().items()
    }


def _column(row: dict[str, str]) -> str:
    return _lookup()[(row["family_code"], row["feature_name"], row["aggregation_code"])]


@cache
def _phantom_features() -> dict[str, float]:
    image = read_nifti(IBSI_DIR / "phantom.nii.gz", kind=ScalarImage)
    mask = read_nifti(IBSI_DIR / "mask.nii.gz", kind=LabelMap)
    # No discretisation is equivalent to fixed bin number 6 (levels 1..6) on this phantom.
    settings = RadiomicsSettings(bin_number=6, ivh_mode="discrete", aggregations=tuple(Aggregation))
    return extract_features(image, mask, settings=settings)


def _three_significant(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, 2 - math.floor(math.log10(abs(value))))


def test_every_reference_row_has_a_column() -> None:
    rows = _rows()
    assert len(rows) == N_REFERENCE
    columns = [_column(row) for row in rows]
    assert len(set(columns)) == N_REFERENCE
    assert set(columns) == set(feature_catalogue())
    assert set(_phantom_features()) == set(columns)
    assert not SKIPPED


def _ids() -> list[str]:
    if len(_ROWS) != N_REFERENCE:
        return [f"row{i:03d}" for i in range(N_REFERENCE)]
    return [f"{r['feature_family']}-{r['ibsi_code']}-{r['aggregation_code']}" for r in _ROWS]


@pytest.mark.parametrize("index", range(N_REFERENCE), ids=_ids())
def test_phantom_reference_value(index: int) -> None:
    row = _rows()[index]
    name = _column(row)
    if name in SKIPPED:
        pytest.skip(SKIPPED[name])
    value = _phantom_features()[name]
    reference, tolerance = float(row["reference_value"]), float(row["tolerance"])
    if tolerance > 0:
        assert abs(value - reference) <= tolerance, (name, value, reference, tolerance)
    else:
        assert _three_significant(value) == pytest.approx(reference, rel=1e-9, abs=1e-12), (
            name,
            value,
            reference,
        )
