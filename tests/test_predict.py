"""Prediction: output on the input grid, post-processing rules, DICOM = NIfTI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _seg_cohort import make_msd, phantom
from medai.image import ScalarImage
from medai.inference import (
    evaluate_cases,
    load_run,
    postprocess_regions,
    predict_case,
    region_dice,
    regions_to_labels,
    remove_small_components,
    write_prediction,
)
from medai.io import read_nifti, write_dicom_series
from medai.preprocess import BRATS_REGIONS, InferencePlan, Plan, apply_overrides, as_cohort
from medai.training import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pred")
    msd = make_msd(root / "msd", cases=4)
    cohort = as_cohort(msd)
    plan = Plan(channels=cohort.channels, labels=cohort.labels, regions=cohort.regions)
    plan = apply_overrides(plan, [
        "train.patch_size=[16,16,16]", "train.epochs=1", "train.time_budget_s=null",
        "train.steps_per_epoch=2", "network.depth=3", "network.base_channels=4",
        "inference.min_component_ml=0",
    ])  # fmt: skip
    train(msd, plan, root / "run")
    return root / "run"


def test_regions_to_labels_brats_nesting() -> None:
    wt = np.array([1, 1, 1, 0], bool)
    tc = np.array([0, 1, 1, 0], bool)
    et = np.array([0, 0, 1, 0], bool)
    labels = regions_to_labels(np.stack([wt, tc, et]), BRATS_REGIONS)
    np.testing.assert_array_equal(labels, [1, 2, 3, 0])
    with pytest.raises(ValueError, match="own exactly one label"):
        regions_to_labels(np.stack([wt, tc]), {"A": [1, 2, 3], "B": [3]})


def test_remove_small_components_and_empty_rule() -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels
    mask[8, 8, 8] = True  # 1 voxel
    kept = remove_small_components(mask, 2)
    assert kept.sum() == 27
    assert region_dice(np.zeros(3), np.zeros(3)) == 1.0
    assert region_dice(np.ones(3), np.zeros(3)) == 0.0
    assert region_dice(np.array([1, 1, 0]), np.array([1, 0, 0])) == pytest.approx(2 / 3)


def test_small_et_becomes_tc_and_nesting_enforced() -> None:
    probs = np.zeros((3, 6, 6, 6), np.float32)
    probs[0, 1:5, 1:5, 1:5] = 0.9
    probs[1, 2:4, 2:4, 2:4] = 0.9
    probs[2, 2, 2, 2] = 0.9  # one ET voxel of 8 mm³
    probs[2, 0, 0, 0] = 0.9  # ET outside WT: removed by nesting
    plan = InferencePlan(min_component_ml=0, et_min_volume_ml=0.01)
    masks = postprocess_regions(probs, BRATS_REGIONS, spacing=(2.0, 2.0, 2.0), plan=plan)
    assert not masks[2].any()
    assert masks[1].sum() == 8
    keep = postprocess_regions(probs, BRATS_REGIONS, spacing=(2.0, 2.0, 2.0),
                               plan=InferencePlan(min_component_ml=0))  # fmt: skip
    assert keep[2].sum() == 1


def test_prediction_sits_on_input_grid_any_orientation(run_dir: Path, tmp_path: Path) -> None:
    run = load_run(run_dir)
    img, _ = phantom(np.random.default_rng(9), spacing=1.5)
    pred = predict_case(run, img, keep_probabilities=True)
    assert pred.labels.same_grid(img)
    assert pred.probabilities is not None
    assert pred.probabilities.same_grid(img)
    # the same image stored flipped along x (LAS): the answer is the flipped answer
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = img.shape[0] - 1
    las = ScalarImage(img.array[:, ::-1].copy(), img.affine @ flip)
    pred_las = predict_case(run, las)
    assert pred_las.labels.same_grid(las)
    agree = np.mean(pred_las.labels.array[0][::-1] == pred.labels.array[0])
    assert agree > 0.99
    paths = write_prediction(pred, tmp_path / "out")
    assert read_nifti(paths["labels"]).same_grid(img)
    assert set(pred.volumes_ml) == {"WT", "TC", "ET"}


def test_dicom_study_equals_nifti(run_dir: Path, tmp_path: Path) -> None:
    run = load_run(run_dir)
    img, _ = phantom(np.random.default_rng(11))
    study = tmp_path / "study"
    for c, name in enumerate(run.plan.channels):
        write_dicom_series(img.channel(c), study / name, patient_id="P1", patient_name="Test^P",
                           study_uid="1.2.826.0.1.3680043.8.498.1", series_number=c + 1,
                           series_description=name)  # fmt: skip
    from_dicom = predict_case(run, study)
    from_nifti = predict_case(run, img)
    assert from_dicom.labels.same_grid(from_nifti.labels, atol=1e-3)
    agree = np.mean(from_dicom.labels.array == from_nifti.labels.array)
    assert agree > 0.99


def test_evaluate_cases_matches_manual_dice(run_dir: Path) -> None:
    msd = run_dir.parent / "msd"
    cohort = as_cohort(msd)
    seen: list[str] = []
    scores = evaluate_cases(run_dir, msd, ["BRATS_002"], on_case=lambda c, _d: seen.append(c))
    assert seen == ["BRATS_002"]
    case = cohort.subset(["BRATS_002"])[0]
    pred = predict_case(run_dir, case.load_image()).labels.array[0]
    ref = case.load_label().array[0]  # type: ignore[union-attr]
    for name, ids in BRATS_REGIONS.items():
        expected = region_dice(np.isin(pred, ids), np.isin(ref, ids))
        assert scores[name] == [pytest.approx(expected)]
    # case 2 of the tiny cohort has no ET: the BraTS rule gives exactly 0 or 1
    assert scores["ET"][0] in (0.0, 1.0)
