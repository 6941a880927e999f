"""`check_dataset` finds each anomaly kind when planted once, and a clean cohort is clean."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from data_fixtures import AFFINE, case_arrays, write_msd
from medai.cli.main import app
from medai.data import AnomalyKind, Dataset, Splits, check_dataset, import_msd, robust_z
from medai.image import LabelMap, ScalarImage
from medai.io import write_nifti

N_CASES = 6


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_msd(tmp_path_factory.mktemp("clean"), N_CASES)


@pytest.fixture
def copy(cohort: Path, tmp_path: Path) -> Path:
    """A fresh copy of the clean cohort to plant one anomaly in."""
    return Path(shutil.copytree(cohort, tmp_path / "copy"))


def _only(ds: Dataset) -> tuple[AnomalyKind, str | None, str]:
    report = check_dataset(ds)
    assert len(report.anomalies) == 1, report.anomalies
    a = report.anomalies[0]
    return a.kind, a.case, a.detail


def test_clean_cohort_is_clean(cohort: Path) -> None:
    calls: list[tuple[int, int]] = []
    report = check_dataset(import_msd(cohort), progress=lambda d, t: calls.append((d, t)))
    assert report.ok, report.anomalies
    assert report.cases_checked == N_CASES
    # fixture sites A and B have 3 cases each: too few to compare raw scales per site
    assert report.notes == [
        "raw intensity scale not judged at site 'A': 3 cases",
        "raw intensity scale not judged at site 'B': 3 cases",
    ]
    assert calls[-1] == (N_CASES, N_CASES)


def test_unreadable_file(copy: Path) -> None:
    (copy / "imagesTr" / "BRATS_002.nii.gz").write_bytes(b"not a nifti file at all")
    kind, case, detail = _only(import_msd(copy))
    assert (kind, case) == (AnomalyKind.UNREADABLE_FILE, "BRATS_002")
    assert "BRATS_002.nii.gz" in detail


def test_missing_channel(copy: Path) -> None:
    image, _ = case_arrays(3)
    write_nifti(ScalarImage(image[:3], AFFINE), copy / "imagesTr" / "BRATS_003.nii.gz")
    kind, case, detail = _only(import_msd(copy))
    assert (kind, case) == (AnomalyKind.MISSING_CHANNEL, "BRATS_003")
    assert "3 channel(s); 4 declared" in detail


def test_missing_channel_file(copy: Path) -> None:
    (copy / "imagesTr" / "BRATS_001.nii.gz").unlink()
    kind, case, _ = _only(import_msd(copy))
    assert (kind, case) == (AnomalyKind.MISSING_CHANNEL, "BRATS_001")


def test_channels_not_coregistered(copy: Path) -> None:
    image, _ = case_arrays(1)
    files = {}
    for c, name in enumerate(["FLAIR", "T1w", "t1gd", "T2w"]):
        affine = AFFINE.copy()
        affine[1, 3] = 4.0 if name == "t1gd" else 0.0  # t1gd shifted by 4 mm
        files[name] = write_nifti(ScalarImage(image[c], affine), copy / f"c1_{name}.nii.gz")
    ds = import_msd(copy)
    ds.cases[0] = ds.cases[0].model_copy(update={"image": None, "channels": files})
    kind, case, detail = _only(ds)
    assert (kind, case) == (AnomalyKind.NOT_COREGISTERED, "BRATS_001")
    assert "'t1gd' affine differs from 'FLAIR' by up to 4 mm" in detail


def test_label_not_coregistered_with_image(copy: Path) -> None:
    _, label = case_arrays(4)
    write_nifti(LabelMap(label[:, :, :5], AFFINE), copy / "labelsTr" / "BRATS_004.nii.gz")
    kind, case, detail = _only(import_msd(copy))
    assert (kind, case) == (AnomalyKind.NOT_COREGISTERED, "BRATS_004")
    assert "shape (8, 8, 5)" in detail


def test_label_values_outside_declared_set(copy: Path) -> None:
    _, label = case_arrays(5)
    label[0, 0, 0] = 7
    write_nifti(LabelMap(label, AFFINE), copy / "labelsTr" / "BRATS_005.nii.gz")
    kind, case, detail = _only(import_msd(copy))
    assert (kind, case) == (AnomalyKind.LABEL_VALUES, "BRATS_005")
    assert "[7]" in detail


def test_empty_label(copy: Path) -> None:
    _, label = case_arrays(6)
    write_nifti(LabelMap(np.zeros_like(label), AFFINE), copy / "labelsTr" / "BRATS_006.nii.gz")
    assert _only(import_msd(copy))[:2] == (AnomalyKind.EMPTY_LABEL, "BRATS_006")


def test_intensity_outlier(copy: Path) -> None:
    image, _ = case_arrays(2)
    image[2] *= 20.0  # t1gd of one case on another intensity scale
    write_nifti(ScalarImage(image, AFFINE), copy / "imagesTr" / "BRATS_002.nii.gz")
    report = check_dataset(import_msd(copy))
    kinds = {(a.kind, a.case) for a in report.anomalies}
    assert kinds == {(AnomalyKind.INTENSITY_OUTLIER, "BRATS_002")}
    assert any("channel 't1gd' mean" in a.detail for a in report.anomalies)


def _scaled(copy: Path, case: str, factor: float) -> None:
    image, _ = case_arrays(int(case[-3:]))
    write_nifti(ScalarImage(image * factor, AFFINE), copy / "imagesTr" / f"{case}.nii.gz")


def test_intensity_outlier_whole_image_without_sites(tmp_path: Path) -> None:
    """Without site information only a gross scale change (> ~12x) is an outlier."""
    root = write_msd(tmp_path, N_CASES, clinical=False)
    _scaled(root, "BRATS_003", 3.0)
    assert check_dataset(import_msd(root)).ok
    _scaled(root, "BRATS_003", 40.0)
    found = {(a.kind, a.case) for a in check_dataset(import_msd(root)).anomalies}
    assert found == {(AnomalyKind.INTENSITY_OUTLIER, "BRATS_003")}


def test_intensity_outlier_within_site(copy: Path) -> None:
    """With every case at one named site, a 5x scale change is already an outlier.

    (Without sites it takes ~12x; within a site, per-scan scaling and anatomy still move
    a mean by tens of per cent in clean data, so smaller changes are not flagged.)
    """
    _scaled(copy, "BRATS_003", 1.5)
    ds = import_msd(copy)
    ds.cases = [c.model_copy(update={"clinical": {"site": "X"}}) for c in ds.cases]
    assert check_dataset(ds).ok
    _scaled(copy, "BRATS_003", 5.0)
    ds = import_msd(copy)
    ds.cases = [c.model_copy(update={"clinical": {"site": "X"}}) for c in ds.cases]
    report = check_dataset(ds)
    assert {(a.kind, a.case) for a in report.anomalies} == {
        (AnomalyKind.INTENSITY_OUTLIER, "BRATS_003")
    }
    assert report.notes == []


def test_duplicate_image(copy: Path) -> None:
    shutil.copy(copy / "imagesTr" / "BRATS_001.nii.gz", copy / "imagesTr" / "BRATS_004.nii.gz")
    kind, case, detail = _only(import_msd(copy))
    assert (kind, case) == (AnomalyKind.DUPLICATE_IMAGE, "BRATS_004")
    assert "'BRATS_001'" in detail


def test_patient_in_two_splits(cohort: Path) -> None:
    ds = import_msd(cohort)
    ds.cases[1] = ds.cases[1].model_copy(update={"patient_id": "BRATS_001"})  # a follow-up scan
    ds = ds.model_copy(
        update={"splits": Splits(train=["BRATS_001", "BRATS_003"], test=["BRATS_002"])}
    )
    kind, case, detail = _only(ds)
    assert (kind, case) == (AnomalyKind.PATIENT_IN_TWO_SPLITS, "BRATS_001")
    assert "['test', 'train']" in detail


def test_patient_in_two_folds(cohort: Path) -> None:
    ds = import_msd(cohort)
    ds.cases[1] = ds.cases[1].model_copy(update={"patient_id": "BRATS_001"})
    ds = ds.model_copy(update={"splits": Splits(folds=[["BRATS_001"], ["BRATS_002"]])})
    assert _only(ds)[:2] == (AnomalyKind.PATIENT_IN_TWO_SPLITS, "BRATS_001")


def test_outliers_not_judged_on_few_cases(tmp_path: Path) -> None:
    report = check_dataset(import_msd(write_msd(tmp_path, 3)))
    assert report.ok
    assert "intensity outliers not judged" in report.notes[0]


def test_robust_z_closed_form() -> None:
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    # median 3, MAD 1 -> scale 1.4826
    np.testing.assert_allclose(z, (np.array([1, 2, 3, 4, 100]) - 3) / 1.4826)
    np.testing.assert_array_equal(robust_z(np.ones(4)), np.zeros(4))
    np.testing.assert_allclose(robust_z(np.array([1.0, 1.0, 2.0]), floor=0.5), [0, 0, 2])


def test_cli_check_exit_codes_and_json(cohort: Path, copy: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    clean = runner.invoke(app, ["data", "check", str(cohort)])
    assert clean.exit_code == 0, clean.output
    assert "clean" in clean.output
    _, label = case_arrays(6)
    write_nifti(LabelMap(np.zeros_like(label), AFFINE), copy / "labelsTr" / "BRATS_006.nii.gz")
    out = tmp_path / "report.json"
    bad = runner.invoke(app, ["data", "check", str(copy), "--json", str(out)])
    assert bad.exit_code == 1, bad.output
    assert "empty_label" in bad.output
    report = json.loads(out.read_text())
    assert report["anomalies"] == [
        {"kind": "empty_label", "case": "BRATS_006", "detail": "label holds background only"}
    ]
