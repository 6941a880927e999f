"""Secondary-capture overlay: one RGB instance per source slice that a plain viewer shows,
read back with pydicom, checked pixel by pixel against the label map, validated with dciodvfy."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from _dicom_outputs import ALGO, BRAIN_REGIONS, dciodvfy_errors, mr2_series, oblique_study
from medai.errors import GeometryError
from medai.image import LabelMap
from medai.io import write_overlay_sc
from medai.io.dicom_derived import region_colour
from medai.io.dicom_geometry import LPS_TO_RAS


def _outline(mask: np.ndarray) -> np.ndarray:
    """In-plane outline of a 2D mask (pixels with a 4-neighbour outside it)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def test_overlay_of_oblique_anisotropic_series(tmp_path) -> None:
    folder, image, label = oblique_study(tmp_path)
    files = write_overlay_sc(
        image, label, folder, regions=BRAIN_REGIONS, algorithm=ALGO, out_dir=tmp_path / "ov"
    )
    assert len(files) == image.shape[2]
    sources = {}
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sources[str(ds.SOPInstanceUID)] = ds
    first = next(iter(sources.values()))
    volume = label.numpy3d()
    coloured = 0
    sop_uids = set()
    for path in files:
        sc = pydicom.dcmread(path)
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
        assert (sc.PhotometricInterpretation, sc.SamplesPerPixel) == ("RGB", 3)
        assert (sc.BitsAllocated, sc.PlanarConfiguration) == (8, 0)
        assert sc.StudyInstanceUID == first.StudyInstanceUID
        assert sc.SeriesInstanceUID != first.SeriesInstanceUID
        assert sc.SOPInstanceUID not in sources
        sop_uids.add(sc.SOPInstanceUID)
        assert sc.file_meta.MediaStorageSOPInstanceUID == sc.SOPInstanceUID
        ref = sources[str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        # the instance's slice is the one its source instance lies at
        ras = LPS_TO_RAS[:3, :3] @ np.asarray(ref.ImagePositionPatient, float)
        z = round(float(image.world_to_voxel(ras[None])[0][2]))
        assert sc.InstanceNumber == z + 1
        rgb = sc.pixel_array  # (rows, columns, 3)
        assert rgb.shape == (ref.Rows, ref.Columns, 3)
        last = np.full(rgb.shape[:2], -1)  # the region drawn last wins a pixel
        for index, values in enumerate(BRAIN_REGIONS.values()):
            last[_outline(np.isin(volume[:, :, z], values).T)] = index
        grey = last < 0
        assert np.array_equal(rgb[..., 0][grey], rgb[..., 1][grey])  # grey: R = G = B
        assert np.array_equal(rgb[..., 1][grey], rgb[..., 2][grey])
        for index, name in enumerate(BRAIN_REGIONS):
            assert np.all(rgb[last == index] == region_colour(name, index))
        coloured += int((~grey).sum())
    assert coloured > 0
    assert len(sop_uids) == len(files)
    assert dciodvfy_errors(files[len(files) // 2]) == []


def test_overlay_is_deterministic_and_replaces_an_earlier_run(tmp_path) -> None:
    folder, image, label = mr2_series(tmp_path)
    regions = {"lesion": [1, 2], "core": [2]}
    out = tmp_path / "ov"
    (a,) = write_overlay_sc(image, label, folder, regions=regions, algorithm=ALGO, out_dir=out)
    first = pydicom.dcmread(a)
    (b,) = write_overlay_sc(image, label, folder, regions=regions, algorithm=ALGO, out_dir=out)
    again = pydicom.dcmread(b)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (
        again.SeriesInstanceUID,
        again.SOPInstanceUID,
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert again.pixel_array.shape == (1024, 1024, 3)
    assert dciodvfy_errors(b) == []


def test_overlay_refuses_a_label_map_off_the_grid(tmp_path) -> None:
    folder, image, label = oblique_study(tmp_path)
    affine = label.affine.copy()
    affine[0, 3] += 1.0  # one millimetre off
    shifted = LabelMap(label.numpy3d(), affine)
    with pytest.raises(GeometryError, match="not on the grid"):
        write_overlay_sc(
            image, shifted, folder, regions=BRAIN_REGIONS, algorithm=ALGO, out_dir=tmp_path / "x"
        )
    assert not (tmp_path / "x").exists()
