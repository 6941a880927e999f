"""Integration: a tiny generated synthetic cohort imports (MSD and BraTS layouts) and
checks clean; a planted intensity outlier in a copy of it is found."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medai.data import AnomalyKind, check_dataset, import_brats, import_dataset, import_msd
from medai.data.synth.cohort import generate_cohort
from medai.io import read_nifti, write_nifti

N_CASES = 5  # enough for the intensity-outlier check to run


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_cohort(root, cases=N_CASES, spacing=4.0, seed=3, layouts=("msd", "brats"))
    return root


def test_msd_layout_imports_and_checks_clean(cohort: Path) -> None:
    ds = import_dataset(cohort / "Task01_BrainTumour")
    assert ds.channels == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert sorted(ds.labels) == [0, 1, 2, 3]
    assert ds.regions == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert len(ds.cases) == N_CASES
    report = check_dataset(ds)
    assert report.ok, report.anomalies
    # The clinical table joins (site, grade, survival) and its sites are too small here
    # for a per-site intensity judgement, which the report says instead of guessing.
    assert {"site", "grade", "survival_days"} <= set(ds.cases[0].clinical)
    assert all("not judged" in note for note in report.notes)


def test_brats_layout_imports_and_checks_clean(cohort: Path) -> None:
    ds = import_brats(cohort / "BraTS2021")
    assert ds.channels == ["t1", "t1ce", "t2", "flair"]
    assert len(ds.cases) == N_CASES
    assert check_dataset(ds).ok
    # the same voxels in both layouts: BraTS flair == MSD channel 0 (FLAIR)
    msd = import_msd(cohort / "Task01_BrainTumour")
    flair = ds.load_case_image(ds.cases[0]).array[3]
    np.testing.assert_array_equal(flair, msd.load_case_image(msd.cases[0]).array[0])


def test_planted_outlier_in_generated_cohort(cohort: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(cohort / "Task01_BrainTumour", tmp_path / "copy"))
    path = copy / "imagesTr" / "BRATS_002.nii.gz"
    image = read_nifti(path)
    array = image.array.copy()
    array[2] *= 20.0  # T1gd of one case on another scale than its other channels
    write_nifti(image.with_array(array), path)
    report = check_dataset(import_msd(copy))
    assert {(a.kind, a.case) for a in report.anomalies} == {
        (AnomalyKind.INTENSITY_OUTLIER, "BRATS_002")
    }
