"""Dataset manifest: validation, YAML/JSON round trip with relative paths, loading cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_fixtures import AFFINE, case_arrays, write_msd
from medai.data import Case, Dataset, Splits, TaskType, import_msd, region_masks
from medai.errors import DatasetError
from medai.image import LabelMap, ScalarImage
from medai.io import write_nifti


def _case(i: int, root: Path) -> Case:
    return Case(patient_id=f"P{i}", case_id=f"C{i}", image=root / f"c{i}.nii.gz")


def test_case_needs_exactly_one_image_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either 'image'"):
        Case(patient_id="p", case_id="c")
    with pytest.raises(ValueError, match="not both"):
        Case(patient_id="p", case_id="c", image=tmp_path / "a.nii", channels={"x": tmp_path})
    with pytest.raises(ValueError, match="non-empty"):
        Case(patient_id=" ", case_id="c", image=tmp_path / "a.nii")


def test_dataset_validates_regions_ids_and_splits(tmp_path: Path) -> None:
    labels = {0: "bg", 1: "a", 2: "b"}
    with pytest.raises(ValueError, match="region 'X'"):
        Dataset(name="d", labels=labels, regions={"X": [1, 5]})
    with pytest.raises(ValueError, match="region 'Y'"):
        Dataset(name="d", labels=labels, regions={"Y": [0, 1]})
    with pytest.raises(ValueError, match="repeated"):
        Dataset(name="d", cases=[_case(1, tmp_path), _case(1, tmp_path)])
    with pytest.raises(ValueError, match="not in the dataset"):
        Dataset(name="d", cases=[_case(1, tmp_path)], splits=Splits(train=["C9"]))
    with pytest.raises(ValueError, match="background"):
        Dataset(name="d", labels={1: "a"})
    ok = Dataset(name="d", labels=labels, regions={"AB": [1, 2]}, cases=[_case(1, tmp_path)])
    assert ok.case("C1").patient_id == "P1"
    with pytest.raises(DatasetError, match="no case 'C2'"):
        ok.case("C2")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_manifest_round_trip_with_relative_paths(tmp_path: Path, suffix: str) -> None:
    ds = import_msd(write_msd(tmp_path / "cohort", 3))
    ds = ds.model_copy(
        update={"splits": Splits(train=["BRATS_001", "BRATS_002"], test=["BRATS_003"])}
    )
    manifest = ds.save(tmp_path / "cohort" / f"dataset{suffix}")
    text = manifest.read_text(encoding="utf-8")
    assert str(tmp_path) not in text  # paths stored relative to the manifest
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "cohort", moved)
    back = Dataset.load(moved / f"dataset{suffix}")
    assert back.model_dump(exclude={"cases"}) == ds.model_dump(exclude={"cases"})
    assert back.cases[0].image == (moved / "imagesTr" / "BRATS_001.nii.gz").resolve()
    assert back.cases[0].clinical == ds.cases[0].clinical
    assert back.labels == {
        0: "background",
        1: "edema",
        2: "non-enhancing tumor",
        3: "enhancing tumour",
    }


def test_manifest_is_readable_yaml(tmp_path: Path) -> None:
    ds = import_msd(write_msd(tmp_path, 2))
    data = yaml.safe_load(ds.save(tmp_path / "dataset.yaml").read_text(encoding="utf-8"))
    assert data["channels"] == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert data["regions"] == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert data["cases"][1]["image"] == "imagesTr/BRATS_002.nii.gz"


def test_load_rejects_bad_manifests(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        Dataset.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncases: [{patient_id: p, case_id: c}]\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="invalid manifest"):
        Dataset.load(bad)


def test_load_case_image_4d_and_per_channel_agree(tmp_path: Path) -> None:
    image, label = case_arrays(7)
    write_nifti(ScalarImage(image, AFFINE), tmp_path / "four.nii.gz")
    names = ["a", "b", "c", "d"]
    files = {}
    for c, name in enumerate(names):
        files[name] = write_nifti(ScalarImage(image[c], AFFINE), tmp_path / f"{name}.nii.gz")
    write_nifti(LabelMap(label, AFFINE), tmp_path / "seg.nii.gz")
    # the per-channel case lists its files in a different order than declared
    shuffled = {k: files[k] for k in ["c", "a", "d", "b"]}
    ds = Dataset(
        name="d",
        channels=names,
        labels={0: "bg", 1: "x", 2: "y", 3: "z"},
        cases=[
            Case(
                patient_id="p",
                case_id="four",
                image=tmp_path / "four.nii.gz",
                label=tmp_path / "seg.nii.gz",
            ),
            Case(patient_id="p", case_id="split", channels=shuffled),
        ],
    )
    four = ds.load_case_image(ds.cases[0])
    split = ds.load_case_image(ds.cases[1])
    np.testing.assert_array_equal(four.array, image)
    np.testing.assert_array_equal(split.array, image)
    assert four.same_grid(split)
    assert four.meta["channels"] == names
    lab = ds.load_case_label(ds.cases[0])
    assert isinstance(lab, LabelMap)
    np.testing.assert_array_equal(lab.array[0], label)
    assert ds.load_case_label(ds.cases[1]) is None


def test_load_case_image_reports_wrong_channel_count_and_grid(tmp_path: Path) -> None:
    image, _ = case_arrays(1)
    write_nifti(ScalarImage(image[:3], AFFINE), tmp_path / "three.nii.gz")
    a = write_nifti(ScalarImage(image[0], AFFINE), tmp_path / "a.nii.gz")
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    b = write_nifti(ScalarImage(image[1], shifted), tmp_path / "b.nii.gz")
    ds = Dataset(
        name="d",
        channels=["a", "b", "c", "d"],
        cases=[Case(patient_id="p", case_id="x", image=tmp_path / "three.nii.gz")],
    )
    with pytest.raises(DatasetError, match="has 3 channels"):
        ds.load_case_image(ds.cases[0])
    ds2 = Dataset(
        name="d",
        channels=["a", "b"],
        cases=[Case(patient_id="p", case_id="y", channels={"a": a, "b": b})],
    )
    with pytest.raises(DatasetError, match="not on the grid"):
        ds2.load_case_image(ds2.cases[0])
    ds3 = Dataset(
        name="d", channels=["a", "b"], cases=[Case(patient_id="p", case_id="y", channels={"a": a})]
    )
    with pytest.raises(DatasetError, match=r"missing channel\(s\) \['b'\]"):
        ds3.load_case_image(ds3.cases[0])


def test_region_masks_are_unions_of_labels() -> None:
    label = LabelMap(np.array([[[0, 1], [2, 3]], [[3, 3], [1, 0]]]), AFFINE)
    masks = region_masks(label, {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]})
    assert {k: int(v.array.sum()) for k, v in masks.items()} == {"WT": 6, "TC": 4, "ET": 3}
    assert all(isinstance(m, LabelMap) and m.same_grid(label) for m in masks.values())
    with pytest.raises(TypeError, match="LabelMap"):
        region_masks(np.zeros(3), {"A": [1]})  # type: ignore[arg-type]


def test_task_type_is_coerced_from_text() -> None:
    assert Dataset(name="d", task="regression").task is TaskType.REGRESSION  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task"):
        Dataset(name="d", task="detection")  # type: ignore[arg-type]
