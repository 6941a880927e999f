"""Patient-level splits: property tests (hypothesis) and the CLI."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from data_fixtures import write_msd
from medai.cli.main import app
from medai.data import SPLIT_NAMES, Case, Dataset, import_msd, split_dataset
from medai.errors import ConfigError, DatasetError

GRADES = ("HGG", "LGG", "GBM")
SITES = ("A", "B", "C")


def _dataset(patients: list[tuple[int, str, str]]) -> Dataset:
    """One patient per tuple (number of cases, grade, site); files are never opened."""
    cases = []
    for p, (n, grade, site) in enumerate(patients):
        for k in range(n):
            cases.append(
                Case(
                    patient_id=f"P{p:03d}",
                    case_id=f"P{p:03d}_{k}",
                    image=Path(f"/nowhere/P{p}_{k}.nii.gz"),
                    clinical={"grade": grade, "site": site},
                )
            )
    return Dataset(name="h", cases=cases)


patients_strategy = st.lists(
    st.tuples(st.integers(1, 3), st.sampled_from(GRADES), st.sampled_from(SITES)),
    min_size=2,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    patients=patients_strategy,
    test=st.floats(0.0, 0.45),
    validation=st.floats(0.0, 0.3),
    folds=st.sampled_from([0, 2, 3, 5]),
    seed=st.integers(0, 2**31),
)
def test_split_properties(
    patients: list[tuple[int, str, str]], test: float, validation: float, folds: int, seed: int
) -> None:
    ds = _dataset(patients)
    out = split_dataset(
        ds, test=test, validation=validation, folds=folds, stratify="grade", seed=seed
    )
    patient_of = {c.case_id: c.patient_id for c in ds.cases}
    grade_of = {c.patient_id: c.clinical["grade"] for c in ds.cases}
    # a partition of the cases ...
    listed = [cid for name in SPLIT_NAMES for cid in getattr(out.splits, name)]
    assert sorted(listed) == sorted(patient_of)
    # ... in which no patient crosses splits
    split_of_patient: dict[str, set[str]] = defaultdict(set)
    for name in SPLIT_NAMES:
        for cid in getattr(out.splits, name):
            split_of_patient[patient_of[cid]].add(name)
    assert all(len(s) == 1 for s in split_of_patient.values())
    # stratification: per grade, each split's patient count within one of its target
    per_grade = Counter(grade_of.values())
    targets = {"test": test, "validation": validation, "train": 1.0 - test - validation}
    for name, fraction in targets.items():
        got = Counter(grade_of[p] for p, s in split_of_patient.items() if name in s)
        for grade, n in per_grade.items():
            assert abs(got[grade] - fraction * n) <= 1.0, (name, grade, got[grade], n)
    # folds partition train, patient-level and balanced per grade
    assert len(out.splits.folds) == folds
    if folds:
        assert sorted(c for f in out.splits.folds for c in f) == sorted(out.splits.train)
        train_grades = Counter(
            grade_of[patient_of[c]] for c in out.splits.train if c.endswith("_0")
        )
        for fold in out.splits.folds:
            fold_grades = Counter(grade_of[patient_of[c]] for c in fold if c.endswith("_0"))
            for grade, n in train_grades.items():
                assert abs(fold_grades[grade] - n / folds) <= 1.0
        fold_of = defaultdict(set)
        for i, fold in enumerate(out.splits.folds):
            for c in fold:
                fold_of[patient_of[c]].add(i)
        assert all(len(f) == 1 for f in fold_of.values())
    # seeded: the same call gives the same split
    again = split_dataset(
        ds, test=test, validation=validation, folds=folds, stratify="grade", seed=seed
    )
    assert again.splits == out.splits
    assert out.splits.seed == seed


@settings(max_examples=60, deadline=None)
@given(patients=patients_strategy, site=st.sampled_from(SITES))
def test_external_site_is_held_out_whole(patients: list[tuple[int, str, str]], site: str) -> None:
    ds = _dataset(patients)
    at_site = {c.case_id for c in ds.cases if c.clinical["site"] == site}
    if not at_site or len(at_site) == len(ds.cases):
        with pytest.raises(DatasetError, match=site):
            split_dataset(ds, external_site=site)
        return
    out = split_dataset(ds, external_site=site, test=0.2, validation=0.0)
    assert set(out.splits.external) == at_site
    rest = set(out.splits.train) | set(out.splits.test) | set(out.splits.validation)
    assert rest.isdisjoint(at_site)


def test_split_rejects_bad_arguments() -> None:
    ds = _dataset([(1, "HGG", "A"), (1, "LGG", "B")])
    with pytest.raises(ConfigError, match="test must be a fraction"):
        split_dataset(ds, test=1.2)
    with pytest.raises(ConfigError, match="leaves no case to train on"):
        split_dataset(ds, test=0.5, validation=0.5)
    with pytest.raises(ConfigError, match="folds must be 0"):
        split_dataset(ds, folds=1)
    with pytest.raises(ConfigError, match=r"stratify='stage'.*known columns: \['grade', 'site'\]"):
        split_dataset(ds, stratify="stage")


def test_split_closed_form_counts() -> None:
    ds = _dataset([(1, "HGG", "A")] * 10 + [(2, "LGG", "A")] * 5)
    out = split_dataset(ds, test=0.2, validation=0.2, stratify="grade", seed=3)
    # HGG: 10 patients -> 2 test, 2 validation, 6 train; LGG: 5 -> 1, 1, 3 (2 cases each)
    assert (len(out.splits.test), len(out.splits.validation), len(out.splits.train)) == (4, 4, 12)
    assert out.splits.stratify == "grade"


def test_cli_split_saves_in_manifest(tmp_path: Path) -> None:
    root = write_msd(tmp_path, 6)
    manifest = import_msd(root).save(root / "dataset.yaml")
    result = CliRunner().invoke(
        app,
        [
            "data",
            "split",
            str(manifest),
            "--test",
            "0.34",
            "--validation",
            "0",
            "--external-site",
            "B",
            "--stratify",
            "grade",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    back = Dataset.load(manifest)
    assert sorted(back.splits.external) == ["BRATS_004", "BRATS_005", "BRATS_006"]
    assert len(back.splits.test) == 1  # site A: HGG 2 patients -> round(0.68)=1, LGG 1 -> 0
    assert back.splits.seed == 1


def test_cli_split_of_a_folder_writes_its_manifest(tmp_path: Path) -> None:
    root = write_msd(tmp_path, 6)
    result = CliRunner().invoke(app, ["data", "split", str(root), "--folds", "2"])
    assert result.exit_code == 0, result.output
    back = Dataset.load(root / "dataset.yaml")
    assert len(back.splits.folds) == 2
    assert sorted(c for f in back.splits.folds for c in f) == sorted(back.splits.train)
