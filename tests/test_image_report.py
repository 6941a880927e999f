"""Evaluation report of classification and regression runs, from hand-built prediction
tables with known figures, and once end to end on a tiny trained 2D binary run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from medai.data import Case, Dataset, Splits, import_medmnist_npz
from medai.data.manifest import TaskType
from medai.errors import DatasetError
from medai.evaluation import Answer, compute_ece, figure_to_png
from medai.evaluation.image_report import evaluate_image_predictions
from medai.preprocess import Plan
from medai.preprocess.plan import TaskKind

N_RESAMPLES = 300
DECIDES = "Is the way the model decides shown?"


def _plan(task: str, classes: list[str], **target: Any) -> Plan:
    return Plan.model_validate(
        {
            "task": task,
            "classes": classes,
            "network": {"architecture": "resnet18"},
            "input": {"spatial_dims": 2, "size": [32, 32]},
            "target": target,
        }
    )


def _dataset(splits: dict[str, int], task: str = "classification") -> Dataset:
    cases, ids = [], {}
    for split, n in splits.items():
        ids[split] = [f"{split}{i:02d}" for i in range(n)]
        cases += [
            Case(
                patient_id=f"{split}-p{i // 2}",
                case_id=case_id,
                image=Path(f"{case_id}.png"),
                target="0",
                clinical={"site": "AB"[i % 2], "age": 30 + i},
            )
            for i, case_id in enumerate(ids[split])
        ]
    return Dataset(
        name="toy",
        task=TaskType(task),
        classes=["0", "1"] if task != "regression" else [],
        cases=cases,
        splits=Splits.model_validate(ids),
    )


def _write(table: pd.DataFrame, folder: Path, split: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / f"{split}.csv", index=False)


def _binary_table(split: str, temperature: float) -> pd.DataFrame:
    """40 cases: 20 positive (16 above 0.3, 12 above 0.5), 20 negative (2 above 0.3, none
    above 0.5); the six wrong cases at 0.3 are the most uncertain ones."""
    rng = np.random.default_rng(1)
    truth = np.r_[np.ones(20), np.zeros(20)]
    output = np.r_[
        np.full(12, 0.8), np.full(4, 0.35), np.full(4, 0.1), np.full(18, 0.05), np.full(2, 0.4)
    ]
    output = output + rng.uniform(-0.02, 0.02, 40)
    wrong = np.r_[np.zeros(16), np.ones(4), np.zeros(18), np.ones(2)].astype(bool)
    uncertainty = np.where(wrong, 0.9, 0.1) + rng.uniform(0, 0.05, 40)
    return pd.DataFrame(
        {
            "case_id": [f"{split}{i:02d}" for i in range(40)],
            "patient_id": [f"{split}-p{i // 2}" for i in range(40)],
            "split": split,
            "target": truth.astype(int).astype(str),
            "truth": truth,
            "output": output,
            "logit_0": temperature * np.log(output / (1 - output)),
            "decision": (output >= 0.3).astype(int),
            "uncertainty": uncertainty,
            "needs_review": uncertainty > 0.5,
        }
    )


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Plan]:
    root = tmp_path_factory.mktemp("binary")
    plan = _plan(
        "binary",
        ["0", "1"],
        threshold=0.3,
        temperature=2.0,
        policy="sensitivity",
        policy_target=0.8,
        review_above=0.5,
    )
    pred = root / "eval" / "predictions"
    _write(_binary_table("test", 2.0), pred, "test")
    _write(_binary_table("external", 2.0), pred, "external")
    gallery = root / "run" / "explain" / "gallery"
    gallery.mkdir(parents=True)
    figure = Figure(figsize=(1, 1))
    figure.add_subplot().imshow(np.eye(4))
    (gallery / "case_00.png").write_bytes(figure_to_png(figure))
    explain = {
        "method": "gradcam",
        "pointing_game": {"hits": 9, "n": 10, "rate": 0.9, "chance": 0.05},
        "randomisation": [
            {"layer": "fc", "spearman": 0.6, "ssim": 0.5},
            {"layer": "layer4", "spearman": 0.1, "ssim": 0.1},
        ],
    }
    (root / "run" / "explain" / "explain.json").write_text(json.dumps(explain))
    result = evaluate_image_predictions(
        root / "run",
        plan,
        out_dir=root / "eval",
        dataset=_dataset({"test": 40, "external": 40}),
        n_resamples=N_RESAMPLES,
        min_subgroup_cases=5,
    )
    return result, root, plan


def test_binary_operating_point_at_stored_threshold(binary_run: tuple[Any, Path, Plan]) -> None:
    result, _, _ = binary_run
    doc = json.loads(result.metrics_path.read_text())
    test = doc["splits"]["test"]["aggregate"]
    expected = {
        "sensitivity": 16 / 20,
        "specificity": 18 / 20,
        "ppv": 16 / 18,
        "npv": 18 / 22,
        "accuracy": 34 / 40,
        "roc_auc": (12 * 20 + 4 * 18 + 4 * 18) / 400,
    }
    for name, value in expected.items():
        ci = test[name]
        assert ci["estimate"] == pytest.approx(value), name
        assert ci["low"] <= ci["estimate"] <= ci["high"], name
        assert ci["high"] - ci["low"] > 0.01, name
        assert ci["n_patients"] == 20
    assert doc["threshold"] == {
        "value": 0.3,
        "learnt": True,
        "policy": "sensitivity",
        "policy_target": 0.8,
        "chosen_on": "validation",
        "protocol": None,
    }
    assert result.per_case.loc[result.per_case["split"] == "test", "correct"].sum() == 34


def test_binary_calibration_referral_and_review(binary_run: tuple[Any, Path, Plan]) -> None:
    result, _, _ = binary_run
    doc = json.loads(result.metrics_path.read_text())["splits"]["test"]
    table = result.per_case[result.per_case["split"] == "test"]
    after = compute_ece(table["truth"].astype(int), table["output"])
    assert doc["calibration"]["ece_after"] == pytest.approx(after, abs=1e-9)
    raw = 1 / (1 + np.exp(-table["logit_0"]))
    assert doc["calibration"]["ece_before"] == pytest.approx(
        compute_ece(table["truth"].astype(int), raw), abs=1e-9
    )
    # 4 of 40 referred, all wrong: 34 of the 36 kept are right
    assert doc["referral"]["at_10_percent"] == {
        "all": pytest.approx(34 / 40),
        "kept": pytest.approx(34 / 36),
    }
    rho = doc["aggregate"]["spearman_uncertainty_error"]
    assert 0.5 < rho["estimate"] <= 1
    assert rho["low"] <= rho["estimate"] <= rho["high"]
    assert doc["needs_review"] == 6


def test_binary_report_external_subgroups_and_gallery(binary_run: tuple[Any, Path, Plan]) -> None:
    result, root, _ = binary_run
    assert result.splits == ["test", "external"]
    assert set(result.aggregates) == {"test", "external"}
    html = result.report_path.read_text()
    for text in (
        "Operating point — test",
        "Calibration — external",
        "chosen on the validation",
        "External test set",
        "Subgroups — test",
        "Pointing game",
        "Referring the 10 %",
        "case_00",
    ):
        assert text in html, text
    assert result.subgroups is not None
    assert set(result.subgroups.table["column"]) >= {"site"}
    decides = next(c for c in result.checklist if c.question == DECIDES)
    assert decides.answer is Answer.YES
    assert "randomisation" in decides.how
    doc = json.loads(result.metrics_path.read_text())
    assert doc["explain"]["randomisation_checked"] is True
    assert (root / "eval" / "report.html").is_file()


def test_regression_beats_the_mean_predictor(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    truth = np.linspace(20, 80, 30)
    output = truth + rng.normal(0, 2, 30)
    table = pd.DataFrame(
        {
            "case_id": [f"test{i:02d}" for i in range(30)],
            "patient_id": [f"test-p{i // 2}" for i in range(30)],
            "split": "test",
            "truth": truth,
            "output": output,
            "logit_0": 0.0,
            "decision": -1,
            "uncertainty": np.abs(output - truth) + rng.uniform(0, 0.1, 30),
            "needs_review": False,
        }
    )
    _write(table, tmp_path / "eval" / "predictions", "test")
    plan = _plan("regression", ["age"], mean=50.0, std=17.0)
    result = evaluate_image_predictions(
        tmp_path / "run",
        plan,
        out_dir=tmp_path / "eval",
        n_resamples=N_RESAMPLES,
        dataset=_dataset({"test": 30}, task="regression"),
    )
    doc = json.loads(result.metrics_path.read_text())["splits"]["test"]
    mae = doc["aggregate"]["mae"]
    assert mae["estimate"] == pytest.approx(np.mean(np.abs(output - truth)))
    assert mae["low"] <= mae["estimate"] <= mae["high"]
    assert doc["aggregate"]["r2"]["estimate"] > 0.95
    base = doc["baseline"]
    assert base["mae_mean"] == pytest.approx(np.mean(np.abs(truth - 50.0)))
    assert base["difference"] < 0
    assert base["low"] <= base["difference"] <= base["high"] < 0
    # uncertainty follows |error| exactly in rank order: referral lowers the kept MAE
    assert doc["referral"]["at_10_percent"]["kept"] < doc["referral"]["at_10_percent"]["all"]
    assert doc["aggregate"]["spearman_uncertainty_error"]["estimate"] > 0.9
    html = result.report_path.read_text()
    assert "Bland–Altman" in html
    assert "training mean" in html
    decides = next(c for c in result.checklist if c.question == DECIDES)
    assert decides.answer is Answer.YES
    assert "uncertainty" in decides.how


def test_multiclass_and_multilabel_tables(tmp_path: Path) -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]] * 8)
    truth = np.tile([0, 1, 2], 8)
    truth[:2] = [1, 0]  # two wrong decisions
    table = pd.DataFrame(
        {
            "case_id": [f"test{i:02d}" for i in range(24)],
            "patient_id": [f"p{i}" for i in range(24)],
            "truth": truth,
            **{f"prob_{c}": probs[:, k] for k, c in enumerate("abc")},
            **{f"logit_{k}": np.log(probs[:, k]) for k in range(3)},
        }
    )
    _write(table, tmp_path / "mc" / "predictions", "test")
    result = evaluate_image_predictions(
        tmp_path / "run",
        _plan("multiclass", ["a", "b", "c"]),
        out_dir=tmp_path / "mc",
        dataset=_dataset({"test": 24}),
        n_resamples=N_RESAMPLES,
    )
    assert result.aggregates["test"]["accuracy"].estimate == pytest.approx(22 / 24)
    labels = pd.DataFrame(
        {
            "case_id": table["case_id"],
            "patient_id": table["patient_id"],
            "truth_x": np.tile([1, 0], 12),
            "truth_y": np.tile([1, 1, 0, 0], 6),
            "prob_x": np.tile([0.9, 0.2], 12),
            "prob_y": np.tile([0.3, 0.6, 0.7, 0.1], 6),
        }
    )
    _write(labels, tmp_path / "ml" / "predictions", "test")
    result = evaluate_image_predictions(
        tmp_path / "run",
        _plan("multilabel", ["x", "y"]),
        out_dir=tmp_path / "ml",
        dataset=_dataset({"test": 24}),
        n_resamples=N_RESAMPLES,
    )
    assert result.aggregates["test"]["roc_auc/x"].estimate == pytest.approx(1.0)
    assert result.aggregates["test"]["roc_auc/y"].estimate == pytest.approx(0.5)
    assert "uncertainty" in " ".join(
        json.loads(result.metrics_path.read_text())["splits"]["test"]["notes"]
    )


def test_bad_tables_are_refused(tmp_path: Path) -> None:
    plan = _plan("binary", ["0", "1"], threshold=0.3)
    data = _dataset({"test": 40})
    with pytest.raises(DatasetError, match="no prediction table for split 'test'"):
        evaluate_image_predictions(tmp_path, plan, out_dir=tmp_path / "e", dataset=data)
    _write(
        _binary_table("test", 1.0).drop(columns=["output"]), tmp_path / "e" / "predictions", "test"
    )
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['output'\]"):
        evaluate_image_predictions(tmp_path, plan, out_dir=tmp_path / "e", dataset=data)
    _write(_binary_table("test", 1.0).iloc[1:], tmp_path / "e" / "predictions", "test")
    with pytest.raises(DatasetError, match="no row for 1 case"):
        evaluate_image_predictions(tmp_path, plan, out_dir=tmp_path / "e", dataset=data)
    blank = _binary_table("test", 1.0)
    blank.loc[3, "truth"] = np.nan
    _write(blank, tmp_path / "e" / "predictions", "test")
    with pytest.raises(DatasetError, match="'test03' of split 'test' has no reference"):
        evaluate_image_predictions(tmp_path, plan, out_dir=tmp_path / "e", dataset=data)
    with pytest.raises(ValueError, match="segmentation run is scored from label maps"):
        evaluate_image_predictions(tmp_path, Plan(), out_dir=tmp_path / "e", dataset=data)
    assert not (tmp_path / "e" / "metrics.json").exists()


def _blob_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {}
    for split, n in (("train", 48), ("val", 24), ("test", 24)):
        y = np.arange(n) % 2
        x = rng.normal(100, 20, (n, 28, 28))
        for i in np.flatnonzero(y):
            cx, cy = rng.integers(6, 22, 2)
            x[i, cx - 3 : cx + 3, cy - 3 : cy + 3] += 80
        arrays[f"{split}_images"] = x.clip(0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = y[:, None]
    np.savez(path, **arrays)
    return path


def test_evaluate_run_on_a_trained_binary_run(tmp_path: Path) -> None:
    from medai.cli.console import console
    from medai.cli.eval_cmd import show_evaluation
    from medai.inference import load_run
    from medai.pipeline import evaluate_run
    from medai.training import train
    from medai.training.planner_image import make_image_plan

    data = import_medmnist_npz(_blob_npz(tmp_path / "toy.npz"))
    plan = make_image_plan(
        data,
        time_budget_s=None,
        device="cpu",
        probe=False,
        overrides=[
            "train.epochs=2",
            "input.size=[32,32]",
            "network.architecture=resnet18",
            "network.width=0.25",
        ],
    )
    train(data, plan, tmp_path / "run", device="cpu")
    result = evaluate_run(tmp_path / "run", dataset=data, n_resamples=200, device="cpu")
    stored = load_run(tmp_path / "run", device="cpu").plan
    assert stored.task is TaskKind.BINARY
    assert stored.target.threshold is not None
    doc = json.loads(result.metrics_path.read_text())
    assert doc["threshold"]["value"] == pytest.approx(stored.target.threshold)
    assert doc["splits"]["test"]["n_cases"] == 24
    assert (tmp_path / "run" / "evaluation" / "predictions" / "test.csv").is_file()
    assert {"roc_auc", "sensitivity", "specificity"} <= set(result.aggregates["test"])
    assert "Operating point — test" in result.report_path.read_text()
    with console.capture() as captured:
        show_evaluation(result)
    shown = captured.get()
    assert "ROC-AUC" in shown
    assert "sensitivity" in shown
    assert "policy youden" in shown


def test_undefined_npv_leaves_the_other_rates(tmp_path: Path) -> None:
    """Two of 30 cases called negative: NPV is undefined in ~13 % of resamples."""
    truth = np.r_[np.ones(15), np.zeros(15)]
    output = np.r_[np.full(14, 0.9), 0.1, np.full(14, 0.6), 0.1]
    table = pd.DataFrame(
        {
            "case_id": [f"test{i:02d}" for i in range(30)],
            "patient_id": [f"p{i}" for i in range(30)],
            "truth": truth,
            "output": output,
        }
    )
    _write(table, tmp_path / "e" / "predictions", "test")
    result = evaluate_image_predictions(
        tmp_path / "run",
        _plan("binary", ["0", "1"], threshold=0.3),
        out_dir=tmp_path / "e",
        dataset=_dataset({"test": 30}),
        n_resamples=N_RESAMPLES,
    )
    found = result.aggregates["test"]
    assert found["sensitivity"].estimate == pytest.approx(14 / 15)
    assert found["specificity"].estimate == pytest.approx(1 / 15)
    assert "npv" not in found
    notes = json.loads(result.metrics_path.read_text())["splits"]["test"]["notes"]
    assert any(note.startswith("npv: no interval") for note in notes)
