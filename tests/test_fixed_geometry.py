"""medai.preprocess.fixed_geometry: from the network's fixed-size grid back to the input's."""

from __future__ import annotations

import numpy as np
import pytest

from medai.image import ScalarImage
from medai.preprocess.fixed import fixed_input
from medai.preprocess.fixed_geometry import (
    fixed_geometry,
    fixed_input_with_geometry,
    to_input_grid,
)
from medai.preprocess.task_plan import FixedNormalisation, InputPlan


def _head_with_blob(
    shape: tuple[int, int, int], head: tuple[slice, ...], blob: tuple[int, int, int]
) -> np.ndarray:
    """Zeros, a head box of 1 and a bright 3-voxel cube (value 5) centred at ``blob``."""
    data = np.zeros(shape, dtype=np.float32)
    data[head] = 1.0
    data[tuple(slice(c - 1, c + 2) for c in blob)] = 5.0
    return data


def _centroid(values: np.ndarray, above: float) -> np.ndarray:
    return np.argwhere(values > above).mean(axis=0)


def test_exact_steps_round_trip_exactly_on_an_lps_grid() -> None:
    """Reorientation, crop and centre pad move voxels without interpolation: back on the
    input grid, every voxel is the input's again (zeros outside the head included)."""
    data = _head_with_blob((30, 26, 12), (slice(4, 20), slice(6, 22), slice(2, 10)), (10, 9, 5))
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])  # L, P, S: reorientation flips x and y
    image = ScalarImage(data, affine)
    settings = InputPlan(spatial_dims=3, size=(24, 24, 16), normalise=FixedNormalisation.NONE)
    array, geometry = fixed_input_with_geometry(image, settings)
    np.testing.assert_array_equal(array, fixed_input(image, **settings.model_dump()))
    assert geometry.reoriented
    assert geometry.zoom == 1.0
    assert geometry.crop_box is not None
    assert geometry.input_shape == (30, 26, 12)
    back = to_input_grid(array[0], geometry)
    assert back.shape == image.shape
    np.testing.assert_allclose(back, data, atol=1e-5)


def test_a_blob_lands_where_it_was_after_resampling_and_shrinking() -> None:
    data = _head_with_blob((48, 40, 20), (slice(2, 46), slice(3, 37), slice(1, 19)), (30, 12, 8))
    affine = np.diag([1.0, 1.2, 2.5, 1.0])
    affine[:3, 3] = [-20.0, 15.0, 4.0]
    image = ScalarImage(data, affine)
    settings = InputPlan(spatial_dims=3, spacing=(1.5, 1.5, 1.5), size=(16, 16, 16))
    array, geometry = fixed_input_with_geometry(image, settings)
    assert geometry.zoom > 1.0
    assert geometry.spacing == pytest.approx((1.5, 1.5, 1.5), abs=0.01)
    back = to_input_grid(array[0], geometry)
    assert back.shape == image.shape
    peak = np.unravel_index(int(np.argmax(back)), back.shape)
    assert np.abs(np.subtract(peak, (30, 12, 8))).max() <= 1
    np.testing.assert_allclose(_centroid(back, 0.5 * back.max()), (30, 12, 8), atol=1.0)


def test_outside_the_network_field_of_view_is_zero() -> None:
    """A small head in a large image: the padded 16³ grid covers the head and a margin,
    not the image's far corners."""
    data = _head_with_blob(
        (60, 60, 30), (slice(24, 34), slice(25, 35), slice(10, 18)), (28, 30, 14)
    )
    image = ScalarImage(data)
    geometry = fixed_geometry(image, InputPlan(spatial_dims=3, size=(16, 16, 16)))
    back = to_input_grid(np.ones((16, 16, 16), dtype=np.float32), geometry)
    box = geometry.crop_box
    assert box == ((24, 34), (25, 35), (10, 18))
    assert back[0, 0, 0] == 0.0
    assert back[59, 59, 29] == 0.0
    assert np.all(back[24:34, 25:35, 10:18] == 1.0)  # the head is inside the view
    inside = np.argwhere(back > 0)
    assert (inside.max(axis=0) - inside.min(axis=0) + 1).tolist() == [16, 16, 16]


def test_2d_round_trip_keeps_the_slice_and_refuses_other_shapes() -> None:
    data = _head_with_blob((40, 30, 3), (slice(5, 35), slice(4, 28), slice(0, 3)), (12, 20, 1))
    image = ScalarImage(data[..., 1:2], np.diag([0.8, 0.8, 5.0, 1.0]))
    settings = InputPlan(spatial_dims=2, size=(16, 16))
    array, geometry = fixed_input_with_geometry(image, settings, channels=1)
    assert array.shape == (1, 16, 16)
    assert geometry.network_shape == (16, 16)
    back = to_input_grid(array[0], geometry)
    assert back.shape == (40, 30, 1)
    peak = np.unravel_index(int(np.argmax(back)), back.shape)
    assert np.abs(np.subtract(peak, (12, 20, 0))).max() <= 1
    with pytest.raises(ValueError, match="network's grid"):
        to_input_grid(array, geometry)
    with pytest.raises(ValueError, match="NaN"):
        to_input_grid(np.full((16, 16), np.nan), geometry)
