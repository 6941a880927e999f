"""Ensembles of k models in one bundle: export (member files, manifest, card, parity per
member), the runtime's mean of the members' probabilities against each member run alone,
the torch-free CLI, and the refusals (tampered or missing member, mismatched plans)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from _notorch import run_without_torch
from _seg_cohort import grid_affine, world_phantom
from _standin import NeighbourRule, region_masks, standin_plan
from medai.cli.main import app
from medai.errors import BundleIntegrityError, ExportError, ParityError
from medai.export import export_bundle, export_image_bundle
from medai.export.ensemble import check_same_plan
from medai.image import ScalarImage
from medai.inference import LoadedRun
from medai.io import read_nifti, write_nifti
from medai.preprocess import Plan, apply_overrides
from medai.runtime import MANIFEST, Classifier, Segmenter, build_manifest, load_bundle

SHAPE = (24, 26, 22)


def _study() -> ScalarImage:
    img, _ = world_phantom(SHAPE, grid_affine(SHAPE, (2.0, 2.0, 2.0), np.eye(3)))
    return img


def _seg_run(soft: float = 1.0, extra: list[str] | None = None) -> LoadedRun:
    """The stand-in; ``soft`` < 1 scales its logits down (a member as sure of the same
    masks only far from their borders)."""
    plan = standin_plan(extra)
    net = NeighbourRule(list(plan.regions))
    with torch.no_grad():
        for param in net.conv.parameters():  # weight and bias
            param.mul_(soft)
    return LoadedRun(plan, net.eval(), torch.device("cpu"))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Member A alone, member B alone, and the ensemble of A and B."""
    root = tmp_path_factory.mktemp("ensemble")
    a, b = _seg_run(), _seg_run(soft=0.05)
    runs = [root / "run-a", root / "run-b"]
    for run in runs:
        run.mkdir()
    cases = [_study()]
    export_bundle(a, root / "a", parity_cases=cases, run_dir=runs[0])
    export_bundle(b, root / "b", parity_cases=cases, run_dir=runs[1])
    export_bundle([a, b], root / "ab", parity_cases=cases, run_dir=runs,
                  reference_cases=[("r", _study())])  # fmt: skip
    return {"a": root / "a", "b": root / "b", "ab": root / "ab"}


def test_ensemble_bundle_holds_every_member_in_the_manifest(bundles: dict[str, Path]) -> None:
    path = bundles["ab"]
    names = {p.name for p in path.iterdir()}
    assert {"model_0.onnx", "model_1.onnx", "plan_0.json", "plan_1.json"} <= names
    assert "model.onnx" not in names
    assert "model.onnx" in {p.name for p in bundles["a"].iterdir()}  # one model: as before
    manifest = json.loads((path / MANIFEST).read_text())
    files = {n: (path / n).read_bytes() for n in names - {MANIFEST}}
    assert build_manifest(files)["files"] == manifest["files"]
    info = json.loads((path / "bundle.json").read_text())
    assert [m["run"] for m in info["members"]] == ["run-a", "run-b"]
    for i, member in enumerate(info["members"]):
        assert member["model"] == f"model_{i}.onnx"
        assert member["sha256"] == manifest["files"][f"model_{i}.onnx"]["sha256"]
    assert files["model_0.onnx"] == (bundles["a"] / "model.onnx").read_bytes()
    assert files["model_0.onnx"] != files["model_1.onnx"]
    parity = json.loads(files["parity.json"])
    assert len(parity["members"]) == 2
    assert parity["max_abs_diff"] < 1e-4
    assert "members" not in json.loads((bundles["a"] / "parity.json").read_text())
    card = json.loads(files["model_card.json"])
    assert card["ensemble"]["members"] == 2
    assert card["ensemble"]["runs"] == ["run-a", "run-b"]
    text = files["model_card.md"].decode()
    assert "An ensemble of 2 models" in text
    assert "- member 1: run run-b" in text
    bundle = load_bundle(path)
    assert [m.run for m in bundle.members] == ["run-a", "run-b"]
    assert "plan_1.json" not in bundle.documents


