"""DICOM SR TID 1500 writing: per-region volumes referencing the SEG segments and source
series, optional radiomics features and uncertainty; read back with highdicom, pydicom and
dcmtk's dsr2xml, validated with dciodvfy."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from _dicom_outputs import (
    ALGO,
    BRAIN_REGIONS,
    dciodvfy_errors,
    dicom_tool,
    mr2_series,
    oblique_study,
    synth_study,
)
from medai.errors import ImageReadError, ImageWriteError
from medai.image import LabelMap
from medai.io import region_volumes_ml, write_seg, write_sr
from medai.io.dicom_sr import PRIVATE_SCHEME, feature_concept


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LabelMap, Path]:
    root = tmp_path_factory.mktemp("synth")
    folder, label = synth_study(root)
    seg = write_seg(label, folder, regions=BRAIN_REGIONS, algorithm=ALGO, out_path=root / "seg.dcm")
    return folder, label, seg


def _dsr2xml(path: Path) -> str:
    run = subprocess.run(
        [dicom_tool("dsr2xml"), str(path)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def _xml_numbers(xml: str) -> list[tuple[str, float, str]]:
    """(concept meaning, value, unit) of every NUM item dsr2xml wrote."""
    return [
        (
            num.findtext("concept/meaning", ""),
            float(num.findtext("float", "nan")),
            num.findtext("unit/value", ""),
        )
        for num in ET.fromstring(xml).iter("num")
    ]


def check_sr(
    path: Path, folder: Path, seg_path: Path, volumes: dict[str, float]
) -> hd.sr.Comprehensive3DSR:
    """Read ``path`` back and check evidence, segment references and volumes."""
    sr = hd.sr.srread(path)
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert (sr.PatientID, sr.PatientName) == (sources[0].PatientID, sources[0].PatientName)
    assert sr.SeriesInstanceUID not in {seg.SeriesInstanceUID, sources[0].SeriesInstanceUID}
    evidence = {uid for _, _, uid, _ in sr.get_evidence()}
    assert evidence == {seg.SOPInstanceUID} | {s.SOPInstanceUID for s in sources}
    numbers = {s.SegmentLabel: s.SegmentNumber for s in seg.SegmentSequence}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == list(volumes)
    for group in groups:
        name = group.tracking_identifier
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [numbers[name]]
        series_ref = ref.get_source_series_uid() if hasattr(ref, "get_source_series_uid") else None
        assert series_ref in (None, sources[0].SeriesInstanceUID)
        (volume,) = group.get_measurements(name=codes.SCT.Volume)
        assert volume.unit.value == "ml"
        assert volume.value == pytest.approx(volumes[name], rel=1e-12, abs=1e-12)
    return sr


def test_sr_of_synthetic_cohort_case(synth, tmp_path) -> None:
    folder, label, seg = synth
    volumes = region_volumes_ml(label, BRAIN_REGIONS)
    voxel_ml = 6.0**3 / 1000
    assert volumes["ET"] == pytest.approx(np.count_nonzero(label.array == 3) * voxel_ml)
    assert volumes["WT"] > volumes["TC"] > volumes["ET"] > 0
    path = write_sr(volumes, folder, seg=seg, algorithm=ALGO, out_path=tmp_path / "sr.dcm")
    sr = check_sr(path, folder, seg, volumes)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.content.get_image_measurement_groups() == []
    assert dciodvfy_errors(path) == []
    xml = _dsr2xml(path)
    assert "Comprehensive 3D SR" in xml
    numbers = _xml_numbers(xml)
    assert [(m, u) for m, _, u in numbers] == [("Volume", "ml")] * 3
    assert [v for _, v, _ in numbers] == pytest.approx(list(volumes.values()), rel=1e-9)


def test_sr_with_radiomics_features_and_uncertainty(synth, tmp_path) -> None:
    folder, label, seg = synth
    volumes = region_volumes_ml(label, BRAIN_REGIONS)
    features = {
        "WT": {"morph_surface_area": 1234.5, "glcm_joint_maximum_3d_average": 0.25},
        "ET": {"stat_skewness": -0.5, "stat_nan": float("nan")},
    }
    path = write_sr(
        volumes,
        folder,
        seg=seg,
        algorithm=ALGO,
        out_path=tmp_path / "sr.dcm",
        features=features,
        units={"morph_surface_area": "mm2"},
        uncertainty=0.125,
    )
    sr = check_sr(path, folder, seg, volumes)
    groups = {g.tracking_identifier: g for g in sr.content.get_volumetric_roi_measurement_groups()}
    area = groups["WT"].get_measurements(name=feature_concept("morph_surface_area"))[0]
    assert (area.value, area.unit.value) == (1234.5, "mm2")
    long_name = feature_concept("glcm_joint_maximum_3d_average")
    assert long_name.meaning == "glcm_joint_maximum_3d_average"
    assert len(long_name.value) == 16
    assert groups["WT"].get_measurements(name=long_name)[0].value == 0.25
    et_names = [m.name.meaning for m in groups["ET"].get_measurements()]
    assert et_names == ["Volume", "stat_skewness"]  # NaN left out
    (overall,) = sr.content.get_image_measurement_groups()
    (score,) = overall.get_measurements()
    assert (score.value, score.name.value, score.unit.value) == (0.125, "uncertainty", "1")
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME
    assert dciodvfy_errors(path) == []  # the private scheme draws warnings only
    numbers = _xml_numbers(_dsr2xml(path))
    assert ("stat_skewness", -0.5, "1") in numbers
    assert ("morph_surface_area", 1234.5, "mm2") in numbers
    assert ("Segmentation uncertainty score", 0.125, "1") in numbers


def test_sr_of_pydicom_data_oblique_mr(tmp_path) -> None:
    folder, _image, label = mr2_series(tmp_path)
    regions = {"lesion": [1, 2], "core": [2]}
    seg = write_seg(label, folder, regions=regions, algorithm=ALGO, out_path=tmp_path / "seg.dcm")
    volumes = region_volumes_ml(label, regions)
    path = write_sr(volumes, folder, seg=seg, algorithm=ALGO, out_path=tmp_path / "sr.dcm")
    check_sr(path, folder, seg, volumes)
    assert dciodvfy_errors(path) == []
    assert "lesion" in _dsr2xml(path)


def test_sr_uids_are_deterministic_and_distinct_from_seg(synth, tmp_path) -> None:
    folder, label, seg = synth
    volumes = region_volumes_ml(label, BRAIN_REGIONS)
    a = pydicom.dcmread(write_sr(volumes, folder, seg=seg, algorithm=ALGO, out_path=tmp_path / "a"))
    b = pydicom.dcmread(write_sr(volumes, folder, seg=seg, algorithm=ALGO, out_path=tmp_path / "b"))
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    seg_ds = pydicom.dcmread(seg, stop_before_pixels=True)
    assert a.SeriesInstanceUID != seg_ds.SeriesInstanceUID
    assert a.SOPInstanceUID != seg_ds.SOPInstanceUID


def test_sr_refusals(synth, tmp_path) -> None:
    folder, label, seg = synth
    other_folder, _image, other_label = mr2_series(tmp_path)
    volumes = region_volumes_ml(label, BRAIN_REGIONS)
    with pytest.raises(ImageWriteError, match="not to the source series"):
        write_sr(volumes, other_folder, seg=seg, algorithm=ALGO, out_path=tmp_path / "x.dcm")
    with pytest.raises(ValueError, match=r"\['NET'\] are not segments"):
        write_sr({"NET": 1.0}, folder, seg=seg, algorithm=ALGO, out_path=tmp_path / "x.dcm")
    with pytest.raises(ImageWriteError, match="must be a DICOM Segmentation"):
        write_sr(
            volumes,
            folder,
            seg=next(folder.glob("*.dcm")),
            algorithm=ALGO,
            out_path=tmp_path / "x.dcm",
        )
    with pytest.raises(ValueError, match="finite"):
        write_sr(
            volumes,
            folder,
            seg=seg,
            algorithm=ALGO,
            out_path=tmp_path / "x.dcm",
            uncertainty=float("inf"),
        )
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a DICOM file")
    with pytest.raises(ImageReadError, match=r"broken\.dcm: not a readable DICOM file"):
        write_sr(volumes, folder, seg=broken, algorithm=ALGO, out_path=tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()
    assert region_volumes_ml(other_label, {"core": [2]})["core"] > 0


def test_sr_of_oblique_anisotropic_series(tmp_path) -> None:
    folder, _image, label = oblique_study(tmp_path)
    seg = write_seg(
        label, folder, regions=BRAIN_REGIONS, algorithm=ALGO, out_path=tmp_path / "seg.dcm"
    )
    volumes = region_volumes_ml(label, BRAIN_REGIONS)
    voxel_ml = 0.9 * 1.3 * 3.5 / 1000  # the series' spacing
    assert volumes["WT"] == pytest.approx(np.count_nonzero(label.array) * voxel_ml)
    path = write_sr(volumes, folder, seg=seg, algorithm=ALGO, out_path=tmp_path / "sr.dcm")
    check_sr(path, folder, seg, volumes)
    assert dciodvfy_errors(path) == []
    numbers = _xml_numbers(_dsr2xml(path))
    assert [v for _, v, _ in numbers] == pytest.approx(list(volumes.values()), rel=1e-9)
