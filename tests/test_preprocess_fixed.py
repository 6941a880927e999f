"""medai.preprocess.fixed: fixed-size classification input, and its per-case cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medai.data import Case, Dataset, TaskType
from medai.errors import ConfigError, DatasetError
from medai.image import ScalarImage
from medai.io import read_image, write_nifti, write_png
from medai.preprocess.fixed import fixed_input, preprocess_fixed
from medai.preprocess.steps import zscore_in_mask
from medai.preprocess.task_plan import InputPlan

RNG = np.random.default_rng(0)


def _volume(
    box: tuple[slice, slice, slice], shape: tuple[int, int, int] = (40, 40, 40)
) -> np.ndarray:
    """Zeros with random intensities in 1..2 inside ``box``."""
    data = np.zeros(shape, dtype=np.float32)
    data[box] = RNG.uniform(1.0, 2.0, size=data[box].shape)
    return data


def _box_of(array: np.ndarray) -> list[tuple[int, int]]:
    """Half-open index box of the non-zero entries of a (C, *spatial) array."""
    mask = np.any(array != 0, axis=0)
    out = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        out.append((int(hit[0]), int(hit[-1]) + 1))
    return out


def test_3d_box_is_centred_in_the_exact_size_unchanged() -> None:
    data = _volume((slice(5, 13), slice(20, 30), slice(2, 8)))  # an 8 x 10 x 6 box
    out = fixed_input(
        ScalarImage(data), spatial_dims=3, spacing=None, size=(16, 16, 16), normalise="none"
    )
    assert out.shape == (1, 16, 16, 16)
    assert out.dtype == np.float32
    assert _box_of(out) == [(4, 12), (3, 13), (5, 11)]
    np.testing.assert_array_equal(out[0, 4:12, 3:13, 5:11], data[5:13, 20:30, 2:8])


def test_a_box_larger_than_size_shrinks_by_one_factor() -> None:
    data = _volume((slice(0, 40), slice(10, 30), slice(15, 25)))  # 40 x 20 x 10
    out = fixed_input(
        ScalarImage(data), spatial_dims=3, spacing=None, size=(20, 20, 20), normalise="none"
    )
    assert out.shape == (1, 20, 20, 20)
    assert _box_of(out) == [(0, 20), (5, 15), (7, 12)]  # 20 x 10 x 5: halved, centred


def test_spacing_resamples_first() -> None:
    data = _volume((slice(8, 24), slice(8, 24), slice(8, 24)), shape=(32, 32, 32))
    out = fixed_input(
        ScalarImage(data, np.diag([1.0, 1.0, 1.0, 1.0])),
        spatial_dims=3,
        spacing=(2.0, 2.0, 2.0),
        size=(16, 16, 16),
        normalise="none",
    )
    extents = [hi - lo for lo, hi in _box_of(out)]
    assert all(8 <= e <= 9 for e in extents), extents  # 16 mm at 2 mm, ± an edge voxel


def test_zscore_over_the_foreground_per_channel() -> None:
    box = (slice(3, 12), slice(4, 10), slice(5, 9))
    two = np.stack([_volume(box, (16, 16, 16)), 100.0 * _volume(box, (16, 16, 16))])
    out = fixed_input(ScalarImage(two), spatial_dims=3, spacing=None, size=(12, 12, 12))
    fg = np.any(out != 0, axis=0)
    assert int(fg.sum()) == 9 * 6 * 4
    for c in range(2):
        np.testing.assert_allclose(out[c][fg].mean(), 0.0, atol=1e-5)
        np.testing.assert_allclose(out[c][fg].std(), 1.0, atol=1e-5)
    cropped = ScalarImage(two[(slice(None), *box)])
    expected = zscore_in_mask(cropped, np.ones(cropped.shape, dtype=bool)).array
    np.testing.assert_allclose(out[:, 1:10, 3:9, 4:8], expected, atol=1e-5)


def test_without_cropping_zero_is_data_and_only_padding_stays_zero() -> None:
    data = _volume((slice(2, 4), slice(2, 4), slice(2, 4)), shape=(6, 6, 6))
    out = fixed_input(
        ScalarImage(data), spatial_dims=3, spacing=None, size=(8, 8, 8), crop_to_foreground=False
    )
    inside = out[0, 1:7, 1:7, 1:7]
    np.testing.assert_allclose(inside.mean(), 0.0, atol=1e-5)
    assert np.all(inside[0, 0] < 0)  # a zero voxel of the image is below the mean
    assert np.count_nonzero(out) == 6**3


def test_2d_png_gives_channels_by_size(tmp_path: Path) -> None:
    pixels = np.zeros((30, 20, 1), dtype=np.uint8)
    pixels[5:15, 4:12, 0] = RNG.integers(1, 255, size=(10, 8))
    image = read_image(write_png(ScalarImage(pixels), tmp_path / "x.png"))
    out = fixed_input(image, spatial_dims=2, spacing=None, size=(24, 24), normalise="none")
    assert out.shape == (1, 24, 24)
    assert [hi - lo for lo, hi in _box_of(out)] == [10, 8]
    coarse = fixed_input(image, spatial_dims=2, spacing=(2.0, 2.0), size=(24, 24))
    assert coarse.shape == (1, 24, 24)
    assert [hi - lo for lo, hi in _box_of(coarse)] == [6, 4]  # 10 x 8 px at 2 px, edges partial


@pytest.mark.parametrize(
    ("array", "kw", "match"),
    [
        (np.full((4, 4, 4), np.nan), {}, r"case 'c7': image holds 64 NaN"),
        (np.zeros((4, 4, 4)), {}, r"case 'c7': image has no non-zero voxel"),
        (np.ones((2, 4, 4, 4)), {"channels": 1}, r"case 'c7': image has 2 channel\(s\); 1"),
        (np.ones((4, 4, 1)), {}, r"case 'c7': image has one slice .* spatial_dims=2"),
    ],
)
def test_bad_images_are_refused_naming_the_case(
    array: np.ndarray, kw: dict[str, int], match: str
) -> None:
    image = ScalarImage(array, meta={"case_id": "c7"})
    with pytest.raises(DatasetError, match=match):
        fixed_input(image, spatial_dims=3, spacing=None, size=(4, 4, 4), **kw)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"input.size \(4, 4, 4\) must give 2 positive sides"):
        fixed_input(ScalarImage(np.ones((4, 4))), spatial_dims=2, spacing=None, size=(4, 4, 4))
    with pytest.raises(ConfigError, match="normalise"):
        fixed_input(
            ScalarImage(np.ones((4, 4))),
            spatial_dims=2,
            spacing=None,
            size=(4, 4),
            normalise="minmax",
        )


def _dataset(root: Path) -> Dataset:
    cases = []
    for i in range(2):
        path = write_nifti(
            ScalarImage(_volume((slice(2, 10), slice(3, 9), slice(4, 8)), (12, 12, 12))),
            root / f"c{i}.nii",  # uncompressed: a rewrite keeps its size
        )
        cases.append(Case(patient_id=f"p{i}", case_id=f"c{i}", image=path, target="a"))
    return Dataset(name="cls", task=TaskType.CLASSIFICATION, classes=["a", "b"], cases=cases)


def test_cache_hits_until_a_file_or_the_settings_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = _dataset(tmp_path)
    settings = InputPlan(spatial_dims=3, size=(10, 10, 10))
    seen: list[tuple[int, int]] = []
    first = preprocess_fixed(
        ds.cases,
        dataset=ds,
        settings=settings,
        cache_dir=tmp_path / "cache",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(1, 2), (2, 2)]
    assert np.load(first["c0"]).shape == (1, 10, 10, 10)

    loads: list[str] = []
    real = Dataset.load_case_image
    monkeypatch.setattr(
        Dataset,
        "load_case_image",
        lambda self, case: loads.append(case.case_id) or real(self, case),
    )
    assert preprocess_fixed(ds.cases, dataset=ds, settings=settings, cache_dir=tmp_path / "cache")
    assert loads == []  # every case was a hit

    path = ds.cases[1].image
    assert path is not None
    write_nifti(ScalarImage(_volume((slice(0, 12),) * 3, (12, 12, 12))), path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = preprocess_fixed(ds.cases, dataset=ds, settings=settings, cache_dir=tmp_path / "cache")
    assert loads == ["c1"]
    assert again["c0"] == first["c0"]
    assert again["c1"] != first["c1"]
    assert not np.array_equal(np.load(again["c1"]), np.load(first["c1"]))

    other = InputPlan(spatial_dims=3, size=(12, 12, 12))
    third = preprocess_fixed(ds.cases, dataset=ds, settings=other, cache_dir=tmp_path / "cache")
    assert loads == ["c1", "c0", "c1"]
    assert np.load(third["c0"]).shape == (1, 12, 12, 12)
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary file left behind


def test_a_nan_case_stops_with_its_id_and_writes_nothing(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    data = _volume((slice(2, 10),) * 3, (12, 12, 12))
    data[5, 5, 5] = np.nan
    write_nifti(ScalarImage(data), ds.cases[1].image)  # type: ignore[arg-type]
    settings = InputPlan(spatial_dims=3, size=(10, 10, 10))
    with pytest.raises(DatasetError, match="case 'c1': image holds 1 NaN"):
        preprocess_fixed(ds.cases[1:], dataset=ds, settings=settings, cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").iterdir())
