"""Bundles: export (files, manifest, ONNX axes, parity), the torch-free ``medai predict``
against the PyTorch path, and the refusals (tampered, missing, unlisted, pickles, input)."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pydicom
import pytest
import torch

from _notorch import run_without_torch
from _seg_cohort import grid_affine, world_phantom
from _standin import NeighbourRule, expected_labels, region_masks, standin_plan, standin_run
from medai.cli.bundle_cmd import output_names
from medai.errors import (
    BundleInputError,
    BundleIntegrityError,
    DatasetError,
    ExportError,
    ImageReadError,
    ParityError,
)
from medai.export import (
    build_model_card,
    check_parity,
    export_bundle,
    export_onnx,
    render_model_card,
)
from medai.image import LabelMap, ScalarImage
from medai.inference import LoadedRun, predict_case
from medai.io import find_series, read_nifti, read_seg_masks, write_dicom_series, write_nifti
from medai.preprocess import preprocess_image
from medai.runtime import (
    MANIFEST,
    OnnxNetwork,
    Segmenter,
    build_manifest,
    load_bundle,
    read_bundle_files,
)

SHAPE = (24, 26, 22)
RIGHT = np.array([1.0, 0.0, 0.0])


def _study(
    shape: tuple[int, int, int] = SHAPE, spacing=(2.0, 2.0, 2.0), rotation=None
) -> ScalarImage:  # type: ignore[no-untyped-def]
    rot = np.eye(3) if rotation is None else rotation
    img, _ = world_phantom(shape, grid_affine(shape, spacing, rot))
    return img


def _oblique() -> np.ndarray:
    a, b = np.radians(20.0), np.radians(12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


@pytest.fixture(scope="module")
def windowed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadedRun]:
    """A stand-in bundle whose 16³ window needs several windows per study, with TTA."""
    plan = standin_plan(
        ["network.depth=3", "train.patch_size=[16,16,16]", "inference.tta_flips=true"]
    )
    run = LoadedRun(plan, NeighbourRule(list(plan.regions)).eval(), torch.device("cpu"))
    out = tmp_path_factory.mktemp("bundles") / "standin"
    export_bundle(run, out, parity_cases=[_study()], reference_cases=[("a", _study())])
    return out, run


def test_bundle_files_manifest_and_onnx_contract(windowed: tuple[Path, LoadedRun]) -> None:
    path, run = windowed
    names = {p.name for p in path.iterdir()}
    assert names == {"model.onnx", "bundle.json", "plan.json", "reference.json", "model_card.json",
                     "model_card.md", "parity.json", "versions.json", MANIFEST}  # fmt: skip
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == names - {MANIFEST}
    files = {n: (path / n).read_bytes() for n in names - {MANIFEST}}
    assert build_manifest(files)["files"] == manifest["files"]  # every SHA-256 recomputed
    model = onnx.load_from_string(files["model.onnx"])
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "x", "y", "z"]
    assert dims[1].dim_value == 4
    # the plan keeps the network's region order (WT, TC, ET), thresholds and settings
    plan = json.loads(files["plan.json"])
    assert list(plan["regions"]) == ["WT", "TC", "ET"]
    assert plan["inference"] == run.plan.inference.model_dump(mode="json")
    info = json.loads(files["bundle.json"])
    assert info["thresholds"]["inner_min_volume_ml"]["region"] == "ET"
    parity = json.loads(files["parity.json"])
    assert parity["max_abs_diff"] < 1e-4
    assert min(parity["min_dice"].values()) == 1.0
    reference = json.loads(files["reference.json"])
    wt = reference["regions"]["WT"]
    assert reference["cases"] == ["a"]
    assert wt["values"][0] > 1.0  # the stand-in finds a tumour of several mL
    card = (path / "model_card.md").read_text()
    assert "## Intended use" in card
    assert "max |Δp|" in card


def test_predict_without_torch_writes_the_torch_label_maps(
    windowed: tuple[Path, LoadedRun], tmp_path: Path
) -> None:
    path, run = windowed
    studies = {"ras": _study(), "oblique": _study((30, 22, 26), (1.5, 2.0, 1.2), _oblique())}
    inputs = [str(write_nifti(img, tmp_path / f"{name}.nii.gz")) for name, img in studies.items()]
    studies["dicom"] = studies["oblique"]  # the same study as one DICOM series per channel
    inputs.append(str(_dicom_study(studies["dicom"], tmp_path / "dicom", run.plan.channels)))
    out = tmp_path / "out"
    res = run_without_torch(
        f"""
        import sys
        from medai.cli.main import app
        try:
            app(["predict", {str(path)!r}, *{inputs!r}, "--out", {str(out)!r}])
        except SystemExit as stop:
            print("EXIT", stop.code)
        print("TORCH", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai")))
        """
    )
    assert "EXIT 0" in res.stdout, res.stdout + res.stderr
    assert "TORCH []" in res.stdout
    for (name, img), study in zip(studies.items(), inputs, strict=True):
        got = read_nifti(out / f"{name}.nii.gz")
        assert got.same_grid(img)
        want = predict_case(run, study).labels.array  # PyTorch + MONAI on the same file
        assert np.mean(got.array == want) > 0.999
        for region, mask in region_masks(got.array[0]).items():
            assert mask.sum() >= 20, f"{name}: {region} has {mask.sum()} voxels"
        volumes = json.loads((out / f"{name}_volumes.json").read_text())["volumes_ml"]
        assert list(volumes) == ["WT", "TC", "ET"]
    _check_dicom_results(out / "dicom", read_nifti(out / "dicom.nii.gz"), tmp_path / "dicom")
    assert not (out / "ras_seg.dcm").exists()  # a NIfTI study has no DICOM results


def _check_dicom_results(prefix: Path, labels: LabelMap, study: Path) -> None:
    """The SEG reproduces the label map and references the FLAIR series; the SR reads."""
    seg = pydicom.dcmread(f"{prefix}_seg.dcm")
    sr = pydicom.dcmread(f"{prefix}_sr.dcm")
    flair = next(s for s in find_series(study) if s.description == "FLAIR")
    assert (seg.Modality, sr.Modality) == ("SEG", "SR")
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == flair.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == flair.uid
    assert [s.SegmentAlgorithmName for s in seg.SegmentSequence] == ["standin"] * 3
    masks, _ = read_seg_masks(seg, labels)
    for region, mask in region_masks(labels.array[0]).items():
        np.testing.assert_array_equal(masks[region], mask)


def _dicom_study(img: ScalarImage, folder: Path, channels: list[str]) -> Path:
    for c, name in enumerate(channels):
        write_dicom_series(img.channel(c), folder / name, patient_id="P1", patient_name="Test^P",
                           study_uid="1.2.826.0.1.3680043.8.498.1", series_number=c + 1,
                           series_description=name)  # fmt: skip
    return folder


def test_output_names_are_unique_and_drop_image_suffixes() -> None:
    paths = [Path("a/s1.nii.gz"), Path("b/s1.nii"), Path("c/study"), Path("d/S2.NRRD")]
    assert output_names(paths) == ["s1", "s1-2", "study", "S2"]


def test_a_dicom_study_missing_a_series_is_refused(
    windowed: tuple[Path, LoadedRun], tmp_path: Path
) -> None:
    study = _dicom_study(_study(), tmp_path / "dicom", ["FLAIR", "T1w", "t1gd"])
    with pytest.raises(ImageReadError, match=r"found 3 usable series; need \['FLAIR', 'T1w'"):
        Segmenter(windowed[0]).predict(study)


def test_zip_bundle_gives_the_closed_form_answer(tmp_path: Path) -> None:
    img = _study()
    zipped = tmp_path / "standin.zip"
    export_bundle(standin_run(), zipped, parity_cases=[img], as_zip=True)
    labels = Segmenter(zipped).predict(img).labels
    np.testing.assert_array_equal(labels.array, expected_labels(SHAPE, img.affine, RIGHT).array)
    with pytest.raises(ExportError, match="exists; choose another output"):
        export_bundle(standin_run(), zipped, parity_cases=[img], as_zip=True)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _relist(path: Path) -> None:
    """Rewrite the manifest for the files now present (a forger's move)."""
    files = {p.name: p.read_bytes() for p in path.iterdir() if p.name != MANIFEST}
    (path / MANIFEST).write_text(json.dumps(build_manifest(files)))


class _Payload:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_tampered_missing_unlisted_and_pickled_files_are_refused(
    windowed: tuple[Path, LoadedRun], tmp_path: Path
) -> None:
    src, _ = windowed
    assert load_bundle(src).name == "standin"
    changed = _copy(src, tmp_path / "changed")
    data = bytearray((changed / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (changed / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=r"model\.onnx changed since export \(SHA-256"):
        load_bundle(changed)
    missing = _copy(src, tmp_path / "missing")
    (missing / "plan.json").unlink()
    with pytest.raises(BundleIntegrityError, match=r"plan\.json is missing \(listed in manifest"):
        load_bundle(missing)
    unlisted = _copy(src, tmp_path / "unlisted")
    (unlisted / "extra.json").write_text("{}")
    with pytest.raises(BundleIntegrityError, match=r"extra\.json is not listed in manifest"):
        load_bundle(unlisted)
    no_manifest = _copy(src, tmp_path / "no_manifest")
    (no_manifest / MANIFEST).unlink()
    with pytest.raises(BundleIntegrityError, match=r"manifest\.json is missing"):
        load_bundle(no_manifest)
    # a pickle slipped in and listed with its right checksum is still refused, unread
    pickled = _copy(src, tmp_path / "pickled")
    marker = tmp_path / "unpickled"
    (pickled / "weights.pt").write_bytes(pickle.dumps(_Payload(marker)))
    _relist(pickled)
    with pytest.raises(
        BundleIntegrityError, match=r"'weights\.pt' is not a file a bundle may hold"
    ):
        load_bundle(pickled)
    assert not marker.exists()
    pickle.loads((pickled / "weights.pt").read_bytes())
    assert marker.exists()  # the payload is live: loading the bundle really did not unpickle


def test_cli_refuses_a_tampered_bundle_in_one_line(
    windowed: tuple[Path, LoadedRun], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from medai.cli.main import app

    bad = _copy(windowed[0], tmp_path / "bad")
    with (bad / "plan.json").open("a") as handle:
        handle.write(" ")
    study = write_nifti(_study(), tmp_path / "s.nii.gz")
    res = CliRunner().invoke(app, ["predict", str(bad), str(study), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "plan.json changed since export" in res.output
    assert not (tmp_path / "o").exists()


def test_studies_the_bundle_was_not_made_for_are_refused(windowed: tuple[Path, LoadedRun]) -> None:
    segmenter = Segmenter(windowed[0])
    img = _study()
    three = ScalarImage(img.array[:3], img.affine)
    with pytest.raises(
        BundleInputError,
        match=r"needs 4 channels \(FLAIR, T1w, t1gd, T2w, in that order\); the study has 3",
    ):
        segmenter.predict(three)
    one_slice = ScalarImage(img.array[:, :, :, 10:11], img.affine)
    with pytest.raises(BundleInputError, match="segments 3D volumes"):
        segmenter.predict(one_slice)


def test_parity_check_refuses_an_onnx_model_of_other_weights() -> None:
    run = standin_run()
    other = NeighbourRule(list(run.plan.regions))
    with torch.no_grad():
        other.conv.bias += 30.0  # every tissue fires: a different model
    network = OnnxNetwork(export_onnx(other, in_channels=4, window=(32, 32, 32)), device="cpu")
    inputs = [preprocess_image(_study(), run.plan.preprocess).image.array]
    with pytest.raises(ParityError, match=r"ONNX Runtime differs from PyTorch on 1 preprocessed"):
        check_parity(run.model, network, run.plan, inputs)
    same = OnnxNetwork(export_onnx(run.model, in_channels=4, window=(32, 32, 32)), device="cpu")
    assert check_parity(run.model, same, run.plan, inputs).max_abs_diff < 1e-4


def test_model_card_reports_the_runs_records_and_evaluation_intervals(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "evaluation").mkdir(parents=True)
    (run / "split.json").write_text(json.dumps({"train": ["a", "b", "c"], "validation": ["d"]}))
    (run / "validation.json").write_text(json.dumps({"best_epoch": 7, "best_dice": {"WT": 0.91}}))
    ci = {"estimate": 0.873, "low": 0.81, "high": 0.92, "confidence": 0.95, "method": "bca",
          "n_patients": 12}  # fmt: skip
    aggregate = {"WT/dice": ci, "WT/abs_volume_error_mm3": ci}
    test = {"n_cases": 12, "n_patients": 12, "aggregate": aggregate}
    metrics = {"created": "2026-12-01T00:00:00+00:00", "subgroups": None, "splits": {"test": test}}
    (run / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    parity = {"cases": 2, "max_abs_diff": 3e-6, "min_dice": {"WT": 1.0}}
    card = build_model_card(standin_plan(), name="glioma", version="2", run_dir=run,
                            parity=parity, reference_cases=3)  # fmt: skip
    assert card["training_data"]["training_cases"] == 3
    assert card["validation"]["best_dice"] == {"WT": 0.91}
    assert set(card["evaluation"]["splits"]["test"]["metrics"]) == {"WT/dice"}
    text = render_model_card(card)
    assert "- WT/dice: 0.873 (95 % CI 0.810–0.920, 12 patients)" in text
    assert "Best epoch 7: Dice WT 0.910" in text
    assert "3 training, 1 validation" in text
    bare_card = build_model_card(
        standin_plan(), name="x", version="1", run_dir=None, parity=parity, reference_cases=0
    )
    bare = render_model_card(bare_card)
    assert "has not been evaluated" in bare
    assert "No validation record." in bare


def test_declared_missing_contrast_runs_as_in_the_torch_path(
    windowed: tuple[Path, LoadedRun], tmp_path: Path
) -> None:
    plan = standin_plan(["train.shift.enabled=true", "train.shift.channel_dropout=0.2"])
    run = LoadedRun(plan, NeighbourRule(list(plan.regions)).eval(), torch.device("cpu"))
    path = tmp_path / "dropout"
    export_bundle(run, path, parity_cases=[_study()])
    img = _study()
    without_t2 = ScalarImage(img.array[:3], img.affine)  # FLAIR, T1w, t1gd
    got = Segmenter(path).predict(without_t2, missing=["T2"])  # a synonym of T2w
    want = predict_case(run, without_t2, missing=["T2w"])
    np.testing.assert_array_equal(got.labels.array, want.labels.array)
    assert got.contrasts_missing == ("T2w",)
    assert np.count_nonzero(got.labels.array) > 0
    # without the declaration the study is refused, naming the counts
    with pytest.raises(BundleInputError, match=r"needs 4 channels .*the study has 3"):
        Segmenter(path).predict(without_t2)
    # a bundle trained without channel dropout refuses the declaration
    with pytest.raises(DatasetError, match="trained without channel dropout"):
        Segmenter(windowed[0]).predict(without_t2, missing=["T2w"])


def test_a_bundle_larger_than_allowed_is_refused_before_decompressing(tmp_path: Path) -> None:
    zipped = tmp_path / "big.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", b"\0" * 3_000_000)  # 3 MB of zeros: a tiny zip
    assert zipped.stat().st_size < 100_000
    with pytest.raises(BundleIntegrityError, match="more than the 2 MiB a bundle may"):
        read_bundle_files(zipped, max_bytes=2 * 2**20)
    assert set(read_bundle_files(zipped)) == {"model.onnx"}  # the default limit admits it


def test_a_run_without_its_dataset_is_refused_with_the_option_to_pass(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medai.cli.main import app
    from medai.networks import build_network

    plan = standin_plan(["network.depth=3", "network.base_channels=4"])
    net = build_network(plan.network, in_channels=4, out_channels=3)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": net.state_dict(), "plan": plan.model_dump(mode="json")}, run / "model.pt")
    study = write_nifti(_study(), tmp_path / "s.nii.gz")
    res = CliRunner().invoke(app, ["predict", str(run), str(study), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "the run does not name its dataset" in res.output
    assert "pass --dataset PATH" in res.output
