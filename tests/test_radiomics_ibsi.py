"""IBSI chapter 1 digital phantom: every published reference value, within tolerance.

Data: ``../shared/ibsi/`` beside the repository (IBSI digital phantom and reference
values, CC BY 4.0; Zwanenburg et al., Radiology 2020;295:328–338).
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

IBSI_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "ibsi"
REFERENCE_CSV = IBSI_DIR / "reference_values_digital_phantom.csv"

#: Reference rows not compared, each with the reason. Empty: every row is checked.
SKIPPED: dict[str, str] = {}

pytestmark = pytest.mark.skipif(
    not REFERENCE_CSV.is_file(), reason=f"IBSI phantom data not found at {IBSI_DIR}"
)


def _reference_rows() -> list[dict[str, str]]:
    if not REFERENCE_CSV.is_file():
        return []
    with REFERENCE_CSV.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


ROWS = _reference_rows()
_LOOKUP = {
    (info.family_code, info.ibsi_name, info.aggregation_code): name
    for name, info in feature_catalogue().items()
}


def _column(row: dict[str, str]) -> str:
    return _LOOKUP[(row["family_code"], row["feature_name"], row["aggregation_code"])]


@cache
def _phantom_features() -> dict[str, float]:
    image = read_nifti(IBSI_DIR / "phantom.nii.gz", kind=ScalarImage)
    mask = read_nifti(IBSI_DIR / "mask.nii.gz", kind=LabelMap)
    # README: no discretisation is equivalent to fixed bin number 6 (levels 1..6).
    settings = RadiomicsSettings(bin_number=6, ivh_mode="discrete", aggregations=tuple(Aggregation))
    return extract_features(image, mask, settings=settings)


def _three_significant(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, 2 - math.floor(math.log10(abs(value))))


def test_every_reference_row_has_a_column() -> None:
    assert len(ROWS) == 482
    columns = [_column(row) for row in ROWS]
    assert len(set(columns)) == 482
    assert set(columns) == set(feature_catalogue())


_IDS = [f"{r['feature_family']}-{r['ibsi_code']}-{r['aggregation_code']}" for r in ROWS]


@pytest.mark.parametrize("row", ROWS, ids=_IDS)
def test_phantom_reference_value(row: dict[str, str]) -> None:
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
