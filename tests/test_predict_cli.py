"""The four commands end to end on a tiny cohort: plan → preprocess → train → predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _seg_cohort import make_msd
from medai.cli.main import app
from medai.io import read_nifti
from medai.preprocess import load_plan


def test_plan_preprocess_train_predict_cli(tmp_path: Path) -> None:
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
    res = runner.invoke(app, ["predict", str(run), str(image), str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    labels = read_nifti(tmp_path / "pred" / "labels.nii.gz")
    assert labels.same_grid(read_nifti(image))
    truth = read_nifti(msd / "labelsTr" / f"{case}.nii.gz").array[0]
    pred = labels.array[0]
    wt_dice = 2 * np.sum((pred > 0) & (truth > 0)) / (np.sum(pred > 0) + np.sum(truth > 0))
    assert wt_dice > 0.8, wt_dice
    volumes = json.loads((tmp_path / "pred" / "volumes.json").read_text())["volumes_ml"]
    assert volumes["WT"] == pytest.approx(np.count_nonzero(pred) * 8 / 1000)
    assert set(volumes) == {"WT", "TC", "ET"}


def test_cli_reports_bad_override_cleanly(tmp_path: Path) -> None:
    msd = make_msd(tmp_path / "msd", cases=2)
    res = CliRunner().invoke(
        app,
        ["plan", str(msd), "--no-probe", "--set", "train.nope=1", "-o", str(tmp_path / "p.yaml")],
    )
    assert res.exit_code == 2
    assert "unknown plan field 'nope'" in res.output
