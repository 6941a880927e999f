"""Every importer on a tiny fixture in its own format, plus format detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image as PILImage

from data_fixtures import AFFINE, MSD_LABELS, case_arrays, write_msd
from medai.data import (
    AnomalyKind,
    Dataset,
    TaskType,
    check_dataset,
    import_brats,
    import_class_folders,
    import_csv,
    import_dataset,
    import_deephealth_yaml,
    import_medmnist_npz,
    import_msd,
    import_nnunet_raw,
)
from medai.errors import DatasetError
from medai.image import LabelMap, ScalarImage
from medai.io import read_image, write_nifti


# -- MSD ------------------------------------------------------------------------------
def test_msd_channel_order_label_numbering_and_clinical(tmp_path: Path) -> None:
    root = write_msd(tmp_path, 3)
    # declare modality keys out of order: the order must follow the numeric keys
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = {"3": "T2w", "1": "T1w", "0": "FLAIR", "2": "t1gd"}
    (root / "dataset.json").write_text(json.dumps(meta))
    ds = import_msd(root)
    assert ds.task is TaskType.SEGMENTATION
    assert ds.channels == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert ds.labels == {
        0: "background",
        1: "edema",
        2: "non-enhancing tumor",
        3: "enhancing tumour",
    }
    assert ds.regions == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert [c.case_id for c in ds.cases] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert ds.cases[1].clinical == {"age": 42, "sex": "M", "site": "B", "grade": "HGG"}
    image = ds.load_case_image(ds.cases[0])
    # fixture channel c holds ~100·(c+1): FLAIR ≈ 100, T1w ≈ 200, t1gd ≈ 300, T2w ≈ 400
    means = [float(image.array[c, 1:7, 1:7, 1:5].mean()) for c in range(4)]
    np.testing.assert_allclose(means, [100, 200, 300, 400], atol=2)
    label = ds.load_case_label(ds.cases[0])
    assert label is not None
    assert label.labels == (0, 1, 2, 3)


def test_msd_label_disagreement_is_reported(tmp_path: Path) -> None:
    """dataset.json declares 0-2 but the label files hold 3: check reports every case."""
    labels = {k: v for k, v in MSD_LABELS.items() if k != "3"}
    ds = import_msd(write_msd(tmp_path, 3, labels=labels))
    assert ds.regions == {}  # not the brain-tumour label set any more
    report = check_dataset(ds)
    found = report.of_kind(AnomalyKind.LABEL_VALUES)
    assert [a.case for a in found] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert "[3] are not declared" in found[0].detail


def test_msd_declared_label_absent_from_files_is_noted(tmp_path: Path) -> None:
    labels = {**MSD_LABELS, "4": "necrosis"}
    report = check_dataset(import_msd(write_msd(tmp_path, 2, labels=labels)))
    assert report.ok
    assert "declared label(s) [4] occur in no label file" in report.notes


def test_msd_without_dataset_json_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset\.json"):
        import_msd(tmp_path)


# -- BraTS 2021 -----------------------------------------------------------------------
def _write_brats(root: Path, n: int = 2, *, with_seg: bool = True) -> Path:
    for i in range(n):
        name = f"BraTS2021_{i:05d}"
        image, label = case_arrays(i, labels=(2, 1, 4))
        for c, channel in enumerate(["t1", "t1ce", "t2", "flair"]):
            write_nifti(ScalarImage(image[c], AFFINE), root / name / f"{name}_{channel}.nii.gz")
        if with_seg:
            write_nifti(LabelMap(label, AFFINE), root / name / f"{name}_seg.nii.gz")
    return root


def test_brats_channels_labels_regions(tmp_path: Path) -> None:
    ds = import_brats(_write_brats(tmp_path))
    assert ds.channels == ["t1", "t1ce", "t2", "flair"]
    assert ds.labels == {
        0: "background",
        1: "necrotic tumour core",
        2: "peritumoural oedema",
        4: "enhancing tumour",
    }
    assert ds.regions == {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    assert [c.patient_id for c in ds.cases] == ["BraTS2021_00000", "BraTS2021_00001"]
    image = ds.load_case_image(ds.cases[1])
    np.testing.assert_allclose(image.array[3, 1:7, 1:7, 1:5].mean(), 400, atol=2)  # flair
    assert check_dataset(ds).ok


def test_brats_missing_channel_and_validation_cases(tmp_path: Path) -> None:
    root = _write_brats(tmp_path, with_seg=False)
    (root / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz").unlink()
    ds = import_brats(root)
    assert all(c.label is None for c in ds.cases)
    report = check_dataset(ds)
    assert [(a.kind, a.case) for a in report.anomalies] == [
        (AnomalyKind.MISSING_CHANNEL, "BraTS2021_00001")
    ]


# -- nnU-Net raw ----------------------------------------------------------------------
def _write_nnunet(root: Path, labels: dict[str, object]) -> Path:
    for i in range(2):
        image, label = case_arrays(i)
        for c in range(2):
            write_nifti(
                ScalarImage(image[c], AFFINE), root / "imagesTr" / f"case{i}_{c:04d}.nii.gz"
            )
        write_nifti(LabelMap(label, AFFINE), root / "labelsTr" / f"case{i}.nii.gz")
    meta = {
        "channel_names": {"1": "ADC", "0": "T2"},
        "labels": labels,
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_raw_plain_labels(tmp_path: Path) -> None:
    ds = import_nnunet_raw(_write_nnunet(tmp_path, {"background": 0, "a": 1, "b": 2, "c": 3}))
    assert ds.channels == ["T2", "ADC"]
    assert ds.labels == {0: "background", 1: "a", 2: "b", 3: "c"}
    assert ds.regions == {}
    assert ds.cases[0].channels["ADC"].name == "case0_0001.nii.gz"
    image = ds.load_case_image(ds.cases[0])
    np.testing.assert_allclose(image.array[1, 1:7, 1:7, 1:5].mean(), 200, atol=2)
    assert check_dataset(ds).ok


def test_nnunet_raw_region_based_labels(tmp_path: Path) -> None:
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": 3}
    ds = import_nnunet_raw(_write_nnunet(tmp_path, labels))
    assert ds.labels == {0: "background", 1: "label_1", 2: "label_2", 3: "enhancing"}
    assert ds.regions == {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": [3]}


# -- DeepHealth Toolkit Dataset Format -------------------------------------------------
def _png(path: Path, value: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.full((5, 7), value, np.uint8)).save(path)
    return path.name


def test_deephealth_yaml_classification(tmp_path: Path) -> None:
    for i in range(4):
        _png(tmp_path / "img" / f"s{i}.png", 10 * i)
    spec = {
        "name": "toy",
        "description": "four samples",
        "classes": ["benign", "malignant"],
        "features": ["age", "size"],
        "images": [
            {"location": "img/s0.png", "label": "benign", "values": [50, 1.5]},
            {"location": "img/s1.png", "label": 1, "values": {"age": 60, "size": 2.0}},
            {"location": "img/s2.png", "label": ["benign", "malignant"]},
            "img/s3.png",
        ],
        "split": {"training": [0, 1], "validation": [2], "test": [3]},
    }
    path = tmp_path / "toy.yml"
    path.write_text(yaml.safe_dump(spec))
    ds = import_deephealth_yaml(path)
    assert ds.task is TaskType.CLASSIFICATION
    assert ds.classes == ["benign", "malignant"]
    assert [c.target for c in ds.cases] == ["benign", "malignant", ["benign", "malignant"], None]
    assert ds.cases[0].clinical == {"age": 50, "size": 1.5}
    assert ds.cases[1].clinical == {"age": 60, "size": 2.0}
    assert (ds.splits.train, ds.splits.validation, ds.splits.test) == (["s0", "s1"], ["s2"], ["s3"])
    image = ds.load_case_image(ds.cases[2])
    assert image.shape == (7, 5, 1)
    assert float(image.array.mean()) == 20.0


def test_deephealth_yaml_segmentation_and_bad_label(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 9)
    _png(tmp_path / "a_gt.png", 1)
    path = tmp_path / "seg.yml"
    path.write_text(yaml.safe_dump({"images": [{"location": "a.png", "label": "a_gt.png"}]}))
    ds = import_deephealth_yaml(path)
    assert ds.task is TaskType.SEGMENTATION
    assert ds.cases[0].label == (tmp_path / "a_gt.png").resolve()
    path.write_text(
        yaml.safe_dump({"classes": ["x"], "images": [{"location": "a.png", "label": 3}]})
    )
    with pytest.raises(DatasetError, match="label index 3 outside"):
        import_deephealth_yaml(path)


def test_deephealth_yaml_several_locations_are_channels(tmp_path: Path) -> None:
    for name, value in (("a0", 1), ("a1", 2), ("b0", 3), ("b1", 4)):
        _png(tmp_path / f"{name}.png", value)
    images = [
        {"location": ["a0.png", "a1.png"], "label": "x"},
        {"location": ["b0.png", "b1.png"], "label": "y"},
    ]
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump({"classes": ["x", "y"], "images": images}))
    ds = import_deephealth_yaml(path)
    assert ds.channels == ["image_0", "image_1"]
    image = ds.load_case_image(ds.case("b0"))
    assert image.array[:, 0, 0, 0].tolist() == [3.0, 4.0]


# -- CSV, class folders, MedMNIST -----------------------------------------------------
def test_csv_classification_and_regression(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / f"x{i}.png", i)
    (tmp_path / "cls.csv").write_text(
        "path,label,pid,age\nx0.png,cat,P1,3\nx1.png,dog,P1,4\nx2.png,cat,P2,5\n"
    )
    ds = import_csv(tmp_path / "cls.csv", patient_column="pid")
    assert ds.task is TaskType.CLASSIFICATION
    assert ds.classes == ["cat", "dog"]
    assert [c.patient_id for c in ds.cases] == ["P1", "P1", "P2"]
    assert ds.cases[2].clinical == {"pid": "P2", "age": 5}
    (tmp_path / "reg.csv").write_text("file,y\nx0.png,1.5\nx1.png,2.25\n")
    reg = import_csv(tmp_path / "reg.csv", "file", "y")
    assert reg.task is TaskType.REGRESSION
    assert [c.target for c in reg.cases] == [1.5, 2.25]
    with pytest.raises(DatasetError, match="no column 'nope'"):
        import_csv(tmp_path / "reg.csv", "nope", "y")


def test_class_folders(tmp_path: Path) -> None:
    _png(tmp_path / "normal" / "a.png", 1)
    _png(tmp_path / "normal" / "b.png", 2)
    _png(tmp_path / "pneumonia" / "c.png", 3)
    (tmp_path / "pneumonia" / "notes.txt").write_text("not an image")
    ds = import_class_folders(tmp_path)
    assert ds.classes == ["normal", "pneumonia"]
    assert [(c.case_id, c.target) for c in ds.cases] == [
        ("normal/a", "normal"),
        ("normal/b", "normal"),
        ("pneumonia/c", "pneumonia"),
    ]
    assert import_dataset(tmp_path).model_dump() == ds.model_dump()


def test_medmnist_npz_2d_and_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 255, (3, 6, 4), dtype=np.uint8),
        "train_labels": np.array([[0], [2], [1]]),
        "val_images": rng.integers(0, 255, (1, 6, 4), dtype=np.uint8),
        "val_labels": np.array([[1]]),
        "test_images": rng.integers(0, 255, (2, 6, 4), dtype=np.uint8),
        "test_labels": np.array([[2], [0]]),
    }
    np.savez(tmp_path / "toymnist.npz", **arrays)
    ds = import_medmnist_npz(tmp_path / "toymnist.npz")
    assert ds.classes == ["0", "1", "2"]
    assert ds.splits.train == ["train_00000", "train_00001", "train_00002"]
    assert ds.splits.validation == ["val_00000"]
    assert len(ds.splits.test) == 2
    assert [c.target for c in ds.split_cases("test")] == ["2", "0"]
    image = read_image(ds.case("train_00001").image)  # type: ignore[arg-type]
    # a PNG read back has x = columns: array[x, y] == stored[row=y, col=x]
    np.testing.assert_array_equal(image.array[0, :, :, 0], arrays["train_images"][1].T)


def test_medmnist_npz_3d_multilabel(tmp_path: Path) -> None:
    vol = np.arange(2 * 4 * 5 * 6, dtype=np.uint8).reshape(2, 4, 5, 6)
    np.savez(tmp_path / "v.npz", train_images=vol, train_labels=np.array([[1, 0, 1], [0, 0, 0]]))
    ds = import_medmnist_npz(tmp_path / "v.npz", out_dir=tmp_path / "out")
    assert [c.target for c in ds.cases] == [["0", "2"], []]
    image = ds.load_case_image(ds.cases[0])
    assert image.shape == (6, 5, 4)
    np.testing.assert_array_equal(image.array[0], vol[0].transpose(2, 1, 0))


# -- detection ------------------------------------------------------------------------
def test_import_dataset_detects_formats(tmp_path: Path) -> None:
    msd = import_dataset(write_msd(tmp_path / "msd", 2))
    assert msd.channels[0] == "FLAIR"
    assert import_dataset(tmp_path / "msd" / "dataset.json").model_dump() == msd.model_dump()
    assert import_dataset(_write_brats(tmp_path / "brats", 1)).channels[0] == "t1"
    nn = _write_nnunet(tmp_path / "nn", {"background": 0, "a": 1, "b": 2, "c": 3})
    assert import_dataset(nn).channels == ["T2", "ADC"]
    manifest = msd.save(tmp_path / "msd" / "dataset.yaml")
    assert isinstance(import_dataset(manifest), Dataset)
    assert import_dataset(tmp_path / "msd").model_dump() == msd.model_dump()  # dataset.yaml wins
    with pytest.raises(DatasetError, match="not a known dataset layout"):
        import_dataset(tmp_path / "brats" / "BraTS2021_00000")


# -- clinical join --------------------------------------------------------------------
def test_clinical_joined_by_case_column_sets_patient(tmp_path: Path) -> None:
    """A CSV one folder up with its own patient ids and a column of case ids."""
    root = write_msd(tmp_path / "Task01", 3, clinical=False)
    (tmp_path / "clinical.csv").write_text(
        "patient_id,age,msd_case_id\nSYN0001,50,BRATS_001\nSYN0001,51,BRATS_002\n"
        "SYN0003,70,BRATS_003\n"
    )
    ds = import_msd(root)
    assert [(c.case_id, c.patient_id, c.clinical) for c in ds.cases] == [
        ("BRATS_001", "SYN0001", {"age": 50}),
        ("BRATS_002", "SYN0001", {"age": 51}),
        ("BRATS_003", "SYN0003", {"age": 70}),
    ]


def test_clinical_without_id_column_is_an_error(tmp_path: Path) -> None:
    root = write_msd(tmp_path, 2, clinical=False)
    (root / "clinical.csv").write_text("age,sex\n50,F\n60,M\n")
    with pytest.raises(DatasetError, match="no column names the cases"):
        import_msd(root)
