"""Preprocessing: geometry-exact steps, determinism, cache keys, round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from _seg_cohort import make_msd, phantom
from medai.image import LabelMap, ScalarImage
from medai.preprocess import (
    PreprocessPlan,
    as_cohort,
    compute_fingerprint,
    crop,
    foreground_bbox,
    load_preprocessed,
    preprocess_case,
    preprocess_cohort,
    reorient_to_ras,
    resample_to_grid,
    resample_to_spacing,
    uncrop,
    zscore_in_mask,
)


def test_reorient_to_ras_keeps_world_positions() -> None:
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    lps = np.diag([-1.5, -2.0, 3.0, 1.0])
    lps[:3, 3] = [10, 20, 30]
    img = ScalarImage(data, lps)
    ras = reorient_to_ras(img)
    assert ras.orientation == ("R", "A", "S")
    # the voxel at world point of img voxel (1, 2, 3) holds the same value
    world = (img.affine @ [1, 2, 3, 1])[:3]
    ijk = np.rint(ras.world_to_voxel(world)[0]).astype(int)
    assert ras.array[0][tuple(ijk)] == data[1, 2, 3]


def test_resample_matches_simpleitk_linear() -> None:
    rng = np.random.default_rng(1)
    data = rng.random((12, 10, 8)).astype(np.float32)
    img = ScalarImage(data, np.diag([1.0, 1.0, 1.0, 1.0]))
    out = resample_to_spacing(img, (2.0, 2.0, 2.0))
    assert out.shape == (6, 5, 4)
    assert out.spacing == pytest.approx((2.0, 2.0, 2.0))
    # SimpleITK on the same grid (identity direction: RAS vs LPS sign does not matter here)
    src = sitk.GetImageFromArray(np.transpose(data, (2, 1, 0)))
    ref = sitk.Image([6, 5, 4], sitk.sitkFloat32)
    ref.SetSpacing((2.0, 2.0, 2.0))
    ref.SetOrigin(tuple(out.origin))
    expected = sitk.GetArrayFromImage(sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear))
    np.testing.assert_allclose(out.array[0], np.transpose(expected, (2, 1, 0)), atol=1e-5)


def test_label_resampling_is_nearest() -> None:
    lab = LabelMap(np.array([[[0, 3], [2, 1]]], dtype=np.uint8).reshape(2, 2, 1))
    # target voxels at 0, 1/3, 2/3 and 1 mm: nearest copies each label twice; linear
    # interpolation would blend 0 and 3 into 1 and 2 at the 1/3 and 2/3 positions
    out = resample_to_grid(lab, (4, 4, 1), np.diag([1 / 3, 1 / 3, 1.0, 1.0]))
    expected = np.repeat(np.repeat(lab.array, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(out.array, expected)
    assert out.array.dtype == lab.array.dtype


def test_crop_uncrop_round_trip_and_world_position() -> None:
    rng = np.random.default_rng(2)
    img, _ = phantom(rng)
    box = foreground_bbox(img, margin=1)
    small = crop(img, box)
    assert np.allclose(
        (small.affine @ [0, 0, 0, 1]), img.affine @ [box[0][0], box[1][0], box[2][0], 1]
    )
    back = uncrop(small, box, img.shape, img.affine)
    np.testing.assert_array_equal(back.array, img.array)


def test_zscore_inside_mask_is_standard() -> None:
    rng = np.random.default_rng(3)
    img = ScalarImage(rng.normal(50, 7, (2, 8, 8, 8)).astype(np.float32))
    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    out = zscore_in_mask(img, mask)
    for c in range(2):
        assert out.array[c][mask].mean() == pytest.approx(0.0, abs=1e-5)
        assert out.array[c][mask].std() == pytest.approx(1.0, abs=1e-4)
        assert not out.array[c][~mask].any()
    with pytest.raises(TypeError, match="ScalarImage"):
        zscore_in_mask(LabelMap(np.zeros((8, 8, 8), np.uint8)), mask)  # type: ignore[arg-type]


def test_preprocess_case_deterministic_and_label_aligned() -> None:
    rng = np.random.default_rng(4)
    img, lab = phantom(rng, spacing=1.0)
    plan = PreprocessPlan(target_spacing=(2.0, 2.0, 2.0))
    a = preprocess_case(img, lab, plan)
    b = preprocess_case(img, lab, plan)
    np.testing.assert_array_equal(a.image.array, b.image.array)
    assert a.label is not None
    assert a.label.same_grid(a.image)
    assert a.image.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert set(np.unique(a.label.array)) == {0, 1, 2, 3}
    with pytest.raises(TypeError, match="ScalarImage"):
        preprocess_case(lab, None, plan)  # type: ignore[arg-type]


def test_cohort_cache_keyed_by_content_and_plan(tmp_path: Path) -> None:
    cohort = as_cohort(make_msd(tmp_path / "msd", cases=2))
    assert cohort.channels == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert cohort.regions == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    plan = PreprocessPlan()
    seen: list[bool] = []
    first = preprocess_cohort(
        cohort.cases, plan, tmp_path / "cache", on_case=lambda _, h: seen.append(h)
    )
    again = preprocess_cohort(
        cohort.cases, plan, tmp_path / "cache", on_case=lambda _, h: seen.append(h)
    )
    assert first == again
    assert seen == [False, False, True, True]
    other = preprocess_cohort(cohort.cases, PreprocessPlan(crop_margin=0), tmp_path / "cache")
    assert set(other.values()).isdisjoint(first.values())
    pre = load_preprocessed(first[cohort.cases[0].case_id])
    assert pre.label is not None
    assert pre.image.num_channels == 4
    assert pre.record.input_shape == (24, 24, 24)


def test_fingerprint_frequencies(tmp_path: Path) -> None:
    cohort = as_cohort(make_msd(tmp_path / "msd", cases=3))
    fp = compute_fingerprint(cohort.cases, regions=cohort.regions)
    assert fp.n_cases == 3
    assert fp.median_spacing == pytest.approx((2.0, 2.0, 2.0))
    assert fp.region_case_fraction["WT"] == 1.0
    assert fp.region_case_fraction["ET"] == pytest.approx(2 / 3)
    assert len(fp.channels) == 4


def test_cohort_from_dataset_manifest_matches_msd(tmp_path: Path) -> None:
    from medai.data import import_msd

    root = make_msd(tmp_path / "msd", cases=3)
    direct = as_cohort(root)
    via = as_cohort(import_msd(root))
    assert via.ids() == direct.ids()
    assert via.channels == direct.channels
    assert via.regions == direct.regions
    a, b = direct.cases[1], via.cases[1]
    np.testing.assert_array_equal(a.load_image().array, b.load_image().array)
    np.testing.assert_array_equal(a.load_label().array, b.load_label().array)
    assert a.content_key() == b.content_key()
