"""Prediction: post-processing rules, and geometry checked against a stand-in network
whose labels are known on any grid (flipped, permuted, oblique, anisotropic, DICOM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _seg_cohort import grid_affine, make_msd, world_phantom
from _standin import dice, expected_labels, region_masks, standin_run
from medai.evaluation import region_dice
from medai.image import ScalarImage
from medai.inference import (
    postprocess_regions,
    predict_case,
    regions_to_labels,
    remove_small_components,
    write_prediction,
)
from medai.io import read_nifti, write_dicom_series
from medai.pipeline import evaluate_cases
from medai.preprocess import BRATS_REGIONS, InferencePlan, as_cohort


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


# -- geometry, with a stand-in network whose answer is known on any grid -----------------
# The stand-in (tests/_standin.py) marks the tumour seen by each voxel's right-hand
# neighbour on the network grid, so on every input grid its labels must equal the
# phantom's labels with the tumour moved 2 mm to the left, computed in world coordinates
# without the pipeline. Exact equality (or Dice of the tumour masks) cannot be met by an
# empty prediction: every test also checks each region is present.

RAS = np.eye(3)
RIGHT = np.array([1.0, 0.0, 0.0])


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _assert_regions_present(labels: np.ndarray, minimum_voxels: int = 20) -> None:
    for name, mask in region_masks(labels).items():
        assert mask.sum() >= minimum_voxels, f"{name} has only {mask.sum()} voxels"


def test_standin_answer_is_known_in_closed_form(tmp_path: Path) -> None:
    shape = (24, 26, 22)
    img, truth = world_phantom(shape, grid_affine(shape, (2.0, 2.0, 2.0), RAS))
    pred = predict_case(standin_run(), img, keep_probabilities=True)
    assert pred.labels.same_grid(img)
    assert pred.probabilities is not None
    assert pred.probabilities.same_grid(img)
    expected = expected_labels(shape, img.affine, RIGHT)
    np.testing.assert_array_equal(pred.labels.array, expected.array)
    _assert_regions_present(pred.labels.array[0])
    # the known 2 mm move is all that separates it from the truth
    for name, mask in region_masks(pred.labels.array[0]).items():
        assert dice(mask, region_masks(truth.array[0])[name]) < 1.0
    paths = write_prediction(pred, tmp_path / "out")
    written = read_nifti(paths["labels"])
    assert written.same_grid(img)
    np.testing.assert_array_equal(written.array, expected.array)
    voxel_ml = 8.0 / 1000.0
    assert pred.volumes_ml["WT"] == pytest.approx(np.count_nonzero(expected.array) * voxel_ml)


@pytest.mark.parametrize(
    ("name", "axes", "flips"),
    [("LAS", (0, 1, 2), (0,)), ("LPI", (0, 1, 2), (0, 1, 2)), ("ASL", (1, 2, 0), (2,))],
)
def test_any_storage_order_gives_the_same_labels(
    name: str, axes: tuple[int, int, int], flips: tuple[int, ...]
) -> None:
    shape = (24, 26, 22)
    img, _ = world_phantom(shape, grid_affine(shape, (2.0, 2.0, 2.0), RAS))
    ras_labels = predict_case(standin_run(), img).labels.array[0]
    # the same voxels stored in another order: permute, then mirror some axes
    data = np.transpose(img.array, (0, *(a + 1 for a in axes)))
    perm = np.eye(4)
    perm[:3, :3] = np.eye(3)[:, list(axes)]
    affine = img.affine @ perm
    for axis in flips:
        data = np.flip(data, axis + 1)
        mirror = np.eye(4)
        mirror[axis, axis], mirror[axis, 3] = -1.0, data.shape[axis + 1] - 1
        affine = affine @ mirror
    stored = ScalarImage(data.copy(), affine)
    assert "".join(stored.orientation) == name
    labels = predict_case(standin_run(), stored).labels
    assert labels.same_grid(stored)
    np.testing.assert_array_equal(labels.array, expected_labels(stored.shape, affine, RIGHT).array)
    back = labels.array[0]
    for axis in flips:
        back = np.flip(back, axis)
    np.testing.assert_array_equal(np.transpose(back, np.argsort(axes)), ras_labels)
    _assert_regions_present(back)


def test_oblique_grid_needs_no_resampling_and_stays_exact() -> None:
    # a double-oblique grid stored A-L-S: reorientation permutes and mirrors, the
    # network's first axis is the rotated R axis, and nothing is interpolated
    rotation = _rotation(20.0, 12.0)
    stored_axes = np.stack([rotation[:, 1], -rotation[:, 0], rotation[:, 2]], axis=1)
    shape = (27, 25, 26)
    affine = grid_affine(shape, (2.0, 2.0, 2.0), stored_axes)
    img, _ = world_phantom(shape, affine)
    assert "".join(img.orientation) == "ALS"
    labels = predict_case(standin_run(), img).labels
    assert labels.same_grid(img)
    expected = expected_labels(shape, affine, rotation[:, 0])
    np.testing.assert_array_equal(labels.array, expected.array)
    _assert_regions_present(labels.array[0])


def _centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.argwhere(mask).mean(0) + affine[:3, 3]


@pytest.mark.parametrize(
    ("shape", "spacing", "oblique"),
    [((38, 24, 14), (1.25, 2.0, 3.5), False), ((20, 34, 16), (2.5, 1.5, 3.0), True)],
    ids=["LPS-1.25x2x3.5mm", "oblique-ALS-2.5x1.5x3mm"],
)
def test_anisotropic_grid_is_resampled_there_and_back(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], oblique: bool
) -> None:
    # stored L-P-S like a DICOM series, or double-oblique A-L-S: reoriented, resampled
    # to the 2 mm network grid and back. Interpolation moves boundaries by up to a
    # voxel, so the tumour masks are compared by Dice and the whole tumour's centre of
    # mass (measured on these two grids: WT / TC / ET Dice ≥ 0.959 / 0.745 / 0.831, centre
    # within 0.17 mm; mirrored, one voxel off or not reoriented: WT ≤ 0.89, ≥ 1.8 mm off)
    if oblique:
        rotation = _rotation(20.0, 12.0)
        axes, right = np.stack([rotation[:, 1], -rotation[:, 0], rotation[:, 2]], 1), rotation[:, 0]
    else:
        axes, right = np.diag([-1.0, -1.0, 1.0]), RIGHT
    affine = grid_affine(shape, spacing, axes)
    img, _ = world_phantom(shape, affine)
    assert "".join(img.orientation) == ("ALS" if oblique else "LPS")
    labels = predict_case(standin_run(), img).labels
    assert labels.same_grid(img)
    _assert_regions_present(labels.array[0])
    expected = region_masks(expected_labels(shape, affine, right).array[0])
    got = region_masks(labels.array[0])
    scores = {name: dice(got[name], expected[name]) for name in got}
    assert scores["WT"] > 0.94, scores
    assert scores["TC"] > 0.7, scores
    assert scores["ET"] > 0.78, scores
    offset = _centroid_mm(got["WT"], affine) - _centroid_mm(expected["WT"], affine)
    assert np.linalg.norm(offset) < 0.5, offset


def test_dicom_study_equals_nifti(tmp_path: Path) -> None:
    shape = (24, 26, 22)
    img, _ = world_phantom(shape, grid_affine(shape, (2.0, 2.0, 2.0), RAS))
    run = standin_run()
    study = tmp_path / "study"
    for c, name in enumerate(run.plan.channels):
        write_dicom_series(img.channel(c), study / name, patient_id="P1", patient_name="Test^P",
                           study_uid="1.2.826.0.1.3680043.8.498.1", series_number=c + 1,
                           series_description=name)  # fmt: skip
    from_dicom = predict_case(run, study).labels
    from_nifti = predict_case(run, img).labels
    assert from_dicom.same_grid(from_nifti, atol=1e-3)
    np.testing.assert_array_equal(from_dicom.array, from_nifti.array)
    np.testing.assert_array_equal(from_dicom.array, expected_labels(shape, img.affine, RIGHT).array)
    _assert_regions_present(from_dicom.array[0])


def test_evaluate_cases_matches_manual_dice(tmp_path: Path) -> None:
    msd = make_msd(tmp_path / "msd", cases=2)
    cohort = as_cohort(msd)
    run = standin_run()
    seen: list[str] = []
    ids = ["BRATS_000", "BRATS_001"]
    scores = evaluate_cases(run, msd, ids, on_case=lambda c, _d: seen.append(c))
    assert seen == ids
    for k, case in enumerate(cohort.subset(ids)):
        pred = predict_case(run, case.load_image()).labels.array[0]
        ref = case.load_label().array[0]  # type: ignore[union-attr]
        assert np.isin(pred, [1, 2, 3]).sum() > 100
        for name, members in BRATS_REGIONS.items():
            expected = region_dice(np.isin(pred, members), np.isin(ref, members))
            assert scores[name][k] == pytest.approx(expected, abs=1e-12)
    # non-trivial overlaps on both cases (both have ET): a 2 mm move of the tumour
    assert min(scores["WT"]) > 0.8, scores
    assert min(scores["ET"]) > 0.2, scores
