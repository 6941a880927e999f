"""Classification / regression datasets derived from a segmentation cohort."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _seg_cohort import grid_affine, world_phantom
from medai.cli.main import app
from medai.data import Case, Dataset, Splits, TaskType, import_msd, split_dataset
from medai.data.derive import (
    LOCATION_CLASSES,
    location_class,
    slice_dataset,
    target_dataset,
    tumour_location,
)
from medai.data.synth import generate_cohort
from medai.errors import ConfigError, DatasetError
from medai.image import LabelMap, ScalarImage
from medai.io import read_image, read_label, write_nifti


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """Four synthetic cases at 4 mm, split by patient, saved as a manifest."""
    root = tmp_path_factory.mktemp("cohort")
    info = generate_cohort(root, cases=4, spacing=4.0, seed=0)
    assert info.dataset_json is not None
    ds = split_dataset(import_msd(info.dataset_json.parent), test=0.25, validation=0.25, seed=0)
    ds.save(info.dataset_json.parent / "dataset.yaml")
    return ds


@pytest.fixture(scope="module")
def slices(cohort: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return slice_dataset(cohort, tmp_path_factory.mktemp("s") / "slices", slices_per_case=6)


def test_grade_classification_keeps_cases_labels_and_splits(cohort: Dataset) -> None:
    grade = target_dataset(cohort, column="grade", task="classification")
    assert grade.task is TaskType.CLASSIFICATION
    assert grade.classes == sorted({c.clinical["grade"] for c in cohort.cases})
    assert set(grade.classes) == {"HGG", "LGG"}  # the seed-0 cohort has both
    for old, new in zip(cohort.cases, grade.cases, strict=True):
        assert (new.case_id, new.patient_id) == (old.case_id, old.patient_id)
        assert new.target == old.clinical["grade"]
        assert (new.image, new.label) == (old.image, old.label)
    assert grade.splits == cohort.splits
    assert grade.channels == cohort.channels
    assert grade.regions == cohort.regions


def test_age_regression_round_trips_through_the_manifest(cohort: Dataset, tmp_path: Path) -> None:
    age = target_dataset(cohort, column="age", task=TaskType.REGRESSION, name="ages")
    assert age.name == "ages"
    assert age.classes == []
    assert [c.target for c in age.cases] == [float(c.clinical["age"]) for c in cohort.cases]
    back = Dataset.load(age.save(tmp_path / "dataset.yaml"))
    assert back == age
    assert back.load_case_label(back.cases[0]) is not None  # label kept for the pointing game


def test_target_dataset_refuses_bad_columns_and_classes(cohort: Dataset) -> None:
    with pytest.raises(DatasetError, match=r"'tumour_grade'.*available columns.*'grade'"):
        target_dataset(cohort, column="tumour_grade", task="classification")
    holey = cohort.model_copy(deep=True)
    holey.cases[1].clinical["grade"] = None
    with pytest.raises(DatasetError, match=r"1 of 4 case\(s\).*BRATS_002"):
        target_dataset(holey, column="grade", task="classification")
    with pytest.raises(DatasetError, match=r"\['LGG'\], not among classes"):
        target_dataset(cohort, column="grade", task="classification", classes=["HGG", "X"])
    with pytest.raises(DatasetError, match="not a finite number"):
        target_dataset(cohort, column="grade", task="regression")
    with pytest.raises(ConfigError, match="segmentation"):
        target_dataset(cohort, column="grade", task="segmentation")
    with pytest.raises(ConfigError, match="classes are for classification"):
        target_dataset(cohort, column="age", task="regression", classes=["a", "b"])


def test_location_class_convention() -> None:
    assert location_class([5.0, 1.0, 0.0]) == "right-anterior"
    assert location_class([-5.0, 1.0, 9.0]) == "left-anterior"
    assert location_class([5.0, -1.0, 0.0]) == "right-posterior"
    assert location_class([0.0, 0.0, 0.0]) == "left-posterior"


def _phantom_dataset(root: Path, tumours: dict[str, tuple[float, float, float]]) -> Dataset:
    """One phantom case per tumour centre (world mm), on an L-P-S flipped 2 mm grid."""
    shape = (24, 24, 22)
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    affine[:3, 3] = [23.0, 23.0, -21.0]  # brain (centred on the world origin) inside
    cases = []
    for name, centre in tumours.items():
        image, label = world_phantom(shape, affine, tumour_mm=centre)
        write_nifti(image, root / f"{name}_img.nii.gz")
        write_nifti(label, root / f"{name}_seg.nii.gz")
        cases.append(
            Case(
                patient_id=name,
                case_id=name,
                image=root / f"{name}_img.nii.gz",
                label=root / f"{name}_seg.nii.gz",
            )
        )
    channels = ["FLAIR", "T1w", "t1gd", "T2w"]
    return Dataset(name="phantoms", channels=channels, labels={0: "bg", 1: "a"}, cases=cases)


def test_tumour_location_reads_world_coordinates(tmp_path: Path) -> None:
    centres = {"ra": (9.0, 8.0, 0.0), "lp": (-9.0, -8.0, 2.0), "rp": (9.0, -8.0, -2.0)}
    located = tumour_location(_phantom_dataset(tmp_path, centres))
    assert located.classes == list(LOCATION_CLASSES)
    targets = {c.case_id: c.target for c in located.cases}
    assert targets == {"ra": "right-anterior", "lp": "left-posterior", "rp": "right-posterior"}
    offset = located.case("ra").clinical["tumour_offset_mm"]
    assert offset[0] > 4.0
    assert offset[1] > 4.0


def test_tumour_location_on_the_cohort_and_empty_labels(cohort: Dataset, tmp_path: Path) -> None:
    located = tumour_location(cohort)
    assert located.splits == cohort.splits
    for case in located.cases:
        assert case.target == location_class(case.clinical["tumour_offset_mm"])
    empty = _phantom_dataset(tmp_path, {"e": (0.0, 0.0, 0.0)})
    seg = empty.cases[0].label
    assert seg is not None
    write_nifti(read_label(seg).with_array(np.zeros((24, 24, 22), np.uint8)), seg)
    with pytest.raises(DatasetError, match=r"'e'.*no tumour voxel"):
        tumour_location(empty)


def test_slice_targets_agree_with_the_masks(cohort: Dataset, slices: Dataset) -> None:
    assert slices.classes == ["no-tumour", "tumour"]
    assert slices.channels == ["FLAIR"]
    for parent in cohort.cases:
        kids = [c for c in slices.cases if c.clinical["parent_case"] == parent.case_id]
        assert sorted(str(c.target) for c in kids) == ["no-tumour"] * 3 + ["tumour"] * 3
    root = Path(slices.cases[0].image).parent.parent  # type: ignore[arg-type]
    for case in slices.cases:
        label = slices.load_case_label(case)
        assert label is not None
        assert label.is_2d
        brain = read_label(root / case.clinical["brain_mask"]).array > 0
        tumour_px = int((label.array > 0).sum())
        if case.target == "tumour":
            assert tumour_px >= 0.02 * brain.sum() > 0
        else:
            assert tumour_px == 0
            assert brain.any()


def test_slices_keep_world_position_and_patient_splits(cohort: Dataset, slices: Dataset) -> None:
    for case in slices.cases:
        parent = cohort.case(case.clinical["parent_case"])
        assert case.patient_id == parent.patient_id
        assert case.case_id == f"{parent.case_id}_z{case.clinical['slice']}"
        assert slices.splits.of(case.case_id) == cohort.splits.of(parent.case_id)
    case = slices.cases[0]
    k = case.clinical["slice"]
    volume = cohort.load_case_image(cohort.case(case.clinical["parent_case"]))
    flat = slices.load_case_image(case)
    assert flat.shape == (*volume.shape[:2], 1)
    np.testing.assert_array_equal(flat.array[0, :, :, 0], volume.array[0, :, :, k])
    np.testing.assert_allclose(flat.affine @ [3, 5, 0, 1], volume.affine @ [3, 5, k, 1])


def test_slices_are_deterministic_and_replace_only_their_own_folder(
    cohort: Dataset, slices: Dataset, tmp_path: Path
) -> None:
    again = slice_dataset(cohort, tmp_path / "a", slices_per_case=6)
    assert [c.case_id for c in again.cases] == [c.case_id for c in slices.cases]
    other = slice_dataset(cohort, tmp_path / "a", slices_per_case=6, seed=1)  # replaces "a"
    assert [c.case_id for c in other.cases] != [c.case_id for c in slices.cases]
    assert json.loads((tmp_path / "a" / "derived.json").read_text())["seed"] == 1
    assert len(list((tmp_path / "a" / "images").iterdir())) == len(other.cases)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a slice dataset"):
        slice_dataset(cohort, tmp_path / "b")
    assert (tmp_path / "b" / "notes.txt").read_text() == "keep me"
    with pytest.raises(DatasetError, match=r"channel 'adc'.*FLAIR"):
        slice_dataset(cohort, tmp_path / "c", channel="adc")
    with pytest.raises(ConfigError, match="slices_per_case"):
        slice_dataset(cohort, tmp_path / "c", slices_per_case=0)
    assert not (tmp_path / "c").exists()


def test_slices_resampled_to_a_fixed_size_keep_the_field_of_view(
    cohort: Dataset, tmp_path: Path
) -> None:
    small = slice_dataset(cohort, tmp_path / "s", slices_per_case=2, size=16, channel="t2w")
    case = small.cases[0]
    image: ScalarImage = read_image(case.image)  # type: ignore[arg-type]
    parent = cohort.load_case_image(cohort.case(case.clinical["parent_case"]))
    assert image.shape == (16, 16, 1)
    assert small.channels == ["T2w"]
    extent = np.array(image.spacing[:2]) * 16
    np.testing.assert_allclose(extent, np.array(parent.spacing[:2]) * parent.shape[:2])
    label = small.load_case_label(case)
    assert isinstance(label, LabelMap)
    assert label.shape == (16, 16, 1)


def test_slice_splits_map_folds(cohort: Dataset, tmp_path: Path) -> None:
    ids = [c.case_id for c in cohort.cases]
    folded = cohort.model_copy(
        update={"splits": Splits(train=ids, folds=[ids[:2], ids[2:]], seed=3)}
    )
    out = slice_dataset(folded, tmp_path / "f", slices_per_case=2)
    assert out.splits.seed == 3
    assert len(out.splits.train) == len(out.cases)
    first = {c.clinical["parent_case"] for c in out.cases if c.case_id in out.splits.folds[0]}
    assert first == set(ids[:2])


def test_cli_derive_grade_and_slices(cohort: Dataset, tmp_path: Path) -> None:
    manifest = Path(cohort.cases[0].image).parent.parent / "dataset.yaml"  # type: ignore[arg-type]
    runner = CliRunner()
    result = runner.invoke(
        app, ["data", "derive", str(manifest), "--target", "grade", "--out", str(tmp_path / "g")]
    )
    assert result.exit_code == 0, result.output
    grade = Dataset.load(tmp_path / "g")
    assert grade.classes == ["HGG", "LGG"]
    assert grade.cases[0].image == cohort.cases[0].image
    args = ["data", "derive", str(manifest), "--target", "slices", "--out", str(tmp_path / "s")]
    result = runner.invoke(app, [*args, "--slices-per-case", "2"])
    assert result.exit_code == 0, result.output
    assert len(Dataset.load(tmp_path / "s").cases) == 2 * len(cohort.cases)
    bad = runner.invoke(app, [*args, "--channel", "adc"])
    assert bad.exit_code == 2
    assert "adc" in bad.output


def test_every_qualifying_slice_and_no_other_is_drawn(tmp_path: Path) -> None:
    """On a grid whose first axis points superior, all slices drawn with a large quota are
    exactly those a hand count of the label and brain areas allows."""
    ds = _phantom_dataset(tmp_path, {"p": (4.0, -3.0, 6.0)})
    rotation = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # i→S, j→R, k→A
    affine = grid_affine((22, 24, 24), (2.0, 2.0, 2.0), rotation)
    image, label = world_phantom((22, 24, 24), affine, tumour_mm=(4.0, -3.0, 6.0))
    write_nifti(image, ds.cases[0].image)  # type: ignore[arg-type]
    write_nifti(label, ds.cases[0].label)  # type: ignore[arg-type]
    out = slice_dataset(ds, tmp_path / "out", slices_per_case=60, min_tumour_fraction=0.1)
    brain = (image.array != 0).any(axis=0).sum(axis=(1, 2))
    tumour = (label.array[0] > 0).sum(axis=(1, 2))
    inside = brain >= 0.25 * brain.max()
    drawn = {c.clinical["slice"]: c.target for c in out.cases}
    assert {k for k, t in drawn.items() if t == "tumour"} == set(
        np.flatnonzero(inside & (tumour >= 0.1 * brain)).tolist()
    )
    assert {k for k, t in drawn.items() if t == "no-tumour"} == set(
        np.flatnonzero(inside & (tumour == 0)).tolist()
    )
    assert 0 < len(drawn) < 22
    assert any(0 < t < 0.1 * b for t, b in zip(tumour, brain, strict=True))
