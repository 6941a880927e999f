"""The four commands end to end on a tiny cohort: plan → preprocess → train → predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from _seg_cohort import make_msd
from medai.cli.demo import deploy_step
from medai.cli.main import app
from medai.inference import predict_case
from medai.io import read_nifti
from medai.preprocess import load_plan
from medai.runtime import Segmenter, load_bundle


def test_plan_preprocess_train_predict_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    msd = make_msd(tmp_path / "msd", cases=4)
    runner = CliRunner()
    tiny = [
        "train.patch_size=[16,16,16]", "network.depth=3", "network.base_channels=4",
        "network.residual_units=1", "train.steps_per_epoch=8", "train.lr=0.01",
        "train.val_every=3",
    ]  # fmt: skip
    sets = [arg for item in tiny for arg in ("--set", item)]
    res = runner.invoke(
        app,
        ["plan", str(msd), "-o", str(tmp_path / "plan.yaml"), "--epochs", "3", "--no-probe", *sets],
    )
    assert res.exit_code == 0, res.output
    plan = load_plan(tmp_path / "plan.yaml")
    assert plan.train.epochs == 3
    assert plan.train.time_budget_s is None
    assert plan.train.steps_per_epoch == 8
    cache = ["--cache", str(tmp_path / "cache")]
    res = runner.invoke(
        app, ["preprocess", str(msd), "--plan", str(tmp_path / "plan.yaml"), *cache]
    )
    assert res.exit_code == 0, res.output
    assert "4 cases (0 cached)" in res.output
    run = tmp_path / "run"
    res = runner.invoke(
        app, ["train", str(msd), str(run), "--plan", str(tmp_path / "plan.yaml"), *cache]
    )
    assert res.exit_code == 0, res.output
    # the printed Dice is the record's, and the figure tuned on itself says so
    val = json.loads((run / "validation.json").read_text())
    dice = " ".join(f"{k} {val['best_dice'][k]:.3f}" for k in ("WT", "TC", "ET"))
    head = f"best validation Dice (epoch 3; ET volume threshold cross-fitted): {dice}"
    assert head in res.output
    tuned = val["best_dice_tuned"]["ET"]
    assert f"ET {tuned:.3f} with its threshold tuned on these same cases (optimistic)" in res.output
    # predict the held-out validation case: a trained model finds its tumour
    (case,) = json.loads((run / "split.json").read_text())["validation"]
    image = msd / "imagesTr" / f"{case}.nii.gz"
    # a run folder is exported on the fly (ONNX checked against PyTorch on its cases)
    res = runner.invoke(app, ["predict", str(run), str(image), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    labels = read_nifti(tmp_path / "pred" / f"{case}.nii.gz")
    assert labels.same_grid(read_nifti(image))
    truth = read_nifti(msd / "labelsTr" / f"{case}.nii.gz").array[0]
    pred = labels.array[0]
    wt_dice = 2 * np.sum((pred > 0) & (truth > 0)) / (np.sum(pred > 0) + np.sum(truth > 0))
    assert wt_dice > 0.8, wt_dice
    volumes = json.loads((tmp_path / "pred" / f"{case}_volumes.json").read_text())["volumes_ml"]
    assert volumes["WT"] == pytest.approx(np.count_nonzero(pred) * 8 / 1000)
    assert set(volumes) == {"WT", "TC", "ET"}
    # the trained UNet exported as one zip: parity recorded, the same labels as PyTorch
    bundle = tmp_path / "model.zip"
    res = runner.invoke(app, ["export", str(run), str(bundle), "--zip"])
    assert res.exit_code == 0, res.output
    loaded = load_bundle(bundle)
    assert loaded.documents["parity.json"]["max_abs_diff"] < 1e-3
    assert len(loaded.documents["reference.json"]["cases"]) == 3  # the training cases
    card = loaded.documents["model_card.json"]
    assert card["training_data"]["training_cases"] == 3
    assert card["validation"]["best_dice"] == val["best_dice"]
    torch_labels = predict_case(run, image).labels.array
    onnx_labels = Segmenter(loaded).predict(image).labels.array
    assert np.mean(onnx_labels == torch_labels) > 0.999
    assert np.count_nonzero(onnx_labels) > 0
    # the demo's last step: bundle → one study as DICOM series → labels, SEG and SR; with
    # paths relative to the working directory, as `make demo` passes them
    monkeypatch.chdir(tmp_path)
    paths = deploy_step(run.relative_to(tmp_path), msd.relative_to(tmp_path), Path("deploy"))
    assert set(paths) == {"labels", "volumes", "uncertainty", "seg", "sr"}
    deployed = read_nifti(paths["labels"])
    assert np.count_nonzero(deployed.array) > 0
    assert pydicom.dcmread(paths["seg"]).Modality == "SEG"
    assert pydicom.dcmread(paths["sr"]).Modality == "SR"


def test_cli_reports_bad_override_cleanly(tmp_path: Path) -> None:
    msd = make_msd(tmp_path / "msd", cases=2)
    res = CliRunner().invoke(
        app,
        ["plan", str(msd), "--no-probe", "--set", "train.nope=1", "-o", str(tmp_path / "p.yaml")],
    )
    assert res.exit_code == 2
    assert "unknown plan field 'nope'" in res.output