def test_ensemble_probability_is_the_mean_of_its_members(bundles: dict[str, Path]) -> None:
    img = _study()
    alone = [Segmenter(bundles[k]).predict(img, keep_probabilities=True) for k in "ab"]
    both = Segmenter(bundles["ab"]).predict(img, keep_probabilities=True)
    pa, pb = (p.probabilities.array for p in alone)  # type: ignore[union-attr]
    assert np.abs(pa - pb).max() > 0.2  # the members disagree somewhere
    got = both.probabilities.array  # type: ignore[union-attr]
    np.testing.assert_allclose(got, (pa + pb) / 2, rtol=0, atol=1e-5)
    # the members' disagreement is the uncertainty, as TTA members' is
    assert alone[0].volume_spread_ml is None
    assert both.volume_spread_ml is not None  # the members' masks agree: spread 0 mL
    assert both.uncertainty is not None
    assert both.uncertainty > (alone[0].uncertainty or 0.0) + 0.01  # a sure A, a softer B
    assert np.count_nonzero(both.labels.array) > 0
    # with flip TTA every member contributes its 8 flips
    segmenter = Segmenter(bundles["ab"])
    array = np.random.default_rng(0).normal(size=(4, 20, 18, 16)).astype(np.float32)
    members = segmenter.probabilities(array, tta=True, members=True)
    assert members.shape[0] == 16
    mean = segmenter.probabilities(array, tta=True)
    np.testing.assert_allclose(mean, members.mean(axis=0), rtol=0, atol=1e-6)


def test_ensemble_bundle_runs_without_torch(bundles: dict[str, Path], tmp_path: Path) -> None:
    img = _study()
    study = write_nifti(img, tmp_path / "s.nii.gz")
    out = tmp_path / "out"
    res = run_without_torch(
        f"""
        from medai.cli.main import app
        try:
            app(["predict", {str(bundles["ab"])!r}, {str(study)!r}, "--out", {str(out)!r}])
        except SystemExit as stop:
            print("EXIT", stop.code)
        """
    )
    assert "EXIT 0" in res.stdout, res.stdout + res.stderr
    got: np.ndarray = read_nifti(out / "s.nii.gz").array
    want = Segmenter(bundles["ab"]).predict(img).labels.array
    np.testing.assert_array_equal(got, want)
    assert all(mask.sum() > 0 for mask in region_masks(got[0]).values())


