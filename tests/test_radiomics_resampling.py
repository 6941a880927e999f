"""IBSI image processing before feature extraction, checked against exact arithmetic.

The reference below interpolates with Python fractions on the IBSI centre-aligned grid
(reference manual: grid QCY4, grid size 026Q with border padding, ROI partial volume
E8H9, rounding 68QD, re-segmentation IF9H/7ACA), so it holds no floating-point noise:
a value that is exactly ½ or ``k + ½`` stays so. The last tests cover what follows
from such noise in the first-order features: intensities equal in exact arithmetic but a
few ulp apart must still count as equal.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import ndimage

from medai.image import LabelMap, ScalarImage
from medai.radiomics import Family, RadiomicsSettings, extract_features, prepare_roi


def _grid(n: int, old: str, new: str) -> list[Fraction]:
    """IBSI grid points (old-grid coordinates) along one axis, exactly."""
    ratio = Fraction(new) / Fraction(old)
    n_new = math.ceil(n * Fraction(old) / Fraction(new))
    origin = ((n - 1) - ratio * (n_new - 1)) / 2
    return [origin + k * ratio for k in range(n_new)]


def _weights(x: Fraction, n: int) -> list[tuple[int, Fraction]]:
    """Linear weights of the voxels around ``x``; beyond the border, the border voxel."""
    i0 = math.floor(x)
    t = x - i0
    pairs = [(i0, 1 - t), (i0 + 1, t)]
    return [(min(max(i, 0), n - 1), w) for i, w in pairs if w != 0]


def _trilinear(
    data: np.ndarray, points: list[list[Fraction]], at: list[tuple] | None = None
) -> dict[tuple, Fraction]:
    """Exact values at the grid points ``at``; default: every point that can be non-zero."""
    weights = [[_weights(x, n) for x in axis] for axis, n in zip(points, data.shape, strict=True)]
    if at is None:
        ranges = []
        for axis, idx in zip(points, np.nonzero(data), strict=True):
            lo, hi = int(idx.min()), int(idx.max())
            ranges.append([m for m, x in enumerate(axis) if lo - 1 <= math.floor(x) <= hi])
        at = list(itertools.product(*ranges))
    out = {}
    for idx in at:
        value = Fraction(0)
        for (i, a), (j, b), (k, c) in itertools.product(
            *(w[m] for w, m in zip(weights, idx, strict=True))
        ):
            value += a * b * c * int(data[i, j, k])
        out[idx] = value
    return out


def _exact_roi(
    image: np.ndarray | None, mask: np.ndarray, spacing: str, target: str
) -> tuple[list[tuple], dict[tuple, Fraction]]:
    """Morphological-mask points (mask ≥ ½) and exact trilinear intensities there."""
    points = [_grid(n, spacing, target) for n in mask.shape]
    inside = [idx for idx, v in _trilinear(mask, points).items() if v >= Fraction(1, 2)]
    values = {} if image is None else _trilinear(image, points, at=inside)
    return inside, values


def _pair(image: np.ndarray, mask: np.ndarray, spacing: float):
    affine = np.diag([spacing, spacing, spacing, 1.0])
    return ScalarImage(image.astype(np.float64), affine), LabelMap(mask.astype(np.uint8), affine)


def _box_case(lo: int, shape: tuple[int, int, int] = (25, 25, 26), size: int = 10, seed: int = 3):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, shape)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[lo : lo + size, lo + 1 : lo + size, lo : lo + size - 1] = 1
    return image, mask


def test_interpolated_roi_and_rounding_match_exact_arithmetic() -> None:
    # 1.5 mm -> 2 mm on 25 x 25 x 26 voxels: the new grid points fall on 0, 1/3, 2/3 of a
    # voxel along x and y and on 1/6, 1/2, 5/6 along z, so many mask values are exactly
    # 1/2 (kept: R >= 0.5) and many intensities exactly k + 1/2 (rounded to even).
    image, mask = _box_case(lo=7)
    inside, values = _exact_roi(image, mask, "1.5", "2")
    points = [_grid(n, "1.5", "2") for n in mask.shape]
    assert sum(v == Fraction(1, 2) for v in _trilinear(mask, points).values()) > 20
    assert sum(values[idx].denominator == 2 for idx in inside) > 20
    img, lab = _pair(image, mask, 1.5)
    s = RadiomicsSettings(resample_spacing=(2.0, 2.0, 2.0), round_intensities=True)
    roi = prepare_roi(img, lab, settings=s)
    assert int(roi.morph_mask.sum()) == len(inside)
    expected = sorted(float(round(values[idx])) for idx in inside)  # ties to even
    assert sorted(roi.image[roi.morph_mask].tolist()) == expected


def test_partial_volume_of_exactly_one_half_is_kept() -> None:
    # A holed ROI whose interpolated mask is exactly 1/2 at some grid points; in
    # floating point one of them comes out a few ulp below 1/2 (IBSI E8H9 keeps it).
    rng = np.random.default_rng(3)
    mask = np.zeros((25, 25, 26), dtype=np.uint8)
    mask[8:16, 8:16, 8:17] = rng.random((8, 8, 9)) < 0.7
    inside, _ = _exact_roi(None, mask, "1.5", "2")
    img, lab = _pair(np.zeros(mask.shape), mask, 1.5)
    roi = prepare_roi(img, lab, settings=RadiomicsSettings(resample_spacing=(2.0, 2.0, 2.0)))
    assert int(roi.morph_mask.sum()) == len(inside) == 196


def test_roi_touching_the_image_border_keeps_the_extrapolated_layer() -> None:
    # IBSI 026Q: the grid reaches up to half a voxel beyond the outer voxel centres and
    # is filled by padding with the border values, for the image and the mask.
    image, mask = _box_case(lo=0, shape=(16, 17, 16), size=8)
    inside, values = _exact_roi(image, mask, "1.5", "2")
    img, lab = _pair(image, mask, 1.5)
    s = RadiomicsSettings(resample_spacing=(2.0, 2.0, 2.0), round_intensities=True)
    roi = prepare_roi(img, lab, settings=s)
    assert int(roi.morph_mask.sum()) == len(inside)
    expected = sorted(float(round(values[idx])) for idx in inside)
    assert sorted(roi.image[roi.morph_mask].tolist()) == expected


def test_tricubic_on_a_crop_equals_tricubic_on_the_whole_image() -> None:
    rng = np.random.default_rng(7)
    image = ndimage.gaussian_filter(rng.normal(0.0, 100.0, (40, 40, 40)), 1.0)
    image = np.round(image * 10.0) + 500.0
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[16:24, 17:24, 16:23] = 1
    inside, _ = _exact_roi(None, mask, "1.5", "2")
    points = [np.array([float(x) for x in _grid(40, "1.5", "2")])] * 3
    whole = ndimage.map_coordinates(
        image, np.meshgrid(*points, indexing="ij"), order=3, mode="nearest"
    )
    expected = np.sort([whole[idx] for idx in inside])
    img, lab = _pair(image, mask, 1.5)
    s = RadiomicsSettings(resample_spacing=(2.0, 2.0, 2.0), interpolation_order=3)
    roi = prepare_roi(img, lab, settings=s)
    got = np.sort(roi.image[roi.morph_mask])
    assert got.size == expected.size
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * np.ptp(image))


def test_outlier_range_comes_from_the_roi_not_from_the_range_resegmented_voxels() -> None:
    # 95 voxels at 0, 5 at 4 and one at 1000, range (-inf, 100] and 3 sigma outliers.
    # IBSI: mu, sigma of the ROI (10.1, 99.0) -> outlier range [-287, 307]; the
    # intersection with the range keeps the 100 voxels at 0 and 4. Taking mu, sigma
    # after the range (0.2, 0.87) would also drop the five 4s.
    values = np.array([0.0] * 95 + [4.0] * 5 + [1000.0]).reshape(101, 1, 1)
    img, lab = _pair(values, np.ones(values.shape), 1.0)
    both = RadiomicsSettings(resegment_range=(None, 100.0), outlier_sigma=3.0)
    roi = prepare_roi(img, lab, settings=both)
    assert int(roi.int_mask.sum()) == 100
    assert sorted(set(roi.values.tolist())) == [0.0, 4.0]
    assert int(roi.morph_mask.sum()) == 101


def test_trilinear_resampling_does_not_depend_on_the_rest_of_the_image() -> None:
    # Crop-based processing must equal the same ROI embedded in a larger image.
    image, mask = _box_case(lo=7)
    big_image = np.pad(image, 12, mode="reflect")
    big_mask = np.pad(mask, 12)
    s = RadiomicsSettings(resample_spacing=(2.0, 2.0, 2.0), interpolation_order=1)
    small = prepare_roi(*_pair(image, mask, 1.5), settings=s)
    # 12 more voxels of 1.5 mm on each side shift the centre-aligned grid by 9 points of
    # 2 mm exactly, so the small image's grid points coincide with the big one's.
    big = prepare_roi(*_pair(big_image, big_mask, 1.5), settings=s)
    assert int(small.morph_mask.sum()) == int(big.morph_mask.sum())
    np.testing.assert_allclose(
        np.sort(small.image[small.morph_mask]), np.sort(big.image[big.morph_mask]), atol=1e-9
    )


def _first_order(values: np.ndarray, family: Family) -> dict[str, float]:
    img, lab = _pair(values.reshape(-1, 1, 1), np.ones((values.size, 1, 1)), 1.0)
    return extract_features(img, lab, settings=RadiomicsSettings(families=(family,)))


def test_robust_deviation_keeps_values_equal_to_p90_up_to_float_noise() -> None:
    # Interpolation leaves exactly equal intensities a few ulp apart; both 9s lie on
    # p90 in exact arithmetic and belong to the p10-p90 range.
    clean = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 10], dtype=np.float64)
    noisy = clean.copy()
    noisy[10] = 9.0 + 1e-12
    expected = _first_order(clean, Family.STATISTICS)["stat_rmad"]
    assert expected == pytest.approx(np.mean(np.abs(clean[2:11] - clean[2:11].mean())))
    assert _first_order(noisy, Family.STATISTICS)["stat_rmad"] == pytest.approx(expected)


def test_local_peak_takes_the_best_of_maximum_voxels_tied_up_to_float_noise() -> None:
    # Two maximum-intensity voxels (100 and 100 + 1e-11): IBSI takes the higher of
    # their peaks, the one at index 22 in a bright neighbourhood. The 1 cc sphere
    # (radius 6.2 mm) spans 13 voxels of 1 mm: (8 · 50 + 100) / 13 there.
    clean = np.zeros(30)
    clean[18:27] = 50.0
    clean[4], clean[22] = 100.0, 100.0
    noisy = clean.copy()
    noisy[4] = 100.0 + 1e-11
    expected = _first_order(clean, Family.LOCAL_INTENSITY)["loc_peak_loc"]
    assert expected == pytest.approx(500.0 / 13.0)
    assert _first_order(noisy, Family.LOCAL_INTENSITY)["loc_peak_loc"] == pytest.approx(expected)
