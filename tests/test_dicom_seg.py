"""DICOM SEG writing: frames on the right source slices, references, codes, UIDs, validity.

Every SEG is read back with pydicom and highdicom and checked frame by frame: the frame's
ImagePositionPatient equals that of the source instance it references, and its pixels
equal the region mask of the label map on that instance's slice.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from _dicom_outputs import (
    ALGO,
    BRAIN_REGIONS,
    dciodvfy_errors,
    mr2_series,
    oblique_study,
    synth_study,
)
from medai.errors import GeometryError, ImageReadError
from medai.image import LabelMap
from medai.io import (
    AlgorithmInfo,
    OutputKind,
    SourceSeries,
    derived_uid,
    read_dicom_series,
    write_seg,
)
from medai.io.dicom_geometry import LPS_TO_RAS


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LabelMap]:
    return synth_study(tmp_path_factory.mktemp("synth"))


def _sources(folder: Path) -> dict[str, pydicom.Dataset]:
    out = {}
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = ds
    return out


def _slice_index(folder: Path) -> dict[str, int]:
    """Each source instance's z index in the volume medai reads, from its position."""
    image = read_dicom_series(folder)
    out = {}
    for sop, ds in _sources(folder).items():
        ras = (LPS_TO_RAS[:3, :3] @ np.asarray(ds.ImagePositionPatient, float))[None]
        voxel = image.world_to_voxel(ras)[0]
        assert np.allclose(voxel[:2], 0.0, atol=1e-3)
        out[sop] = round(float(voxel[2]))
    return out


