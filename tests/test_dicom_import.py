"""`medai data import` of DICOM folders annotated with SEG or RTSTRUCT.

A SEG written by medai comes back as the exact label map (values included) on an
oblique, anisotropic series; an RTSTRUCT written from known polygons comes back within
one voxel of its contours; a SEG or RTSTRUCT that cannot be placed, and a corrupt file,
end in one error line naming the file and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage
from skimage.measure import find_contours
from typer.testing import CliRunner

from _dicom_outputs import ALGO, dciodvfy_errors, oblique_study
from _rtstruct import Contours, ellipse, expected_masks, write_rtstruct
from medai.cli.main import app
from medai.data import Dataset, import_dataset
from medai.errors import DatasetError
from medai.io import read_image, read_label, write_seg

runner = CliRunner()
#: BraTS label values (1 necrosis, 2 oedema, 4 enhancing) and their nested regions.
BRATS = {1: 2, 2: 1, 3: 4}
BRATS_REGIONS = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}


def _import(folder: Path, out: Path) -> Dataset:
    result = runner.invoke(app, ["data", "import", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return Dataset.load(out)


def _error_line(folder: Path, out: Path) -> str:
    result = runner.invoke(app, ["data", "import", str(folder), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    return line


@pytest.mark.parametrize("omit_empty_frames", [False, True])
def test_seg_by_medai_imports_back_exactly(tmp_path: Path, omit_empty_frames: bool) -> None:
    folder, image, label = oblique_study(tmp_path / "archive", labels_of=BRATS)
    assert set(np.unique(label.array)) == {0, 1, 2, 4}
    write_seg(
        label,
        folder,
        regions=BRATS_REGIONS,
        algorithm=ALGO,
        out_path=folder / "seg.dcm",
        omit_empty_frames=omit_empty_frames,
    )
    ds = _import(tmp_path / "archive", tmp_path / "ds.yaml")
    assert ds.regions == BRATS_REGIONS
    assert sorted(ds.labels) == [0, 1, 2, 4]
    (case,) = ds.cases
    assert case.image.parent == tmp_path / "ds_images" / "images"
    back = read_label(case.label)
    assert np.allclose(back.affine, label.affine, atol=1e-4)
    assert back.array.dtype.kind in "iu"
    assert np.array_equal(back.numpy3d(), label.numpy3d())  # exactly, values included
    assert np.array_equal(read_image(case.image).numpy3d(), image.numpy3d())
    assert case.clinical["annotation"] == "SEG"


def test_seg_of_another_writer_imports_its_segments_as_regions(tmp_path: Path) -> None:
    folder, _image, label = oblique_study(tmp_path / "archive", labels_of=BRATS)
    seg = pydicom.dcmread(
        write_seg(label, folder, regions=BRATS_REGIONS, algorithm=ALGO, out_path=tmp_path / "s")
    )
    for segment in seg.SegmentSequence:  # no medai label record: a foreign SEG
        del segment.SegmentDescription
    seg.save_as(folder / "seg.dcm")
    ds = import_dataset(tmp_path / "archive", out_dir=tmp_path / "out")
    back = read_label(ds.cases[0].label).numpy3d()
    assert list(ds.regions) == ["WT", "TC", "ET"]
    for name, values in BRATS_REGIONS.items():
        assert np.array_equal(np.isin(back, ds.regions[name]), np.isin(label.numpy3d(), values))
    assert ds.labels[1] == "WT"
    assert set(ds.labels.values()) == {"background", "WT", "WT+TC", "WT+TC+ET"}


# -- RTSTRUCT -----------------------------------------------------------------------------
def _contours() -> Contours:
    ctv = [
        (k, ellipse((19.6, 17.3), (12.4 - abs(k - 5.5), 9.1 - 0.5 * abs(k - 5.5))))
        for k in range(2, 10)
    ]
    gtv = [(k, ellipse((21.2, 16.4), (5.3, 4.1), n=24)) for k in range(4, 8)]
    gtv.append((6, ellipse((6.4, 30.3), (2.6, 2.2), n=12)))  # a second, disjoint piece
    ring = [(10, ellipse((20.3, 18.2), (10.2, 8.3))), (10, ellipse((20.3, 18.2), (5.1, 4.2)))]
    return {"CTV": ctv, "GTV": gtv, "ring": ring}


def _edge_distance(points: np.ndarray, polygons: list[np.ndarray]) -> np.ndarray:
    """Distance (voxels) from each 2D point to the nearest edge of ``polygons``."""
    best = np.full(len(points), np.inf)
    for polygon in polygons:
        a, b = polygon, np.roll(polygon, -1, axis=0)
        ab = b - a
        t = np.einsum("pnd,nd->pn", points[:, None] - a[None], ab) / np.einsum("nd,nd->n", ab, ab)
        nearest = a[None] + np.clip(t, 0.0, 1.0)[..., None] * ab[None]
        best = np.minimum(best, np.linalg.norm(points[:, None] - nearest, axis=-1).min(axis=1))
    return best


def contour_agreement(mask: np.ndarray, contours: Contours, name: str) -> dict[str, float]:
    """How far ``mask`` (imported) lies from ROI ``name``'s polygons, slice by slice, in
    voxels: voxels differing from the exact pixel-centre rasterisation and their distance
    to the contour; the largest distance from a boundary pixel's centre to the contour,
    and from a contour point to the nearest boundary pixel (its square)."""
    exact = expected_masks(contours, mask.shape)[name]
    differ = np.argwhere(mask != exact)
    worst_differ = mask_to_contour = contour_to_mask = 0.0
    for k in sorted({k for k, _ in contours[name]}):
        polygons = [p for kk, p in contours[name] if kk == k]
        plane = differ[differ[:, 2] == k][:, :2].astype(float)
        if len(plane):
            worst_differ = max(worst_differ, float(_edge_distance(plane, polygons).max()))
        boundary = np.argwhere(mask[:, :, k] & ~ndimage.binary_erosion(mask[:, :, k])).astype(float)
        mask_to_contour = max(mask_to_contour, float(_edge_distance(boundary, polygons).max()))
        for polygon in polygons:  # contour points every 0.1 edge, to the nearest mask pixel
            a, b = polygon, np.roll(polygon, -1, axis=0)
            steps = np.linspace(0, 1, 10, endpoint=False)[:, None, None]
            samples = (a[None] + steps * (b - a)[None]).reshape(-1, 2)
            outside = np.clip(np.abs(samples[:, None] - boundary[None]) - 0.5, 0.0, None)
            gaps = np.linalg.norm(outside, axis=-1).min(axis=1)  # to the pixel's square
            contour_to_mask = max(contour_to_mask, float(gaps.max()))
    dice = 2 * np.sum(mask & exact) / (mask.sum() + exact.sum())
    return {
        "voxels": float(exact.sum()),
        "differing": float(len(differ)),
        "worst_differing_distance": worst_differ,
        "mask_to_contour": mask_to_contour,
        "contour_to_mask": contour_to_mask,
        "dice": float(dice),
    }


def test_rtstruct_imports_within_one_voxel_of_its_contours(tmp_path: Path) -> None:
    folder, image, _label = oblique_study(tmp_path / "archive")
    contours = _contours()
    rt = tmp_path / "archive" / "rtstruct.dcm"
    write_rtstruct(rt, folder, image, contours)
    assert dciodvfy_errors(rt) == []
    ds = _import(tmp_path / "archive", tmp_path / "ds.yaml")
    (case,) = ds.cases
    assert case.clinical["annotation"] == "RTSTRUCT"
    back = read_label(case.label).numpy3d()
    assert np.allclose(read_label(case.label).affine, image.affine, atol=1e-4)
    # GTV overlaps CTV: each combination met is a label, each ROI a region
    assert set(ds.regions) == {"CTV", "GTV", "ring"}
    for name in contours:
        mask = np.isin(back, ds.regions[name])
        stats = contour_agreement(mask, contours, name)
        assert stats["voxels"] > 20, (name, stats)
        assert stats["worst_differing_distance"] <= 1.0, (name, stats)
        assert stats["mask_to_contour"] <= 1.0, (name, stats)
        assert stats["contour_to_mask"] <= 1.0, (name, stats)
        assert stats["dice"] > 0.97, (name, stats)
    ring = np.isin(back, ds.regions["ring"])[:, :, 10]
    assert not ring[20, 18]  # the inner contour is a hole
    assert ring[20 + 7, 18]


def test_rtstruct_traced_from_a_mask_imports_as_that_mask(tmp_path: Path) -> None:
    """Contours traced around a mask's pixels (marching squares, as mask-to-RTSTRUCT tools
    do) on the oblique anisotropic series rasterise back to the very same mask."""
    folder, image, label = oblique_study(tmp_path / "archive")
    whole = label.numpy3d() > 0
    traced = []
    for k in range(whole.shape[2]):
        padded = np.pad(whole[:, :, k], 1).astype(float)  # closed contours at the border too
        traced += [(k, c - 1.0) for c in find_contours(padded, 0.5)]
    assert len(traced) >= 5
    write_rtstruct(folder / "rt.dcm", folder, image, {"tumour": traced})
    ds = import_dataset(tmp_path / "archive", out_dir=tmp_path / "out")
    back = read_label(ds.cases[0].label).numpy3d()
    assert ds.labels == {0: "background", 1: "tumour"}
    assert np.array_equal(back == 1, whole)


# -- refusals -----------------------------------------------------------------------------
def test_seg_whose_series_is_absent_is_refused(tmp_path: Path) -> None:
    folder, _image, label = oblique_study(tmp_path / "a", labels_of=BRATS)
    write_seg(label, folder, regions=BRATS_REGIONS, algorithm=ALGO, out_path=tmp_path / "seg.dcm")
    other, _, _ = oblique_study(tmp_path / "b")  # another study, not the SEG's series
    (tmp_path / "seg.dcm").rename(other / "seg.dcm")
    line = _error_line(tmp_path / "b", tmp_path / "ds.yaml")
    assert "seg.dcm" in line
    assert "copy the annotated image series" in line
    assert not (tmp_path / "ds.yaml").exists()


def test_rtstruct_in_an_unknown_frame_of_reference_is_refused(tmp_path: Path) -> None:
    folder, image, _label = oblique_study(tmp_path / "archive")
    rt = tmp_path / "archive" / "rtstruct.dcm"
    ds = write_rtstruct(rt, folder, image, _contours())
    unknown = pydicom.uid.generate_uid()
    ds.FrameOfReferenceUID = unknown
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = unknown
    for roi in ds.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = unknown
    ds.save_as(rt, enforce_file_format=True)
    with pytest.raises(DatasetError, match=f"rtstruct.dcm.*unknown frame of reference.*{unknown}"):
        import_dataset(tmp_path / "archive", out_dir=tmp_path / "out")
    # without series or instance references, it matches no series in the folder at all
    del ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    for roi_contour in ds.ROIContourSequence:
        for contour in roi_contour.ContourSequence:
            del contour.ContourImageSequence
    ds.save_as(rt, enforce_file_format=True)
    line = _error_line(tmp_path / "archive", tmp_path / "ds.yaml")
    assert "rtstruct.dcm" in line
    assert unknown in line
    assert "no image series" in line


def test_corrupt_files_are_refused_by_name(tmp_path: Path) -> None:
    folder, _image, label = oblique_study(tmp_path / "archive", labels_of=BRATS)
    seg = write_seg(
        label, folder, regions=BRATS_REGIONS, algorithm=ALGO, out_path=folder / "seg.dcm"
    )
    broken = folder / "broken.dcm"  # an image slice whose header is cut short
    broken.write_bytes(next(folder.glob("slice_*.dcm")).read_bytes()[:400])
    line = _error_line(tmp_path / "archive", tmp_path / "ds.yaml")
    assert "broken.dcm" in line
    assert "truncated" in line
    assert "replace it with an intact copy" in line
    broken.unlink()
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) - 2000])  # pixel data cut short
    line = _error_line(tmp_path / "archive", tmp_path / "ds.yaml")
    assert "seg.dcm" in line
    assert "replace it with an intact copy" in line
    assert not (tmp_path / "ds.yaml").exists()


def test_archive_of_several_studies_and_both_annotation_kinds(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    labels = []
    for name in ("a", "b"):
        folder, _image, label = oblique_study(archive / name, labels_of=BRATS)
        write_seg(label, folder, regions=BRATS_REGIONS, algorithm=ALGO, out_path=folder / "s.dcm")
        labels.append(label.numpy3d())
    ds = import_dataset(archive, out_dir=tmp_path / "only_seg")
    assert len(ds.cases) == 2
    assert len({c.case_id for c in ds.cases}) == 2
    assert sorted(ds.labels) == [0, 1, 2, 4]  # recorded by medai: values kept
    backs = [read_label(c.label).numpy3d() for c in ds.cases]
    assert sorted(b.tobytes() for b in backs) == sorted(x.tobytes() for x in labels)
    folder, image, _label = oblique_study(archive / "c")
    write_rtstruct(folder / "rt.dcm", folder, image, _contours())
    ds = import_dataset(archive, out_dir=tmp_path / "mixed")
    assert len(ds.cases) == 3
    # the order of the studies (random UIDs, one patient) decides which names come first
    assert set(ds.regions) == {"WT", "TC", "ET", "CTV", "GTV", "ring"}
    assert [n for n in ds.regions if n in BRATS_REGIONS] == ["WT", "TC", "ET"]
    by_kind = {c.clinical["annotation"]: read_label(c.label).numpy3d() for c in ds.cases}
    rt_masks = expected_masks(_contours(), image.shape)
    for name, mask in rt_masks.items():
        assert np.array_equal(np.isin(by_kind["RTSTRUCT"], ds.regions[name]), mask)
    seg_backs = [
        read_label(c.label).numpy3d() for c in ds.cases if c.clinical["annotation"] == "SEG"
    ]
    for back in seg_backs:
        assert not np.isin(back, ds.regions["CTV"]).any()
        matches = [
            all(
                np.array_equal(np.isin(back, ds.regions[n]), np.isin(x, v))
                for n, v in BRATS_REGIONS.items()
            )
            for x in labels
        ]
        assert any(matches)
