"""What a user gets wrong ends in one red line and exit code 2; a bug shows its traceback.

Each case feeds the real ``medai`` command a real bad input (a plan, an override, a
manifest, a dataset folder, an option value) and checks that exactly one ``error:`` line
names the problem, with no traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from data_fixtures import AFFINE, write_msd
from medai.cli.console import user_errors
from medai.cli.main import app
from medai.data import import_msd
from medai.errors import DatasetError, PlanError
from medai.image import LabelMap
from medai.io import write_nifti
from medai.preprocess import Plan, save_plan

runner = CliRunner()


def _error_line(args: list[str]) -> str:
    """Run ``medai ARGS``; assert exit 2 and one error line without a traceback; return it."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def msd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_msd(tmp_path_factory.mktemp("cli") / "msd", 3, clinical=False)


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    plan = Plan(channels=["FLAIR", "T1w", "t1gd", "T2w"], regions={"WT": [1, 2, 3]})
    return save_plan(plan, tmp_path_factory.mktemp("plan") / "plan.yaml")


def _manifest(msd: Path, tmp_path: Path, **case_update: object) -> Path:
    ds = import_msd(msd)
    cases = [ds.cases[0].model_copy(update=case_update), *ds.cases[1:]]
    return ds.model_copy(update={"cases": cases}).save(tmp_path / "dataset.yaml")


def test_plan_yaml_with_a_bad_value_names_field_and_choices(msd: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  loss: focal\nnetwork:\n  architecture: resnet\n", "utf-8")
    line = _error_line(["preprocess", str(msd), "--plan", str(bad)])
    assert "train.loss: Input should be 'dice_ce' or 'dice_focal' (got 'focal')" in line
    assert "network.architecture: Input should be 'unet', 'basicunet', 'dynunet', " in line
    assert "'resnet18', 'resnet50' or 'efficientnet-b0' (got 'resnet')" in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train: [1, 2\n", "not valid YAML"),
        ("- a list\n", "holds a mapping"),
        ("train:\n  lrr: 0.1\n", "unknown plan field 'lrr'; fields of train: amp, augment"),
        ("trian:\n  lr: 0.1\n", "unknown plan field 'trian'; fields of the plan: channels"),
    ],
)
def test_bad_plan_files(msd: Path, tmp_path: Path, text: str, expected: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, "utf-8")
    assert expected in _error_line(["preprocess", str(msd), "--plan", str(bad)])


def test_missing_plan_file_says_how_to_make_one(msd: Path, tmp_path: Path) -> None:
    line = _error_line(["preprocess", str(msd), "--plan", str(tmp_path / "none.yaml")])
    assert "not found; write one with `medai plan DATASET" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "train.nope=1"], "unknown plan field 'nope'"),
        (["--set", "train.lr"], "must look like section.field=value"),
        (["--set", "train.loss=focal"], "train.loss: Input should be 'dice_ce' or 'dice_focal'"),
        (["--time-budget", "ten minutes"], "duration 'ten minutes' must look like"),
        (["--time-budget", "-5m"], "duration must be a positive"),
        (["--device", "gpu"], "--device 'gpu': use cpu, cuda"),
    ],
)
def test_bad_plan_options(msd: Path, tmp_path: Path, args: list[str], expected: str) -> None:
    line = _error_line(["plan", str(msd), "--no-probe", "-o", str(tmp_path / "p.yaml"), *args])
    assert expected in line
    assert not (tmp_path / "p.yaml").exists()


def test_override_file_with_an_unknown_key(msd: Path, tmp_path: Path) -> None:
    config = tmp_path / "over.yaml"
    config.write_text(yaml.safe_dump({"train": {"batchsize": 4}}), "utf-8")
    line = _error_line(["plan", str(msd), "--no-probe", "--config", str(config)])
    assert "override 'train.batchsize': unknown plan field 'batchsize'" in line


def test_manifest_entry_without_a_label(msd: Path, tmp_path: Path) -> None:
    manifest = _manifest(msd, tmp_path, label=None)
    line = _error_line(["plan", str(manifest), "--no-probe", "-o", str(tmp_path / "p.yaml")])
    assert "have no label, e.g. ['BRATS_001']" in line
    assert "add 'label' to those manifest entries" in line


