"""Unit tests of medai.radiomics: closed forms, cross-checks, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError
from skimage.feature import graycomatrix

from medai.errors import GeometryError
from medai.image import LabelMap, ScalarImage
from medai.radiomics import (
    Aggregation,
    Discretisation,
    Family,
    RadiomicsSettings,
    extract_features,
    feature_catalogue,
    features_table,
    prepare_roi,
)
from medai.radiomics._texture import DIRECTIONS_2D, DIRECTIONS_3D
from medai.radiomics.glcm import glcm_matrices
from medai.radiomics.glrlm import glrlm_matrices
from medai.radiomics.morphology import morphology_features
from medai.radiomics.neighbourhood import ngldm_features
from medai.radiomics.zones import gldzm_features, glszm_features

ALL = tuple(Aggregation)


def _pair(image: np.ndarray, mask: np.ndarray, spacing=(1.0, 1.0, 1.0)):
    affine = np.diag([*spacing, 1.0])
    return ScalarImage(image, affine), LabelMap(mask.astype(np.uint8), affine)


def _cube(size: int = 5, pad: int = 2, value: float = 7.0):
    shape = (size + 2 * pad,) * 3
    mask = np.zeros(shape, dtype=np.uint8)
    mask[pad : pad + size, pad : pad + size, pad : pad + size] = 1
    return _pair(np.full(shape, value), mask)


def test_constant_region_has_zero_entropy_and_unit_uniformity() -> None:
    image, mask = _cube()
    f = extract_features(image, mask, settings=RadiomicsSettings(aggregations=ALL))
    assert f["ih_entropy"] == 0.0
    assert f["ih_uniformity"] == 1.0
    assert f["stat_var"] == 0.0
    assert f["stat_skew"] == 0.0  # IBSI: 0 when the variance is 0
    assert f["ih_kurt"] == 0.0
    assert f["glcm_joint_entr_3d_mrg"] == 0.0
    assert f["glcm_energy_3d_avg"] == 1.0
    assert f["glcm_contrast_2d_avg"] == 0.0
    assert f["glrlm_glnu_norm_3d_mrg"] == 1.0
    assert f["glszm_z_perc_3d"] == pytest.approx(1 / 125)
    assert f["gldzm_zdnu_norm_3d"] == 1.0
    assert f["ngtdm_coarseness_3d"] == 1e6  # IBSI: no grey-level difference at all
    assert f["stat_energy"] == pytest.approx(125 * 49.0)
    assert f["loc_peak_glob"] == pytest.approx(7.0)


def test_cube_morphology_closed_forms() -> None:
    image, mask = _cube(size=4)
    roi = prepare_roi(image, mask, settings=RadiomicsSettings())
    f = morphology_features(roi)
    assert f["vol_approx"] == 64.0
    assert f["pca_elongation"] == pytest.approx(1.0)
    assert f["pca_flatness"] == pytest.approx(1.0)
    # voxel positions 0..3 along each axis: sample variance 5/3 × 64/63
    assert f["pca_major"] == pytest.approx(4 * math.sqrt(np.var(np.arange(4)) * 64 / 63))
    # mesh of a cube of side 4 with chamfered edges: between the inner 3³ and outer 4³
    assert 27 < f["volume"] < 64
    assert f["com"] == pytest.approx(0.0, abs=1e-12)  # constant intensity: no shift
    assert f["v_dens_conv_hull"] == pytest.approx(1.0)


def test_moran_and_geary_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    shape = (6, 5, 4)
    mask = rng.random(shape) > 0.4
    image = rng.normal(10, 3, shape)
    spacing = (0.8, 1.1, 2.0)
    img, lab = _pair(image, mask, spacing)
    f = morphology_features(prepare_roi(img, lab, settings=RadiomicsSettings()))
    pos = np.argwhere(mask) * np.asarray(spacing)
    x = image[mask]
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=2)
    w = np.divide(1.0, dist, out=np.zeros_like(dist), where=dist > 0)
    y = x - x.mean()
    moran = len(x) / w.sum() * (w * np.outer(y, y)).sum() / (y**2).sum()
    geary = (len(x) - 1) * (w * (x[:, None] - x[None]) ** 2).sum() / (2 * w.sum() * (y**2).sum())
    assert f["moran_i"] == pytest.approx(moran, rel=1e-9)
    assert f["geary_c"] == pytest.approx(geary, rel=1e-9)


def test_glcm_slice_matrices_match_skimage() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(1, 5, size=(7, 6, 3))
    img, lab = _pair(grey.astype(float), np.ones(grey.shape))
    roi = prepare_roi(img, lab, settings=RadiomicsSettings(bin_number=4))
    per_slice, per_dir = glcm_matrices(roi)
    # in-plane (x, y) directions → skimage angles on a (row=x, col=y) slice
    angles = {(1, 0): np.pi / 2, (0, 1): 0.0, (1, 1): np.pi / 4, (1, -1): -np.pi / 4}
    for k, d in enumerate(DIRECTIONS_2D):
        for z in range(3):
            ref = graycomatrix(
                grey[:, :, z].astype(np.uint8), [1], [angles[d[:2]]], levels=5, symmetric=True
            )[1:, 1:, 0, 0]
            np.testing.assert_array_equal(per_slice[z, k], ref)
        np.testing.assert_array_equal(per_dir[DIRECTIONS_3D.index(d)], per_slice[:, k].sum(0))


def test_glrlm_single_line_is_one_run() -> None:
    mask = np.zeros((3, 9, 3), dtype=np.uint8)
    mask[1, 2:7, 1] = 1
    img, lab = _pair(np.full(mask.shape, 2.0), mask)
    roi = prepare_roi(img, lab, settings=RadiomicsSettings(bin_number=1))
    _, per_dir = glrlm_matrices(roi)
    along = per_dir[DIRECTIONS_3D.index((0, 1, 0))]
    across = per_dir[DIRECTIONS_3D.index((1, 0, 0))]
    assert along[0, 4] == 1  # one run of length 5
    assert along.sum() == 1
    assert across[0, 0] == 5  # five runs of length 1
    assert across.sum() == 5


def test_glszm_two_blobs_closed_form() -> None:
    mask = np.zeros((10, 6, 6), dtype=np.uint8)
    mask[1:4, 1, 1] = 1  # zone of 3 voxels
    mask[6:9, 1:3, 1] = 1  # zone of 6 voxels, not touching the first
    img, lab = _pair(np.full(mask.shape, 5.0), mask)
    roi = prepare_roi(img, lab, settings=RadiomicsSettings(bin_number=1))
    f = glszm_features(roi, aggregations=(Aggregation.D3,))
    assert f["sze_3d"] == pytest.approx((1 / 9 + 1 / 36) / 2)
    assert f["lze_3d"] == pytest.approx((9 + 36) / 2)
    assert f["z_perc_3d"] == pytest.approx(2 / 9)
    d = gldzm_features(roi, aggregations=(Aggregation.D3,))
    assert d["sde_3d"] == 1.0  # every voxel touches the edge


def test_ngldm_cube_dependence_counts() -> None:
    image, mask = _cube(size=3)
    roi = prepare_roi(image, mask, settings=RadiomicsSettings(bin_number=1))
    f = ngldm_features(roi, aggregations=(Aggregation.D3,))
    # corners 8 (k=8), edges 12 (k=12), faces 6 (k=18), centre 1 (k=27)
    hde = (8 * 8**2 + 12 * 12**2 + 6 * 18**2 + 27**2) / 27
    assert f["hde_3d"] == pytest.approx(hde)
    assert f["dc_perc_3d"] == 1.0


def test_discretisation_fixed_bin_number_and_size() -> None:
    values = np.arange(0.0, 10.0).reshape(10, 1, 1)
    img, lab = _pair(values, np.ones(values.shape))
    fbn = prepare_roi(img, lab, settings=RadiomicsSettings(bin_number=5))
    assert fbn.grey[fbn.int_mask].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    fbs = prepare_roi(
        img,
        lab,
        settings=RadiomicsSettings(
            discretisation=Discretisation.FIXED_BIN_SIZE, bin_width=3.0, lower_bound=-1.0
        ),
    )
    assert fbs.grey[fbs.int_mask].tolist() == [1, 1, 2, 2, 2, 3, 3, 3, 4, 4]
    assert fbs.n_levels == 4


def test_resegmentation_and_outliers_shrink_intensity_mask_only() -> None:
    image, mask = _cube(size=4)
    data = image.numpy3d().copy()
    data[3, 3, 3] = 1000.0
    img = image.with_array(data)
    s = RadiomicsSettings(resegment_range=(None, 100.0))
    roi = prepare_roi(img, mask, settings=s)
    assert roi.int_mask.sum() == 63
    assert roi.morph_mask.sum() == 64
    roi = prepare_roi(img, mask, settings=RadiomicsSettings(outlier_sigma=3.0))
    assert roi.int_mask.sum() == 63
    with pytest.raises(ValueError, match="re-segmentation"):
        prepare_roi(img, mask, settings=RadiomicsSettings(resegment_range=(2000.0, None)))


def test_resampling_keeps_volume_of_a_box() -> None:
    mask = np.zeros((12, 12, 8), dtype=np.uint8)
    mask[3:9, 3:9, 2:6] = 1
    img, lab = _pair(np.full(mask.shape, 3.0), mask, spacing=(1.0, 1.0, 2.0))
    s = RadiomicsSettings(resample_spacing=(1.0, 1.0, 1.0), families=(Family.MORPHOLOGY,))
    f = extract_features(img, lab, settings=s)
    assert f["morph_vol_approx"] == pytest.approx(6 * 6 * 8, rel=0.15)


def test_ivh_bin_width_uses_bin_centres() -> None:
    values = np.array([0.0, 10.0, 20.0, 30.0]).reshape(4, 1, 1)
    img, lab = _pair(values, np.ones(values.shape))
    s = RadiomicsSettings(ivh_mode="bin_width", ivh_bin_width=10.0, families=(Family.IVH,))
    f = extract_features(img, lab, settings=s)
    # centres 5, 15, 25, 35; G = [5, 25]; volume fractions 1, .75, .5, .25
    assert f["ivh_v10"] == pytest.approx(0.75)
    assert f["ivh_v90"] == pytest.approx(0.5)
    assert f["ivh_i90"] == pytest.approx(15.0)
    assert f["ivh_i10"] == pytest.approx(45.0)  # even the top bin holds more than 10 %


def test_ivh_discrete_uses_resegmentation_range() -> None:
    values = np.array([0.0, 1.0, 2.0, 3.0]).reshape(4, 1, 1)
    img, lab = _pair(values, np.ones(values.shape))
    s = RadiomicsSettings(ivh_mode="discrete", resegment_range=(0.0, 10.0), families=(Family.IVH,))
    f = extract_features(img, lab, settings=s)
    assert f["ivh_v10"] == pytest.approx(0.75)  # γ ≥ 0.1 of G = [0, 10]: intensity ≥ 1
    assert f["ivh_v90"] == pytest.approx(0.0)  # γ ≥ 0.9: intensity ≥ 9, none
    assert f["ivh_i10"] == pytest.approx(4.0)
    default = extract_features(img, lab, settings=RadiomicsSettings(families=(Family.IVH,)))
    # 1000 bins over [0, 3]: levels 1, 334, 667, 1000; level 2 already holds only 75 %
    assert default["ivh_i90"] == pytest.approx(2.0)
    assert default["ivh_i10"] == pytest.approx(1001.0)


def test_gldzm_distance_ignores_resegmentation_holes() -> None:
    data = np.ones((9, 9, 9))
    data[3:6, 3:6, 3:6] = 2.0
    data[4, 4, 4] = 1000.0  # dropped by re-segmentation: a hole in the intensity mask
    mask = np.zeros(data.shape, dtype=np.uint8)
    mask[2:7, 2:7, 2:7] = 1
    img, lab = _pair(data, mask)
    s = RadiomicsSettings(bin_number=2, resegment_range=(None, 100.0))
    f = gldzm_features(prepare_roi(img, lab, settings=s), aggregations=(Aggregation.D3,))
    assert f["lde_3d"] == pytest.approx((1 + 4) / 2)  # shell at distance 1, core at 2


def test_empty_mask_is_a_clear_error() -> None:
    image, mask = _cube()
    empty = mask.with_array(np.zeros(mask.array.shape, dtype=np.uint8))
    with pytest.raises(ValueError, match="no voxels with label"):
        extract_features(image, empty)
    with pytest.raises(ValueError, match="labels present: \\[1\\]"):
        extract_features(image, mask, labels=2)


def test_mask_off_grid_is_a_geometry_error() -> None:
    image, mask = _cube()
    shifted = LabelMap(mask.array, mask.affine + np.eye(4) * 0 + _shift(3.0))
    with pytest.raises(GeometryError, match="not on the image grid"):
        extract_features(image, shifted)
    with pytest.raises(TypeError, match="LabelMap"):
        extract_features(image, image)  # type: ignore[arg-type]


def _shift(mm: float) -> np.ndarray:
    out = np.zeros((4, 4))
    out[0, 3] = mm
    return out


def test_nan_in_roi_raises_or_is_excluded() -> None:
    image, mask = _cube(size=4)
    data = image.numpy3d().copy()
    data[3, 3, 3] = np.nan
    img = image.with_array(data)
    with pytest.raises(ValueError, match="NaN"):
        extract_features(img, mask)
    f = extract_features(img, mask, settings=RadiomicsSettings(nan_policy="exclude"))
    assert f["morph_vol_approx"] == 64.0
    assert f["stat_mean"] == 7.0
    assert f["loc_peak_glob"] == pytest.approx(7.0)


def test_single_voxel_roi_gives_documented_nans_not_a_crash() -> None:
    image, mask = _cube(size=1)
    f = extract_features(image, mask, settings=RadiomicsSettings(aggregations=ALL))
    assert set(f) == set(feature_catalogue())
    assert f["morph_vol_approx"] == 1.0
    assert f["stat_mean"] == 7.0
    assert math.isnan(f["morph_moran_i"])
    assert math.isnan(f["glcm_joint_max_3d_avg"])  # no voxel pairs
    assert math.isnan(f["ngtdm_coarseness_3d"])  # no neighbours
    assert f["glrlm_sre_3d_avg"] == 1.0


def test_features_table_is_tidy_with_codes() -> None:
    image, mask = _cube(size=3)
    s = RadiomicsSettings(families=(Family.STATISTICS, Family.GLCM))
    rows = [{"case": c, **extract_features(image, mask, settings=s)} for c in ("a", "b")]
    table = features_table(rows)
    assert table.shape == (2, 1 + 18 + 2 * 25)
    assert table.columns[0] == "case"
    assert table.attrs["features"]["glcm_joint_max_3d_mrg"]["ibsi_code"] == "GYBY"
    assert table.attrs["features"]["stat_mean"]["aggregation_code"] == "DHQ4"


def test_catalogue_and_settings_validation() -> None:
    catalogue = feature_catalogue()
    assert len(catalogue) == 482
    assert catalogue["morph_volume"].ibsi_code == "RNU0"
    assert len(feature_catalogue((Aggregation.D3_MERGED,))) == 74 + 25 + 16
    with pytest.raises(ValidationError, match="swap the bounds"):
        RadiomicsSettings(resegment_range=(10.0, 0.0))
    with pytest.raises(ValidationError, match=r"bin_number\n.*greater than or equal to 1"):
        RadiomicsSettings(bin_number=0)
    with pytest.raises(ValidationError, match="needs one of the aggregations"):
        RadiomicsSettings(families=(Family.GLCM,), aggregations=(Aggregation.D3,))


def test_resampling_to_the_same_spacing_changes_nothing() -> None:
    rng = np.random.default_rng(5)
    data = rng.normal(50, 10, (9, 8, 7))
    mask = np.zeros(data.shape, dtype=np.uint8)
    mask[2:7, 2:6, 1:6] = 1
    img, lab = _pair(data, mask, spacing=(1.5, 1.5, 2.0))
    plain = extract_features(img, lab)
    same = extract_features(img, lab, settings=RadiomicsSettings(resample_spacing=(1.5, 1.5, 2.0)))
    assert same == pytest.approx(plain, nan_ok=True)


def test_moran_geary_estimate_for_huge_rois_is_close(monkeypatch: pytest.MonkeyPatch) -> None:
    from medai.radiomics import autocorrelation

    x, y, _ = np.mgrid[:16, :14, :10]
    data = np.sin(x / 4.0) + np.cos(y / 5.0) + 0.1 * np.random.default_rng(1).normal(size=x.shape)
    img, lab = _pair(data, np.ones(data.shape), spacing=(1.0, 1.2, 2.0))
    roi = prepare_roi(img, lab, settings=RadiomicsSettings())
    exact = autocorrelation.moran_geary(roi)
    monkeypatch.setattr(autocorrelation, "FFT_LIMIT", 10)
    monkeypatch.setattr(autocorrelation, "SAMPLE_SIZE", 800)
    estimate = autocorrelation.moran_geary(roi)
    assert estimate[0] == pytest.approx(exact[0], rel=0.1)
    assert estimate[1] == pytest.approx(exact[1], rel=0.1)
    assert estimate != exact


def test_two_voxel_and_flat_rois_do_not_warn() -> None:
    data = np.random.default_rng(2).normal(0, 50, (8, 8, 3))
    two = np.zeros(data.shape, dtype=np.uint8)
    two[3, 3, 1] = two[3, 4, 1] = 1
    img, lab = _pair(data, two)
    f = extract_features(img, lab, settings=RadiomicsSettings(aggregations=ALL))
    assert math.isnan(f["stat_rmad"])  # nothing lies strictly between P10 and P90
    assert f["glcm_joint_max_2d_avg"] == 0.5  # one pair of two levels, counted both ways
    flat = np.zeros(data.shape, dtype=np.uint8)
    flat[1:7, 2:6, 1] = 1  # a single slice: zero thickness for the PCA ellipsoid
    f = extract_features(*_pair(data, flat), settings=RadiomicsSettings(aggregations=ALL))
    assert math.isnan(f["morph_v_dens_aee"])
    assert f["morph_vol_approx"] == 24.0


def test_glcm_features_match_skimage_graycoprops() -> None:
    from skimage.feature import graycoprops

    from medai.radiomics.glcm import glcm_matrix_features

    rng = np.random.default_rng(4)
    grey = rng.integers(1, 7, size=(9, 8, 1))
    ref = graycomatrix(grey[:, :, 0].astype(np.uint8), [1], [0.0], levels=7, symmetric=True)
    ref = ref[1:, 1:].astype(np.float64)
    ours = glcm_matrix_features(ref[:, :, 0, 0][None])
    ref_norm = ref / ref.sum()
    assert ours["contrast"][0] == pytest.approx(graycoprops(ref_norm, "contrast")[0, 0])
    assert ours["dissimilarity"][0] == pytest.approx(graycoprops(ref_norm, "dissimilarity")[0, 0])
    assert ours["inv_diff_mom"][0] == pytest.approx(graycoprops(ref_norm, "homogeneity")[0, 0])
    assert ours["energy"][0] == pytest.approx(graycoprops(ref_norm, "ASM")[0, 0])
    assert ours["corr"][0] == pytest.approx(graycoprops(ref_norm, "correlation")[0, 0])


def test_statistics_match_scipy() -> None:
    from scipy import stats

    rng = np.random.default_rng(6)
    data = rng.gamma(2.0, 10.0, (10, 9, 8))
    mask = rng.random(data.shape) > 0.3
    only_stats = RadiomicsSettings(families=(Family.STATISTICS,))
    f = extract_features(*_pair(data, mask), settings=only_stats)
    x = data[mask]
    assert f["stat_skew"] == pytest.approx(stats.skew(x))
    assert f["stat_kurt"] == pytest.approx(stats.kurtosis(x))  # excess (Fisher)
    assert f["stat_iqr"] == pytest.approx(stats.iqr(x))
    assert f["stat_var"] == pytest.approx(np.var(x))  # no bias correction
    assert f["stat_medad"] == pytest.approx(np.mean(np.abs(x - np.median(x))))


def test_mesh_area_matches_skimage() -> None:
    from skimage import measure

    mask = np.zeros((12, 11, 10), dtype=np.uint8)
    mask[3:9, 2:8, 3:7] = 1
    mask[5, 8, 4] = 1
    spacing = (0.7, 0.9, 1.6)
    roi = prepare_roi(*_pair(np.ones(mask.shape), mask, spacing), settings=RadiomicsSettings())
    f = morphology_features(roi)
    verts, faces, _, _ = measure.marching_cubes(np.pad(mask, 1).astype(float), 0.5, spacing=spacing)
    assert f["area_mesh"] == pytest.approx(measure.mesh_surface_area(verts, faces))
    assert f["vol_approx"] == pytest.approx(mask.sum() * np.prod(spacing))
