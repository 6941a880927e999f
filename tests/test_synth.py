"""Synthetic glioma cohort: determinism, labels, contrasts, layouts, clinical model."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medai.data.synth import (
    Grade,
    SurvivalModel,
    draw_survival,
    generate_case,
    generate_cohort,
    survival_covariates,
)
from medai.data.synth.cohort import MSD_CHANNELS
from medai.data.synth.tumour import TumourParams, draw_tumour

SPACING = 4.0


@pytest.fixture(scope="module")
def hgg():
    return generate_case(0, seed=3, spacing=SPACING, grade="HGG")


def test_same_seed_same_case_and_case_independent_of_cohort_size(tmp_path) -> None:
    a = generate_case(1, seed=5, spacing=SPACING)
    b = generate_case(1, seed=5, spacing=SPACING)
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.label.array, b.label.array)
    assert a.clinical == b.clinical
    other = generate_case(1, seed=6, spacing=SPACING)
    assert not np.array_equal(a.image.array, other.image.array)
    info2 = generate_cohort(tmp_path / "n2", cases=2, spacing=SPACING, seed=5)
    info3 = generate_cohort(tmp_path / "n3", cases=3, spacing=SPACING, seed=5)
    for info in (info2, info3):
        lab = nib.load(info.root / "Task01_BrainTumour/labelsTr/BRATS_002.nii.gz")
        np.testing.assert_array_equal(np.asarray(lab.dataobj), a.label.array[0])


def test_labels_are_msd_and_regions_nested(hgg) -> None:
    lab = hgg.label.array[0]
    assert set(np.unique(lab)) <= {0, 1, 2, 3}
    wt, tc, et = lab > 0, np.isin(lab, (2, 3)), lab == 3
    assert et.any()
    assert (tc & ~et).any()
    assert (wt & ~tc).any()
    assert not (et & ~tc).any()
    assert not (tc & ~wt).any()
    assert hgg.clinical["wt_ml"] == pytest.approx(wt.sum() * SPACING**3 / 1000)
    assert hgg.necrosis.any()
    assert np.all(lab[hgg.necrosis] == 2)


def test_low_grade_has_no_or_tiny_enhancement() -> None:
    rng = np.random.default_rng(0)
    draws = [draw_tumour(rng, grade=Grade.LGG) for _ in range(400)]
    et = np.array([d.et_ml for d in draws])
    assert np.mean(et == 0) > 0.7
    assert et.max() <= 0.6
    assert all(d.ncr_ml == 0 for d in draws)
    hgg = [draw_tumour(rng, grade=Grade.HGG) for _ in range(400)]
    frac = np.array([d.et_ml / d.wt_ml for d in hgg])
    assert np.all(frac > 0.05)
    case = generate_case(2, seed=1, spacing=SPACING, grade="LGG")
    assert (case.label.array == 3).sum() * SPACING**3 / 1000 <= 0.6 + 1e-9
    assert (case.label.array == 2).any()


def _mean(case, channel: str, mask) -> float:
    return float(case.image.array[MSD_CHANNELS.index(channel)][mask].mean())


def test_contrasts_follow_radiology(hgg) -> None:
    lab = hgg.label.array[0]
    # Healthy tissue from a tumour-free draw of the anatomy: nearly pure voxels.
    from medai.data.synth import anatomy

    atlas = anatomy.load_atlas(SPACING)
    csf = (atlas.fractions[0] > 0.8) & (lab == 0)
    wm = (atlas.fractions[2] > 0.9) & (lab == 0)
    assert csf.sum() > 20
    assert wm.sum() > 100
    # Pose and warp are small at 4 mm: use the labels of the subject grid where they
    # overlap with pure atlas tissue (a few misplaced voxels do not change the order).
    oedema, et = lab == 1, lab == 3
    assert _mean(hgg, "FLAIR", oedema) > _mean(hgg, "FLAIR", wm) > _mean(hgg, "FLAIR", csf)
    assert _mean(hgg, "t1gd", et) > 1.2 * _mean(hgg, "t1gd", wm)
    assert _mean(hgg, "T2w", csf) > 1.3 * _mean(hgg, "T2w", wm)
    assert _mean(hgg, "t1gd", hgg.necrosis) < _mean(hgg, "t1gd", wm)
    # Skull-stripped like BraTS: zero outside the brain, positive inside, all channels.
    zero = hgg.image.array == 0
    assert np.all(zero == zero[0])
    assert 0.6 < zero[0].mean() < 0.9
    assert not zero[0][lab > 0].any()


def test_msd_layout_dataset_json_and_shapes(tmp_path) -> None:
    info = generate_cohort(tmp_path, cases=2, spacing=SPACING, seed=0, layouts=("msd", "brats"))
    doc = json.loads(info.dataset_json.read_text())
    assert doc["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert doc["labels"] == {
        "0": "background",
        "1": "edema",
        "2": "non-enhancing tumor",
        "3": "enhancing tumour",
    }
    assert doc["numTraining"] == 2
    assert len(doc["training"]) == 2
    root = tmp_path / "Task01_BrainTumour"
    for entry in doc["training"]:
        img = nib.load(root / entry["image"])
        lab = nib.load(root / entry["label"])
        assert img.shape == (*lab.shape, 4)
        np.testing.assert_allclose(img.affine, lab.affine)
        assert img.header.get_zooms()[:3] == pytest.approx((SPACING,) * 3)
    msd_lab = np.asarray(nib.load(root / "labelsTr/BRATS_001.nii.gz").dataobj)
    brats = tmp_path / "BraTS2021/BraTS2021_00001"
    seg = np.asarray(nib.load(brats / "BraTS2021_00001_seg.nii.gz").dataobj)
    mapping = {0: 0, 1: 2, 2: 1, 3: 4}
    np.testing.assert_array_equal(seg, np.vectorize(mapping.get)(msd_lab))
    flair = np.asarray(nib.load(brats / "BraTS2021_00001_flair.nii.gz").dataobj)
    img0 = np.asarray(nib.load(root / "imagesTr/BRATS_001.nii.gz").dataobj)
    np.testing.assert_array_equal(flair, img0[..., 0])
    table = pd.read_csv(info.clinical_csv)
    assert list(table.columns[:7]) == [
        "patient_id",
        "age",
        "sex",
        "site",
        "grade",
        "survival_days",
        "event",
    ]
    assert set(table["grade"]) <= {"HGG", "LGG"}
    # The case ids of both layouts join the clinical rows onto the imported cases.
    assert table["msd_case_id"].iloc[0] == "BRATS_001"
    assert table["brats_case_id"].iloc[0] == "BraTS2021_00001"
    assert set(table["event"]) <= {0, 1}
    model = json.loads(info.survival_model_json.read_text())
    assert model["beta"] == SurvivalModel().beta


def test_survival_depends_on_covariates_as_documented() -> None:
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(0)
    n = 3000
    wt = rng.lognormal(np.log(70), 0.6, n)
    et = wt * rng.uniform(0.0, 0.35, n)
    age = rng.uniform(20, 85, n)
    cov = survival_covariates(wt, et, age)
    time, event = draw_survival(rng, cov)
    frame = pd.DataFrame(cov).assign(time=time, event=event)
    fit = CoxPHFitter().fit(frame, duration_col="time", event_col="event")
    for name, beta in SurvivalModel().beta.items():
        assert fit.params_[name] == pytest.approx(beta, abs=0.25 * beta + 0.05)
    assert 0.2 < event.mean() < 0.95


def test_bad_arguments_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="spacing"):
        generate_case(0, spacing=0.5)
    with pytest.raises(ValueError, match="layouts"):
        generate_cohort(tmp_path, cases=1, layouts=("nnunet",))
    with pytest.raises(ValueError, match="cases"):
        generate_cohort(tmp_path, cases=0)
    with pytest.raises(ValueError, match="HGG"):
        generate_case(0, spacing=SPACING, grade="grade-5")
    with pytest.raises(ValueError, match="wt_ml"):
        survival_covariates([0.0], [0.0], [50.0])
    assert isinstance(draw_tumour(np.random.default_rng(0), grade=Grade.HGG), TumourParams)