def test_missing_image_file(msd: Path, tmp_path: Path, plan_file: Path) -> None:
    manifest = _manifest(msd, tmp_path, image=tmp_path / "gone.nii.gz")
    args = ["preprocess", str(manifest), "--plan", str(plan_file), "--cache", str(tmp_path / "c")]
    line = _error_line(args)
    assert "case 'BRATS_001': file" in line
    assert "gone.nii.gz does not exist; fix the path in the manifest" in line


def test_unknown_label_value(msd: Path, tmp_path: Path, plan_file: Path) -> None:
    label = np.zeros((8, 8, 6), np.int16)
    label[2:5, 2:5, 2:4] = 9
    path = write_nifti(LabelMap(label, AFFINE), tmp_path / "odd_label.nii.gz")
    manifest = _manifest(msd, tmp_path, label=path)
    args = ["preprocess", str(manifest), "--plan", str(plan_file), "--cache", str(tmp_path / "c")]
    line = _error_line(args)
    assert "label file" in line
    assert "holds values [9]" in line
    assert "declare them under 'labels'" in line


def test_manifest_that_does_not_validate(tmp_path: Path) -> None:
    bad = tmp_path / "dataset.yaml"
    bad.write_text("name: d\nlabels: {1: tumour}\ncases: []\n", "utf-8")
    line = _error_line(["data", "check", str(bad)])
    assert "invalid manifest" in line
    assert "labels must declare 0 (background)" in line


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda d: d.mkdir(), "not a known dataset layout"),
        (lambda d: None, "no such file or folder"),
        (
            lambda d: (d.mkdir(), (d / "dataset.json").write_text('{"training": [{}]}')),
            "has no 'image' path",
        ),
        (lambda d: (d.mkdir(), (d / "dataset.json").write_text("{oops")), "not readable JSON"),
    ],
)
def test_dataset_folder_of_the_wrong_layout(tmp_path: Path, build: object, expected: str) -> None:
    folder = tmp_path / "data"
    build(folder)  # type: ignore[operator]
    assert expected in _error_line(["data", "import", str(folder), "-o", str(tmp_path / "d.yaml")])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--split", "holdout"], "split must be one of train, validation, test, external"),
        (["--split", "train"], "would score the model on its own training cases"),
        (["--device", "tpu"], "--device 'tpu'"),
    ],
)
def test_bad_evaluate_options(tmp_path: Path, args: list[str], expected: str) -> None:
    assert expected in _error_line(["evaluate", str(tmp_path), *args])


def test_bad_split_fractions(msd: Path, tmp_path: Path) -> None:
    manifest = import_msd(msd).save(tmp_path / "dataset.yaml")
    line = _error_line(["data", "split", str(manifest), "--test", "0.6", "--validation", "0.5"])
    assert "leaves no case to train on" in line


def test_bad_synth_option(tmp_path: Path) -> None:
    line = _error_line(["synth", "glioma", str(tmp_path / "c"), "--spacing", "0.5"])
    assert "spacing must be between 1 and 8 mm" in line


def test_user_errors_lets_programming_errors_through() -> None:
    with pytest.raises(typer.Exit) as stopped, user_errors():
        raise DatasetError("a user's problem")
    assert stopped.value.exit_code == 2
    with pytest.raises(typer.Exit), user_errors():
        raise FileNotFoundError(2, "No such file or directory", "x.yaml")
    for bug in (ValueError("a bug"), TypeError("a bug"), KeyError("a bug")):
        with pytest.raises(type(bug)), user_errors():
            raise bug
    assert issubclass(PlanError, ValueError)  # callers catching ValueError still work


def test_run_whose_model_holds_no_valid_plan(tmp_path: Path) -> None:
    import torch

    torch.save({"plan": {"train": {"loss": "focal"}}, "model": {}}, tmp_path / "model.pt")
    line = _error_line(
        ["predict", str(tmp_path), str(tmp_path / "x.nii.gz"), "--out", str(tmp_path)]
    )
    assert "model.pt holds no valid plan (train.loss: Input should be 'dice_ce'" in line
    assert "retrain the run" in line
