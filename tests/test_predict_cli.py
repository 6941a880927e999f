"""The four commands end to end on a tiny cohort: plan → preprocess → train → predict."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from _seg_cohort import make_msd
from medai.cli.main import app
from medai.io import read_nifti
from medai.preprocess import load_plan


def test_plan_preprocess_train_predict_cli(tmp_path: Path) -> None:
    msd = make_msd(tmp_path / "msd", cases=4)
    runner = CliRunner()
    tiny = [
        "--set",
        "train.patch_size=[16,16,16]",
        "--set",
        "network.depth=3",
        "--set",
        "network.base_channels=4",
        "--set",
        "train.steps_per_epoch=2",
    ]
    res = runner.invoke(
        app,
        ["plan", str(msd), "-o", str(tmp_path / "plan.yaml"), "--epochs", "1", "--no-probe", *tiny],
    )
    assert res.exit_code == 0, res.output
    plan = load_plan(tmp_path / "plan.yaml")
    assert plan.train.epochs == 1
    assert plan.train.time_budget_s is None
    res = runner.invoke(
        app,
        [
            "preprocess",
            str(msd),
            "--plan",
            str(tmp_path / "plan.yaml"),
            "--cache",
            str(tmp_path / "cache"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "4 cases (0 cached)" in res.output
    res = runner.invoke(
        app,
        [
            "train",
            str(msd),
            str(tmp_path / "run"),
            "--plan",
            str(tmp_path / "plan.yaml"),
            "--cache",
            str(tmp_path / "cache"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "best validation Dice" in res.output
    image = msd / "imagesTr" / "BRATS_000.nii.gz"
    res = runner.invoke(app, ["predict", str(tmp_path / "run"), str(image), str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    labels = read_nifti(tmp_path / "pred" / "labels.nii.gz")
    assert labels.same_grid(read_nifti(image))
    volumes = json.loads((tmp_path / "pred" / "volumes.json").read_text())["volumes_ml"]
    assert set(volumes) == {"WT", "TC", "ET"}


def test_cli_reports_bad_override_cleanly(tmp_path: Path) -> None:
    msd = make_msd(tmp_path / "msd", cases=2)
    res = CliRunner().invoke(
        app,
        ["plan", str(msd), "--no-probe", "--set", "train.nope=1", "-o", str(tmp_path / "p.yaml")],
    )
    assert res.exit_code == 2
    assert "unknown plan field 'nope'" in res.output