def check_seg(
    path: Path, folder: Path, label: LabelMap, regions: dict[str, list[int]]
) -> pydicom.Dataset:
    """Read ``path`` back and check identity, references and every frame."""
    seg = pydicom.dcmread(path)
    sources = _sources(folder)
    first = next(iter(sources.values()))
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "FrameOfReferenceUID"):
        assert seg[keyword].value == first[keyword].value, keyword
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    assert seg.SOPInstanceUID not in sources
    assert seg.SegmentationType == "BINARY"
    cited = {
        str(i.ReferencedSOPInstanceUID)
        for s in seg.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    assert cited == set(sources)  # every source instance referenced
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(regions)
    members = {s.SegmentNumber: regions[s.SegmentLabel] for s in seg.SegmentSequence}
    z_of = _slice_index(folder)
    volume = label.numpy3d()
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    assert len(frames) == len(seg.PerFrameFunctionalGroupsSequence) > 0
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        sop = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        assert np.allclose(position, np.asarray(sources[sop].ImagePositionPatient, float))
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        expected = np.isin(volume[:, :, z_of[sop]], members[number]).T
        assert np.array_equal(frame.astype(bool), expected)
    # highdicom's own reader gives the same masks for every source instance
    order = sorted(z_of, key=z_of.__getitem__)
    masks = hd.seg.segread(path).get_pixels_by_source_instance(
        order, segment_numbers=sorted(members), skip_overlap_checks=True
    )
    for k, number in enumerate(sorted(members)):
        expected = np.isin(volume, members[number]).transpose(2, 1, 0)
        assert np.array_equal(masks[..., k].astype(bool), expected)
    return seg


def test_seg_of_synthetic_cohort_case_keeps_every_frame(synth, tmp_path) -> None:
    folder, label = synth
    path = write_seg(
        label, folder, regions=BRAIN_REGIONS, algorithm=ALGO, out_path=tmp_path / "s.dcm"
    )
    seg = check_seg(path, folder, label, BRAIN_REGIONS)
    n_slices = label.shape[2]
    assert seg.NumberOfFrames == 3 * n_slices  # empty frames kept: no shift possible
    assert all(np.isin(label.array, v).any() for v in BRAIN_REGIONS.values())
    assert dciodvfy_errors(path) == []


def test_segment_codes_and_algorithm_identification(synth, tmp_path) -> None:
    folder, label = synth
    path = write_seg(
        label, folder, regions=BRAIN_REGIONS, algorithm=ALGO, out_path=tmp_path / "s.dcm"
    )
    seg = hd.seg.segread(path)
    by_label = {s.SegmentLabel: s for s in seg.SegmentSequence}
    for segment in by_label.values():
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algo = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (ALGO.name, ALGO.version)
        assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # AI
    assert by_label["WT"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    et_type = by_label["ET"].SegmentedPropertyTypeCodeSequence[0]
    assert et_type.CodeValue == "108369006"
    assert et_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "130604"
    assert by_label["TC"].SegmentDescription == "medai labels 2,3"
    assert seg.ManufacturerModelName == ALGO.name
    assert list(seg.SoftwareVersions) == ["medai 0.1.0", "test-glioma 2.1.0"]


def test_seg_omitting_empty_frames_keeps_positions_and_references(synth, tmp_path) -> None:
    folder, label = synth
    regions = {**BRAIN_REGIONS, "absent": [9]}  # a segment with no voxel at all
    path = write_seg(
        label,
        folder,
        regions=regions,
        algorithm=ALGO,
        out_path=tmp_path / "s.dcm",
        omit_empty_frames=True,
    )
    seg = check_seg(path, folder, label, regions)
    non_empty = sum(
        int(np.isin(label.numpy3d()[:, :, z], v).any())
        for v in regions.values()
        for z in range(label.shape[2])
    )
    assert seg.NumberOfFrames == non_empty < 3 * label.shape[2]
    assert len(seg.SegmentSequence) == 4
    assert dciodvfy_errors(path) == []


def test_seg_of_pydicom_data_oblique_mr(tmp_path) -> None:
    folder, _image, label = mr2_series(tmp_path)
    regions = {"lesion": [1, 2], "core": [2]}
    path = write_seg(label, folder, regions=regions, algorithm=ALGO, out_path=tmp_path / "s.dcm")
    seg = check_seg(path, folder, label, regions)
    assert seg.NumberOfFrames == 2
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"
    assert dciodvfy_errors(path) == []


def test_oblique_anisotropic_series_and_reoriented_label_map(tmp_path) -> None:
    folder, _image, label = oblique_study(tmp_path)
    path = write_seg(
        label, folder, regions=BRAIN_REGIONS, algorithm=ALGO, out_path=tmp_path / "a.dcm"
    )
    check_seg(path, folder, label, BRAIN_REGIONS)
    assert dciodvfy_errors(path) == []
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[:3, 3] = [label.shape[0] - 1, 0, label.shape[2] - 1]
    flipped = LabelMap(label.numpy3d()[::-1, :, ::-1], label.affine @ flip)
    again = write_seg(
        flipped, folder, regions=BRAIN_REGIONS, algorithm=ALGO, out_path=tmp_path / "b.dcm"
    )
    assert pydicom.dcmread(again).PixelData == pydicom.dcmread(path).PixelData


def test_uids_are_a_function_of_bundle_input_and_kind(synth, tmp_path) -> None:
    folder, label = synth
    kwargs = {"regions": BRAIN_REGIONS, "algorithm": ALGO}
    a = pydicom.dcmread(write_seg(label, folder, out_path=tmp_path / "a.dcm", **kwargs))
    b = pydicom.dcmread(write_seg(label, folder, out_path=tmp_path / "b.dcm", **kwargs))
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    newer = AlgorithmInfo(ALGO.name, "2.2.0", ALGO.digest)
    c = pydicom.dcmread(
        write_seg(
            label, folder, regions=BRAIN_REGIONS, algorithm=newer, out_path=tmp_path / "c.dcm"
        )
    )
    assert c.SeriesInstanceUID != a.SeriesInstanceUID
    assert c.SOPInstanceUID != a.SOPInstanceUID
    sops = list(_sources(folder))
    assert a.SOPInstanceUID == derived_uid(ALGO, reversed(sops), OutputKind.SEG, "instance")


def test_derived_uid_form() -> None:
    uid = derived_uid(ALGO, ["1.2.3", "1.2.4"], OutputKind.SEG, "series")
    assert uid.startswith("2.25.")
    assert len(uid) <= 64
    assert int(uid[5:]) < 2**128
    assert uid == derived_uid(ALGO, ["1.2.4", "1.2.3"], OutputKind.SEG, "series")
    assert uid != derived_uid(ALGO, ["1.2.3", "1.2.4"], OutputKind.SR, "series")
    assert uid != derived_uid(ALGO, ["1.2.3"], OutputKind.SEG, "series")
    with pytest.raises(ValueError, match="algorithm version"):
        AlgorithmInfo("x", "")


def test_refusals(synth, tmp_path) -> None:
    folder, label = synth
    other = LabelMap(label.numpy3d(), np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(GeometryError, match="not on the grid"):
        write_seg(other, folder, regions=BRAIN_REGIONS, algorithm=ALGO, out_path=tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="at least one region"):
        write_seg(label, folder, regions={}, algorithm=ALGO, out_path=tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="never 0"):
        write_seg(
            label, folder, regions={"bg": [0, 1]}, algorithm=ALGO, out_path=tmp_path / "x.dcm"
        )
    with pytest.raises(ImageReadError, match="series_uid"):
        SourceSeries.load(folder.parent)  # the study folder holds four series
    assert not (tmp_path / "x.dcm").exists()


def test_dciodvfy_check_reports_a_broken_seg(tmp_path) -> None:
    """The validator check can fail: a SEG stripped of two Type 1 attributes has errors."""
    folder, _image, label = oblique_study(tmp_path)
    path = write_seg(
        label, folder, regions=BRAIN_REGIONS, algorithm=ALGO, out_path=tmp_path / "s.dcm"
    )
    seg = pydicom.dcmread(path)
    del seg.ContentLabel
    del seg.SegmentSequence[0].SegmentLabel
    seg.save_as(tmp_path / "broken.dcm")
    errors = dciodvfy_errors(tmp_path / "broken.dcm")
    assert len(errors) == 2
    assert any("ContentLabel" in e for e in errors)


@pytest.mark.parametrize("omit_empty_frames", [False, True])
def test_seg_of_an_empty_prediction_is_valid(tmp_path, omit_empty_frames: bool) -> None:
    """No foreground at all: every segment is kept, with a frame per source slice."""
    folder, _image, label = oblique_study(tmp_path)
    empty = LabelMap(np.zeros(label.shape, np.uint8), label.affine)
    path = write_seg(
        empty,
        folder,
        regions=BRAIN_REGIONS,
        algorithm=ALGO,
        out_path=tmp_path / "s.dcm",
        omit_empty_frames=omit_empty_frames,
    )
    seg = check_seg(path, folder, empty, BRAIN_REGIONS)
    assert seg.NumberOfFrames == 3 * label.shape[2]
    assert not seg.pixel_array.any()
    assert dciodvfy_errors(path) == []