def test_a_tampered_or_missing_member_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    changed = Path(shutil.copytree(bundles["ab"], tmp_path / "changed"))
    data = bytearray((changed / "model_1.onnx").read_bytes())
    data[-1] ^= 0xFF
    (changed / "model_1.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=r"model_1\.onnx changed since export"):
        load_bundle(changed)
    gone = Path(shutil.copytree(bundles["ab"], tmp_path / "gone"))
    (gone / "model_1.onnx").unlink()
    with pytest.raises(BundleIntegrityError, match=r"model_1\.onnx is missing"):
        load_bundle(gone)
    # a forger who relists the manifest still cannot drop a member
    files = {p.name: p.read_bytes() for p in gone.iterdir() if p.name != MANIFEST}
    (gone / MANIFEST).write_text(json.dumps(build_manifest(files)))
    with pytest.raises(BundleIntegrityError, match=r"model_1\.onnx of ensemble member 1"):
        load_bundle(gone)


def test_runs_of_different_plans_are_refused_naming_the_field(tmp_path: Path) -> None:
    a = _seg_run()
    other = _seg_run(extra=["preprocess.target_spacing=[1.5,1.5,1.5]"])
    with pytest.raises(ExportError, match=r"member 1 differs from member 0 in preprocess\."
                       r"target_spacing"):  # fmt: skip
        export_bundle([a, other], tmp_path / "x", parity_cases=[_study()])
    assert not (tmp_path / "x").exists()
    # a threshold is the lead's to set: members may differ in it
    check_same_plan([a.plan, _seg_run(extra=["inference.threshold=0.4"]).plan], ["a", "b"])
    image = _image_plan("binary", 1.0, 0.0)
    with pytest.raises(ExportError, match=r"in task: 'binary' instead of 'segmentation'"):
        check_same_plan([a.plan, image], ["a", "b"])
    wider = apply_overrides(image, ["input.size=[20,16]"])
    with pytest.raises(ExportError, match=r"b differs from a in input\.size"):
        check_same_plan([image, wider], ["a", "b"])


def test_a_member_that_fails_parity_is_named(tmp_path: Path) -> None:
    with pytest.raises(ParityError, match=r"ensemble member \d: ONNX Runtime differs"):
        export_bundle([_seg_run(), _seg_run(soft=0.05)], tmp_path / "x",
                      parity_cases=[_study()], tolerance=0.0)  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_cli_takes_several_runs_then_the_output(tmp_path: Path) -> None:
    (tmp_path / "r1" / "model.pt").parent.mkdir()
    (tmp_path / "r1" / "model.pt").write_bytes(b"")
    res = CliRunner().invoke(
        app, ["export", str(tmp_path / "r1"), str(tmp_path / "r2"), str(tmp_path / "out")]
    )
    assert res.exit_code == 2
    assert "r2 has no model.pt" in res.output  # the second run was read as a run, not OUT


# --- classification and regression ensembles -------------------------------------


def _image_plan(task: str, temperature: float, mean: float) -> Plan:
    return Plan.model_validate({
        "task": task, "channels": ["image"],
        "classes": ["0", "1"] if task == "binary" else ["value"],
        "network": {"architecture": "resnet18"},
        "input": {"spatial_dims": 2, "size": [16, 16]},
        "target": {"temperature": temperature, "mean": mean, "std": 3.0,
                   "uncertainty_passes": 3},
    })  # fmt: skip


def _image_run(task: str, seed: int, temperature: float, mean: float) -> LoadedRun:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 4), nn.Tanh(), nn.Linear(4, 1))
    return LoadedRun(_image_plan(task, temperature, mean), net.eval(), torch.device("cpu"))


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_image_ensemble_averages_the_members_outputs(task: str, tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(12, 1, 16, 16)).astype(np.float32)
    ids = [f"c{i}" for i in range(len(x))]
    a, b = _image_run(task, 0, 1.0, 0.0), _image_run(task, 1, 2.5, 4.0)  # own calibrations
    common = {"parity_inputs": x, "reference_inputs": x[:4], "reference_ids": ids[:4]}
    export_image_bundle(a, tmp_path / "a", **common)  # type: ignore[arg-type]
    export_image_bundle(b, tmp_path / "b", **common)  # type: ignore[arg-type]
    runs = [tmp_path / "run-a", tmp_path / "run-b"]
    export_image_bundle([a, b], tmp_path / "ab", run_dir=runs, **common)  # type: ignore[arg-type]
    alone = [Classifier(tmp_path / k).predict_arrays(x, ids) for k in "ab"]
    both = Classifier(tmp_path / "ab").predict_arrays(x, ids)
    oa, ob = (np.array([p.output for p in preds]) for preds in alone)
    assert np.abs(oa - ob).max() > 0.05  # the members differ
    np.testing.assert_allclose([p.output for p in both], (oa + ob) / 2, rtol=0, atol=1e-5)
    if task == "binary":
        threshold = 0.5  # no learnt threshold in these plans
        assert [p.decision for p in both] == [int(v >= threshold) for v in (oa + ob) / 2]
    unc = np.array([p.uncertainty for p in both])
    assert np.all(unc > 0)
    bundle = load_bundle(tmp_path / "ab")
    assert bundle.info["members"][1]["run"] == "run-b"
    assert bundle.documents["model_card.json"]["ensemble"]["members"] == 2
    assert len(bundle.documents["parity.json"]["members"]) == 2
