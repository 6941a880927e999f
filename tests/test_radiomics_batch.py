"""Batch radiomics over a dataset: medai.radiomics.batch and `medai radiomics extract`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medai.cli.main import app
from medai.data import Case, Dataset, Splits
from medai.image import LabelMap, ScalarImage
from medai.io import read_image, read_label, write_nifti
from medai.radiomics import (
    Aggregation,
    RadiomicsSettings,
    extract_dataset,
    extract_features,
    feature_catalogue,
    find_prediction,
    wide_table,
    write_features_csv,
)
from medai.radiomics.batch import ID_COLUMNS, STATUS_EMPTY, STATUS_OK, ZERO_WHEN_EMPTY

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
REGIONS = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
CHANNELS = ["FLAIR", "t1gd"]
N_FEATURES = len(feature_catalogue(RadiomicsSettings().aggregations))


def _blob_label(seed: int, *, with_et: bool) -> np.ndarray:
    """Nested spheres (oedema ⊃ core ⊃ enhancing) with a seeded centre."""
    rng = np.random.default_rng(seed)
    centre = 8 + rng.integers(-1, 2, 3)
    x, y, z = np.mgrid[:16, :16, :16]
    r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    label = np.zeros((16, 16, 16), np.uint8)
    label[r < 5.5] = 1
    label[r < 3.5] = 2
    if with_et:
        label[(r >= 2.0) & (r < 3.0)] = 3
    return label


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """Three 2-channel 16³ cases; c1 has no enhancing tumour (empty ET)."""
    root = tmp_path_factory.mktemp("batch")
    cases = []
    for i in range(3):
        rng = np.random.default_rng(10 + i)
        label = _blob_label(i, with_et=i != 1)
        image = rng.normal(100.0, 15.0, (2, 16, 16, 16)) + 40.0 * (label > 0)
        write_nifti(ScalarImage(image.astype(np.float32), AFFINE), root / f"c{i}.nii.gz")
        write_nifti(LabelMap(label, AFFINE), root / f"c{i}_seg.nii.gz")
        cases.append(
            Case(
                patient_id=f"p{i}",
                case_id=f"c{i}",
                image=root / f"c{i}.nii.gz",
                label=root / f"c{i}_seg.nii.gz",
                clinical={"age": 50 + 7 * i, "event": i % 2},
            )
        )
    ds = Dataset(
        name="tiny",
        channels=CHANNELS,
        labels={0: "background", 1: "oedema", 2: "core", 3: "enhancing"},
        regions=REGIONS,
        cases=cases,
        splits=Splits(train=["c0", "c1"], test=["c2"]),
    )
    return Dataset.load(ds.save(root / "dataset.yaml"))


@pytest.fixture(scope="module")
def reference(dataset: Dataset) -> pd.DataFrame:
    return extract_dataset(dataset, workers=1)


def _row(df: pd.DataFrame, case: str, region: str, channel: str) -> pd.Series:
    hit = df[(df.case_id == case) & (df.region == region) & (df.channel == channel)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_one_row_per_roi_with_ids_features_then_clinical(reference: pd.DataFrame) -> None:
    assert len(reference) == 3 * len(REGIONS) * len(CHANNELS)
    assert list(reference.columns[: len(ID_COLUMNS)]) == list(ID_COLUMNS)
    assert list(reference.columns[-2:]) == ["age", "event"]
    assert reference.shape[1] == len(ID_COLUMNS) + N_FEATURES + 2
    assert set(reference.mask_source) == {"reference"}
    assert reference.groupby("case_id").split.first().to_dict() == {
        "c0": "train",
        "c1": "train",
        "c2": "test",
    }
    assert _row(reference, "c2", "TC", "t1gd")["age"] == 64
    assert len(reference.attrs["features"]) == N_FEATURES


def test_values_equal_extract_features_on_the_same_roi(
    dataset: Dataset, reference: pd.DataFrame
) -> None:
    case = dataset.case("c2")
    image = read_image(case.image).channel(1)  # t1gd
    label = read_label(case.label)
    expected = extract_features(image, label, labels=REGIONS["TC"])
    row = _row(reference, "c2", "TC", "t1gd")
    assert row["status"] == STATUS_OK
    got = row[list(expected)].to_numpy(dtype=float)
    np.testing.assert_array_equal(got, np.array(list(expected.values())))
    # WT and TC differ, FLAIR and t1gd intensities differ, the mask-only volume does not
    wt, flair = _row(reference, "c2", "WT", "t1gd"), _row(reference, "c2", "TC", "FLAIR")
    assert wt["morph_volume"] > row["morph_volume"] == flair["morph_volume"]
    assert flair["stat_mean"] != row["stat_mean"]


def test_empty_region_gives_zero_volume_nan_features_and_status(reference: pd.DataFrame) -> None:
    empty = reference[reference.status == STATUS_EMPTY]
    assert sorted(zip(empty.case_id, empty.region, empty.channel, strict=True)) == [
        ("c1", "ET", "FLAIR"),
        ("c1", "ET", "t1gd"),
    ]
    features = [f for f in reference.attrs["features"] if f not in ZERO_WHEN_EMPTY]
    assert empty[features].isna().all().all()
    assert (empty[list(ZERO_WHEN_EMPTY)] == 0.0).all().all()  # no enhancing tumour: 0 ml
    assert (reference[reference.status == STATUS_OK][["morph_volume"]] > 0).all().all()


def test_workers_two_gives_the_same_table_and_reports_progress(
    dataset: Dataset, reference: pd.DataFrame
) -> None:
    calls: list[tuple[int, int]] = []
    parallel = extract_dataset(dataset, workers=2, progress=lambda d, t: calls.append((d, t)))
    pd.testing.assert_frame_equal(parallel, reference)
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_split_regions_and_channels_select_rows(dataset: Dataset) -> None:
    df = extract_dataset(dataset, split="test", regions=["ET"], channels=["T1GD"], workers=1)
    assert list(zip(df.case_id, df.region, df.channel, strict=True)) == [("c2", "ET", "t1gd")]
    assert df.split.tolist() == ["test"]
    none = extract_dataset(dataset, split="validation", workers=2)
    assert none.empty
    assert list(none.columns[: len(ID_COLUMNS)]) == list(ID_COLUMNS)
    assert len(none.attrs["features"]) == N_FEATURES


def test_predicted_masks_are_read_from_the_folder(dataset: Dataset, tmp_path: Path) -> None:
    # c0's prediction is its core only (label 2 everywhere in TC): WT shrinks to TC.
    label = read_label(dataset.case("c0").label)
    core = np.where(np.isin(label.array, [2, 3]), 2, 0).astype(np.uint8)
    write_nifti(label.with_array(core), tmp_path / "c0.nii.gz")
    (tmp_path / "test").mkdir()  # medai evaluate writes <split>/<case_id>.nii.gz
    write_nifti(read_label(dataset.case("c2").label), tmp_path / "test" / "c2.nii.gz")
    assert find_prediction(tmp_path, "c1") is None
    assert find_prediction(tmp_path, "c2") is None
    assert find_prediction(tmp_path, "c2", split="test") == tmp_path / "test" / "c2.nii.gz"
    df = extract_dataset(
        dataset, masks="predicted", predictions_dir=tmp_path, regions=["WT", "ET"], workers=1
    )
    assert set(df.mask_source) == {"predicted"}
    wt = _row(df, "c0", "WT", "t1gd")
    expected = extract_features(
        read_image(dataset.case("c0").image).channel(1), label, labels=[2, 3]
    )
    assert wt["morph_volume"] == pytest.approx(expected["morph_volume"])
    assert wt["stat_mean"] == pytest.approx(expected["stat_mean"])
    assert _row(df, "c0", "ET", "t1gd")["status"] == STATUS_EMPTY
    missing = df[df.case_id == "c1"]
    assert len(missing) == 4
    assert missing.status.str.contains("no prediction file").all()
    assert missing["morph_volume"].isna().all()
    assert _row(df, "c2", "ET", "FLAIR")["status"] == STATUS_OK


def test_nan_image_and_off_grid_mask_fail_one_roi_each(dataset: Dataset, tmp_path: Path) -> None:
    case = dataset.case("c0")
    image = read_image(case.image)
    array = image.array.copy()
    array[1, 8, 8, 8] = np.nan  # inside every region of the t1gd channel
    write_nifti(image.with_array(array), tmp_path / "nan.nii.gz")
    off_grid = LabelMap(read_label(case.label).array[0, :12], AFFINE)
    write_nifti(off_grid, tmp_path / "c2.nii.gz")
    write_nifti(read_label(case.label), tmp_path / "c0.nii.gz")
    cases = [case.model_copy(update={"image": tmp_path / "nan.nii.gz"}), dataset.case("c2")]
    ds = dataset.model_copy(update={"cases": cases, "splits": Splits()})
    df = extract_dataset(ds, masks="predicted", predictions_dir=tmp_path, regions=["TC"], workers=1)
    assert _row(df, "c0", "TC", "FLAIR")["status"] == STATUS_OK
    nan_row = _row(df, "c0", "TC", "t1gd")
    assert nan_row["status"].startswith("failed: ValueError: image holds 1 NaN")
    assert np.isnan(nan_row["stat_mean"])
    assert df[df.case_id == "c2"].status.str.startswith("failed: GeometryError").all()
    excluded = extract_dataset(
        ds,
        masks="predicted",
        predictions_dir=tmp_path,
        regions=["TC"],
        channels=["t1gd"],
        settings=RadiomicsSettings(nan_policy="exclude"),
        workers=1,
    )
    assert _row(excluded, "c0", "TC", "t1gd")["status"] == STATUS_OK
    assert np.isfinite(_row(excluded, "c0", "TC", "t1gd")["stat_mean"])


def test_unreadable_case_is_reported_and_the_batch_goes_on(
    dataset: Dataset, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    cases = [dataset.case("c0").model_copy(update={"image": broken}), dataset.case("c2")]
    ds = dataset.model_copy(update={"cases": cases, "splits": Splits()})
    df = extract_dataset(ds, regions=["TC"], workers=2)
    failed = df[df.case_id == "c0"].status
    assert len(failed) == 2
    assert failed.str.startswith("failed: ImageReadError: ").all()
    assert failed.str.contains("broken.nii.gz").all()
    assert df[df.case_id == "c0"]["stat_mean"].isna().all()
    assert (df[df.case_id == "c2"].status == STATUS_OK).all()
    assert df.split.tolist() == [""] * 4


def test_wide_table_pivots_to_one_row_per_case(reference: pd.DataFrame) -> None:
    wide = wide_table(reference).set_index("case_id")
    assert wide.index.tolist() == ["c0", "c1", "c2"]
    n_rois = len(REGIONS) * len(CHANNELS)
    assert wide.shape[1] == 3 + n_rois * N_FEATURES + 2
    assert list(wide.columns[:4]) == ["patient_id", "split", "mask_source", "WT_FLAIR_morph_volume"]
    assert list(wide.columns[-2:]) == ["age", "event"]
    tidy = _row(reference, "c2", "ET", "t1gd")
    assert wide.loc["c2", "ET_t1gd_glcm_joint_max_3d_avg"] == tidy["glcm_joint_max_3d_avg"]
    assert np.isnan(wide.loc["c1", "ET_FLAIR_stat_mean"])
    assert wide.loc["c1", "age"] == 57
    with pytest.raises(ValueError, match="repeats a"):
        wide_table(pd.concat([reference, reference.iloc[:1]]))
    with pytest.raises(ValueError, match=r"columns .*missing"):
        wide_table(reference.drop(columns="region"))


def test_wide_table_sidecar_names_region_channel_and_ibsi_code(
    reference: pd.DataFrame, tmp_path: Path
) -> None:
    csv, sidecar = write_features_csv(wide_table(reference), tmp_path / "wide.csv")
    assert pd.read_csv(csv).case_id.tolist() == ["c0", "c1", "c2"]
    meta = json.loads(sidecar.read_text())
    assert len(meta["features"]) == len(REGIONS) * len(CHANNELS) * N_FEATURES
    entry = meta["features"]["TC_t1gd_glcm_joint_max_3d_avg"]
    assert entry["ibsi_code"] == "GYBY"
    assert (entry["region"], entry["channel"], entry["feature"]) == (
        "TC",
        "t1gd",
        "glcm_joint_max_3d_avg",
    )
    assert meta["settings"]["bin_number"] == 32


def test_csv_round_trip_and_ibsi_sidecar(reference: pd.DataFrame, tmp_path: Path) -> None:
    csv, sidecar = write_features_csv(reference, tmp_path / "features.csv")
    assert sidecar == tmp_path / "features.ibsi.json"
    back = pd.read_csv(csv)
    features = list(reference.attrs["features"])
    np.testing.assert_allclose(back[features].to_numpy(), reference[features].to_numpy())
    meta = json.loads(sidecar.read_text())
    assert set(meta["features"]) == set(features)
    assert meta["features"]["glcm_joint_max_3d_avg"]["ibsi_code"] == "GYBY"
    assert meta["features"]["morph_volume"]["family"] == "morph"
    assert meta["mask_source"] == "reference"
    assert meta["settings"]["bin_number"] == 32
    with pytest.raises(ValueError, match=r"must end in \.csv"):
        write_features_csv(reference, tmp_path / "features.txt")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"masks": "manual"}, "masks must be one of"),
        ({"masks": "predicted"}, "needs predictions_dir"),
        ({"masks": "predicted", "predictions_dir": "/nonexistent/x"}, "is not a folder"),
        ({"regions": ["NCR"]}, r"unknown \['NCR'\]"),
        ({"channels": ["ADC"]}, "channel 'ADC' is not in"),
        ({"split": "holdout"}, "split must be one of"),
        ({"workers": 0}, "workers must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise_clear_errors(
    dataset: Dataset, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        extract_dataset(dataset, **kwargs)  # type: ignore[arg-type]


def test_cli_extract_writes_csv_and_sidecar(dataset: Dataset, tmp_path: Path) -> None:
    manifest = Path(dataset.cases[0].image).parent / "dataset.yaml"
    out = tmp_path / "features.csv"
    args = ["radiomics", "extract", str(manifest), "--out", str(out), "--split", "train"]
    result = CliRunner().invoke(app, [*args, "--regions", "ET", "--workers", "1", "--wide"])
    assert result.exit_code == 0, result.output
    assert "4 ROIs (2 ok, 2 empty mask, 0 failed)" in " ".join(result.output.split())
    table = pd.read_csv(out)
    assert table.case_id.tolist() == ["c0", "c0", "c1", "c1"]
    assert (out.parent / "features.ibsi.json").is_file()
    wide = pd.read_csv(out.parent / "features.wide.csv")
    assert wide.case_id.tolist() == ["c0", "c1"]
    assert np.isnan(wide.loc[1, "ET_t1gd_stat_mean"])
    assert (out.parent / "features.wide.ibsi.json").is_file()
    no_dir = CliRunner().invoke(app, [*args, "--masks", "predicted"])
    assert no_dir.exit_code == 2
    assert "needs --predictions DIR" in " ".join(no_dir.output.split())
    bad = CliRunner().invoke(app, [*args, "--regions", "XX"])
    assert bad.exit_code == 2
    assert "unknown" in bad.output


def test_cli_all_aggregations_adds_2d_and_25d_features(dataset: Dataset, tmp_path: Path) -> None:
    manifest = Path(dataset.cases[0].image).parent / "dataset.yaml"
    out = tmp_path / "all.csv"
    args = ["radiomics", "extract", str(manifest), "--out", str(out), "--split", "test"]
    result = CliRunner().invoke(
        app, [*args, "--regions", "TC", "--channels", "t1gd", "--all-aggregations", "-j", "1"]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    n_all = len(feature_catalogue(tuple(Aggregation)))
    assert table.shape == (1, len(ID_COLUMNS) + n_all + 2)
    assert "glcm_joint_max_2d_avg" in table.columns


def test_find_prediction_knows_predict_and_evaluate_layouts(tmp_path: Path) -> None:
    label = LabelMap(np.ones((2, 2, 2), np.uint8), AFFINE)
    assert find_prediction(tmp_path, "a") is None
    write_nifti(label, tmp_path / "a" / "labels.nii.gz")
    assert find_prediction(tmp_path, "a") == tmp_path / "a" / "labels.nii.gz"
    write_nifti(label, tmp_path / "test" / "a.nii.gz")
    assert find_prediction(tmp_path, "a", split="test") == tmp_path / "test" / "a.nii.gz"
    write_nifti(label, tmp_path / "a.nii.gz")
    assert find_prediction(tmp_path, "a", split="test") == tmp_path / "a.nii.gz"
