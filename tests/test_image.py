import numpy as np
import pytest

from medai import LabelMap, ScalarImage
from medai.io import read_nifti, write_nifti


def test_geometry_properties_from_affine() -> None:
    affine = np.array([[-2.0, 0, 0, 10], [0, 0, 3.0, -5], [0, 1.5, 0, 7], [0, 0, 0, 1]])
    img = ScalarImage(np.zeros((5, 6, 7)), affine)
    assert img.shape == (5, 6, 7)
    assert img.num_channels == 1
    assert img.spacing == pytest.approx((2.0, 1.5, 3.0))
    assert img.origin == (10.0, -5.0, 7.0)
    assert img.orientation == ("L", "S", "A")


def test_2d_image_is_the_z1_case() -> None:
    img = ScalarImage(np.ones((4, 3)))
    assert img.shape == (4, 3, 1)
    assert img.is_2d


@pytest.mark.parametrize(
    ("affine", "match"),
    [
        (np.eye(3), "4x4"),
        (np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
        (np.full((4, 4), np.nan), "finite"),
    ],
)
def test_bad_affine_is_rejected_with_reason(affine: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ScalarImage(np.zeros((2, 2, 2)), affine)


def test_bad_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        ScalarImage(np.zeros((1, 2, 2, 2, 2)))


def test_label_map_refuses_fractions() -> None:
    with pytest.raises(TypeError, match="integer"):
        LabelMap(np.full((2, 2, 2), 0.5))
    lab = LabelMap(np.array([[[0.0, 2.0]]]))
    assert np.issubdtype(lab.array.dtype, np.integer)
    assert lab.labels == (0, 2)


def test_world_to_voxel_inverts_affine() -> None:
    affine = np.array([[0, -2.0, 0, 1], [1.0, 0, 0, 2], [0, 0, 4.0, 3], [0, 0, 0, 1]])
    img = ScalarImage(np.zeros((3, 3, 3)), affine)
    ijk = np.array([[1.0, 2.0, 0.5]])
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    np.testing.assert_allclose(img.world_to_voxel(world), ijk)


def test_nifti_round_trip_4d_channels_first(tmp_path) -> None:
    rng = np.random.default_rng(0)
    affine = np.array([[0, 0, 2.5, -3], [-1.2, 0, 0, 4], [0, 0.8, 0, 5], [0, 0, 0, 1]])
    img = ScalarImage(rng.random((4, 6, 5, 3)).astype(np.float32), affine)
    back = read_nifti(write_nifti(img, tmp_path / "x.nii.gz"))
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)


def test_nifti_label_round_trip_keeps_integers(tmp_path) -> None:
    lab = LabelMap(np.arange(8, dtype=np.uint8).reshape(2, 2, 2))
    back = read_nifti(write_nifti(lab, tmp_path / "l.nii"), kind=LabelMap)
    assert isinstance(back, LabelMap)
    np.testing.assert_array_equal(back.array, lab.array)


def test_unreadable_nifti_names_the_file(tmp_path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match=r"broken\.nii\.gz"):
        read_nifti(bad)


def test_atomic_writes_get_normal_permissions(tmp_path) -> None:
    import os

    from medai.fsutil import atomic_write_text

    target = tmp_path / "report.html"
    atomic_write_text(target, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert not list(tmp_path.glob(".report.html.*"))
