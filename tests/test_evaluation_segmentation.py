"""Segmentation metrics: MONAI cross-checks, closed forms, empty-mask conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import (
    DiceMetric,
    HausdorffDistanceMetric,
    MeanIoU,
    SurfaceDiceMetric,
    SurfaceDistanceMetric,
)
from scipy import ndimage

from medai.errors import GeometryError
from medai.evaluation import (
    SegmentationAccumulator,
    compute_absolute_volume_error,
    compute_assd,
    compute_dice,
    compute_hd95,
    compute_iou,
    compute_relative_volume_error,
    compute_segmentation_metrics,
    compute_surface_dice,
)
from medai.image import LabelMap


def _blobs(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=2)


def _onehot(mask: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(mask[None, None].astype(np.float64))
    return torch.cat([1 - x, x], dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.3, 2.5)])
def test_matches_monai_on_random_masks(seed: int, spacing: tuple[float, ...]) -> None:
    """Same surface definition as MONAI (erosion XOR mask, Euclidean to nearest edge voxel)."""
    a, b = _blobs(seed, (24, 20, 12)), _blobs(seed + 100, (24, 20, 12))
    ours = compute_segmentation_metrics(a, b, spacing=spacing, tolerance_mm=2.0)
    p, r = _onehot(a), _onehot(b)
    kw = {"include_background": False}
    expected = {
        "dice": DiceMetric(**kw)(p, r),
        "iou": MeanIoU(**kw)(p, r),
        "hd95": HausdorffDistanceMetric(percentile=95, **kw)(p, r, spacing=spacing),
        "assd": SurfaceDistanceMetric(symmetric=True, **kw)(p, r, spacing=spacing),
        "nsd": SurfaceDiceMetric([2.0], **kw)(p, r, spacing=spacing),
    }
    for key, value in expected.items():
        # MONAI returns float32 for some metrics: compare relative to 1e-6
        assert ours[key] == pytest.approx(float(value.item()), rel=1e-6, abs=1e-6), key


def test_matches_monai_in_2d() -> None:
    a, b = _blobs(7, (40, 30)), _blobs(8, (40, 30))
    ours = compute_segmentation_metrics(a, b, spacing=(0.7, 1.9))
    monai = HausdorffDistanceMetric(include_background=False, percentile=95)(
        _onehot(a), _onehot(b), spacing=(0.7, 1.9)
    )
    assert ours["hd95"] == pytest.approx(float(monai.item()), rel=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_shifted_cube_anisotropic_closed_form(axis: int) -> None:
    """A 6³ cube shifted by k=2 voxels along ``axis``; the other axes are coarser than 2·s.

    Per directed surface (152 shell voxels): the slab at shift-offset 0 (36 voxels) is
    2·s away, offset 1 (ring of 20) is s away, the far face's 16 inner voxels are 2·s
    (the other cube's far face; side faces are further since other spacings ≥ 2·s),
    and the remaining 80 lie on the other surface (0). So ASSD = 124·s/152,
    HD95 = 2·s, NSD(tol = s) = 100/152, Dice = 2/3, IoU = 1/2.
    """
    s = 0.5
    coarse = [2.0, 3.0]
    coarse.insert(axis, s)
    spacing_t = tuple(coarse)
    shape = [10, 10, 10]
    shape[axis] = 12
    a = np.zeros(shape, dtype=bool)
    b = np.zeros(shape, dtype=bool)
    box_a = [slice(2, 8)] * 3
    box_b = [slice(2, 8)] * 3
    box_a[axis], box_b[axis] = slice(1, 7), slice(3, 9)
    a[tuple(box_a)] = True
    b[tuple(box_b)] = True
    m = compute_segmentation_metrics(a, b, spacing=spacing_t, tolerance_mm=s)
    assert m["dice"] == pytest.approx(2 / 3)
    assert m["iou"] == pytest.approx(0.5)
    assert m["hd95"] == pytest.approx(2 * s)
    assert m["assd"] == pytest.approx(124 * s / 152)
    assert m["nsd"] == pytest.approx(100 / 152)
    assert m["abs_volume_error_mm3"] == 0.0
    assert m["volume_ref_mm3"] == pytest.approx(216 * np.prod(spacing_t))


def test_identical_and_disjoint_masks() -> None:
    a = np.zeros((8, 8, 8), dtype=bool)
    a[2:6, 2:6, 2:6] = True
    same = compute_segmentation_metrics(a, a.copy(), spacing=(1.0, 2.0, 3.0))
    assert (same["dice"], same["iou"], same["hd95"], same["assd"], same["nsd"]) == (
        1.0,
        1.0,
        0.0,
        0.0,
        1.0,
    )
    p = np.zeros((8, 3, 3), dtype=bool)
    r = np.zeros((8, 3, 3), dtype=bool)
    p[0, 1, 1] = True
    r[4, 1, 1] = True  # 4 voxels × 0.5 mm apart
    apart = compute_segmentation_metrics(p, r, spacing=(0.5, 1.0, 1.0), tolerance_mm=1.0)
    assert (apart["dice"], apart["iou"], apart["nsd"]) == (0.0, 0.0, 0.0)
    assert apart["hd95"] == pytest.approx(2.0)
    assert apart["assd"] == pytest.approx(2.0)
    assert compute_surface_dice(p, r, spacing=(0.5, 1, 1), tolerance_mm=2.0) == 1.0


def test_empty_mask_conventions() -> None:
    empty = np.zeros((5, 5, 5), dtype=bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    sp = (1.0, 1.0, 1.0)
    both = compute_segmentation_metrics(empty, empty, spacing=sp)
    assert (both["dice"], both["iou"], both["nsd"], both["hd95"], both["assd"]) == (
        1.0,
        1.0,
        1.0,
        0.0,
        0.0,
    )
    assert both["rel_volume_error"] == 0.0
    one = compute_segmentation_metrics(empty, full, spacing=sp)
    assert (one["dice"], one["iou"], one["nsd"]) == (0.0, 0.0, 0.0)
    assert np.isnan(one["hd95"])
    assert np.isnan(one["assd"])
    assert one["rel_volume_error"] == -1.0
    assert compute_hd95(full, empty, spacing=sp, empty_distance=373.13) == 373.13
    assert np.isnan(compute_relative_volume_error(full, empty, spacing=sp))


def test_labelmap_inputs_carry_spacing_and_labels() -> None:
    arr_p = np.zeros((6, 6, 6), dtype=np.int16)
    arr_r = np.zeros((6, 6, 6), dtype=np.int16)
    arr_p[1:3, 1:3, 1:3] = 2
    arr_r[1:3, 1:3, 1:4] = 2
    arr_r[4, 4, 4] = 1
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    pred, ref = LabelMap(arr_p, affine), LabelMap(arr_r, affine)
    assert compute_dice(pred, ref, label=2) == pytest.approx(16 / 20)
    assert compute_iou(pred, ref, label=2) == pytest.approx(8 / 12)
    assert compute_dice(pred, ref, label=1) == 0.0
    assert compute_absolute_volume_error(pred, ref, label=2) == pytest.approx(4 * 0.5)
    assert compute_relative_volume_error(pred, ref, label=2) == pytest.approx(-4 / 12)
    assert compute_assd(pred, ref, label=2) == compute_assd(
        arr_p == 2, arr_r == 2, spacing=(0.5, 0.5, 2.0)
    )
    with pytest.raises(ValueError, match="contradicts the LabelMap spacing"):
        compute_hd95(pred, ref, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(GeometryError, match="different grids"):
        compute_dice(pred, LabelMap(arr_r, np.eye(4)))
    with pytest.raises(ValueError, match=r"spacing \(mm per axis\) is required"):
        compute_hd95(arr_p, arr_r)
    with pytest.raises(GeometryError, match="shapes differ"):
        compute_dice(arr_p, arr_r[:5])


def test_accumulator_per_case_and_mean() -> None:
    acc = SegmentationAccumulator(labels={"core": 2}, tolerance_mm=1.0)
    with pytest.raises(ValueError, match="empty"):
        acc.aggregate()
    a = np.zeros((6, 6, 6), dtype=np.int16)
    a[1:4, 1:4, 1:4] = 2
    b = a.copy()
    b[1, 1, 1] = 0
    acc.update(a, a, case_id="same", spacing=(1, 1, 1))
    acc.update(a, b, case_id="minus1", spacing=(1, 1, 1))
    frame = acc.per_case()
    assert list(frame["case_id"]) == ["same", "minus1"]
    assert frame.loc[1, "core/dice"] == pytest.approx(2 * 26 / 53)
    assert acc.aggregate()["core/dice"] == pytest.approx((1 + 2 * 26 / 53) / 2)
    acc.reset()
    assert acc.per_case().empty
