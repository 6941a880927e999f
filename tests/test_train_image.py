"""Image → label and image → number runs on the one trainer: a stored decision
threshold that rescues an imbalanced task, multi-class, regression, and refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medai.data import Dataset, TaskType, import_medmnist_npz
from medai.errors import DatasetError, PlanError
from medai.evaluation import compute_balanced_accuracy, compute_mae, compute_roc_auc
from medai.evaluation.run_report import evaluation_splits
from medai.inference import load_run
from medai.pipeline_image import predict_image_splits
from medai.preprocess.plan import Plan, TaskKind, ThresholdPolicy, apply_overrides
from medai.training import make_plan, train
from medai.training.tasks import Validation
from medai.training.tasks.outputs import finalise_outputs

SMALL = ["network.architecture=resnet18", "network.width=0.25", "target.uncertainty=none"]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: the same sums, so the same run, however many workers pytest has."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(path: Path, *, sizes: dict[str, int], positive: float, amplitude: float, seed: int = 0,
           decoys: float = 0.0, label=None) -> Dataset:  # fmt: skip
    """A MedMNIST-like ``.npz`` of 28² noise images; a bright 8² square marks positives,
    and a ``decoys`` share of negatives too (``label(rng, image, x, y)`` may give
    another target)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in sizes.items():
        x = rng.normal(100, 20, (n, 28, 28))
        y = (rng.random(n) < positive).astype(int)
        targets = []
        for i in range(n):
            cx, cy = rng.integers(6, 22, 2)
            if label is None and (y[i] or rng.random() < decoys):
                x[i, cx - 4 : cx + 4, cy - 4 : cy + 4] += amplitude
            targets.append(y[i] if label is None else label(rng, x[i], cx, cy))
        arrays[f"{split}_images"] = x.clip(0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = np.asarray(targets)[:, None]
    np.savez(path, **arrays)
    return import_medmnist_npz(path)


def _test_table(run_dir: Path, dataset: Dataset) -> pd.DataFrame:
    run = load_run(run_dir, device="cpu")
    splits = evaluation_splits(dataset, "test")
    paths = predict_image_splits(run, dataset, splits, run_dir / "pred", cache_dir=run_dir / "c")
    return pd.read_csv(paths["test"])


def test_stored_threshold_rescues_a_95_to_5_task(tmp_path: Path, one_thread: None) -> None:
    """Squares mark every positive and a fifth of the negatives, so a calibrated model
    puts positives near 0.2: argmax misses them, a validation-chosen threshold does not
    (at best: sensitivity 1, specificity 0.8)."""
    data = _blobs(
        tmp_path / "toy.npz",
        sizes={"train": 400, "val": 200, "test": 300},
        positive=0.05,
        amplitude=70,
        decoys=0.2,  # P(positive | square) ≈ 0.05 / (0.05 + 0.19) < 0.5: argmax says "no"
    )
    sets = ["train.epochs=16", "target.imbalance=none", "target.policy=youden", *SMALL]
    plan = make_plan(data, time_budget_s=None, device="cpu", probe=False, overrides=sets)
    assert plan.task is TaskKind.BINARY
    assert plan.input.size == (32, 32)
    train(data, plan, tmp_path / "run", device="cpu")
    table = _test_table(tmp_path / "run", data)
    stored = load_run(tmp_path / "run", device="cpu").plan.target.threshold
    assert stored is not None
    assert stored < 0.5
    argmax = compute_balanced_accuracy(table.truth, (table.output >= 0.5).astype(int))
    policy = compute_balanced_accuracy(table.truth, table.decision)
    assert compute_roc_auc(table.truth, table.output) > 0.75  # at most ≈ 0.88 with decoys
    assert argmax <= 0.6, f"argmax already balanced ({argmax:.2f}); the task is too easy"
    assert policy >= 0.75, f"stored threshold {stored:.3f}: balanced accuracy {policy:.2f}"

    # the same validation cases without the policy: the threshold falls back to 0.5
    record = json.loads((tmp_path / "run" / "validation.json").read_text())
    off = apply_overrides(Plan.model_validate(json.loads(json.dumps(plan.model_dump(mode="json")))),
                          ["target.policy=argmax"])  # fmt: skip
    finalise_outputs(off, Validation(record["best_score"], {}, record["cases"]))
    assert off.target.threshold == 0.5
    assert compute_balanced_accuracy(table.truth, table.output >= off.target.threshold) < 0.75


def test_multiclass_and_regression_learn(tmp_path: Path) -> None:
    def side(_rng: np.random.Generator, image: np.ndarray, cx: int, cy: int) -> int:
        image[cx - 4 : cx + 4, cy - 4 : cy + 4] += 60
        return int(cx >= 14) + int(cy >= 14)  # 0, 1 or 2 by the square's corner

    sizes = {"train": 240, "val": 60, "test": 90}
    data = _blobs(tmp_path / "mc.npz", sizes=sizes, positive=0.5, amplitude=0, label=side)
    plan = make_plan(data, time_budget_s=None, device="cpu", probe=False,
                     overrides=["train.epochs=6", *SMALL])  # fmt: skip
    assert plan.task is TaskKind.MULTICLASS
    assert plan.classes == ["0", "1", "2"]
    result = train(data, plan, tmp_path / "mc", device="cpu")
    assert result.best_score > 0.8  # validation macro ROC-AUC
    table = _test_table(tmp_path / "mc", data)
    accuracy = float((table.decision == table.truth).mean())
    assert accuracy > 0.6, accuracy

    def brightness(rng: np.random.Generator, image: np.ndarray, cx: int, cy: int) -> float:
        level = float(rng.uniform(0, 80))
        image[cx - 4 : cx + 4, cy - 4 : cy + 4] += level
        return level

    reg = _blobs(tmp_path / "reg.npz", sizes=sizes, positive=0.5, amplitude=0, label=brightness)
    reg = reg.model_copy(update={"task": TaskType.REGRESSION, "classes": []})
    for case in reg.cases:
        case.target = float(case.target)  # type: ignore[arg-type]
    plan = make_plan(reg, time_budget_s=None, device="cpu", probe=False,
                     overrides=["train.epochs=6", *SMALL])  # fmt: skip
    assert plan.task is TaskKind.REGRESSION
    train(reg, plan, tmp_path / "reg", device="cpu")
    table = _test_table(tmp_path / "reg", reg)
    mae = compute_mae(table.truth, table.output)
    baseline = compute_mae(table.truth, np.full(len(table), table.truth.mean()))
    assert mae < 0.7 * baseline, (mae, baseline)


def test_image_runs_refuse_bad_plans_and_data(tmp_path: Path) -> None:
    data = _blobs(tmp_path / "t.npz", sizes={"train": 8, "val": 4, "test": 4}, positive=0.5,
                  amplitude=30)  # fmt: skip
    plan = make_plan(data, time_budget_s=None, device="cpu", probe=False, overrides=SMALL)
    with pytest.raises(PlanError, match="classifier network"):
        apply_overrides(plan, ["network.architecture=unet"])
    with pytest.raises(PlanError, match="policy_target"):
        apply_overrides(plan, ["target.policy=sensitivity"])
    assert plan.target.policy is ThresholdPolicy.YOUDEN
    broken = data.model_copy(deep=True)
    broken.cases[0].target = "7"
    with pytest.raises(DatasetError, match="unknown class '7'"):
        train(broken, apply_overrides(plan, ["train.epochs=1"]), tmp_path / "r", device="cpu")
