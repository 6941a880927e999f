"""The study flow's return to the input grid: resampling only the box the crop can
reach gives the values of resampling the whole uncropped grid."""

from __future__ import annotations

import numpy as np
import pytest

from _seg_cohort import grid_affine, world_phantom
from medai.image import ScalarImage
from medai.inference.study import _back_to_input, _input_box
from medai.preprocess import Plan, preprocess_image
from medai.preprocess.steps import resample_to_grid, uncrop


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


@pytest.mark.parametrize(
    ("shape", "spacing", "rotation"),
    [
        ((64, 62, 56), (1.0, 1.0, 1.0), _rotation(0, 0)),
        ((44, 36, 40), (1.5, 2.0, 1.2), _rotation(20, 12)),  # oblique, anisotropic
        ((72, 68, 22), (0.9, 0.9, 3.0), _rotation(-35, 5)),  # thick slices
    ],
)
def test_box_resampling_equals_whole_grid_resampling(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], rotation: np.ndarray
) -> None:
    img, _ = world_phantom(shape, grid_affine(shape, spacing, rotation))
    pre = preprocess_image(img, Plan().preprocess)
    rec = pre.record
    probs = np.random.default_rng(0).random((3, *pre.image.shape)).astype(np.float32)
    cropped = ScalarImage(probs, pre.image.affine)
    full = uncrop(cropped, rec.bbox, rec.resampled_shape, rec.resampled_affine)
    want = resample_to_grid(full, rec.input_shape, rec.input_affine, order=1).array
    got = _back_to_input(cropped, rec)
    np.testing.assert_allclose(got.array, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got.affine, rec.input_affine)
    box = _input_box(rec)
    assert box is not None
    inside = np.prod([hi - lo for lo, hi in box])
    assert inside < 0.9 * np.prod(shape)  # the box saves work: the brain leaves a margin
    assert np.count_nonzero(want) > 0.3 * want.size  # and the comparison covers real values
