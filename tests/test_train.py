"""Training on a tiny cohort: outputs, records, and exact resume after a kill."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _seg_cohort import make_msd
from medai.preprocess import Plan, apply_overrides, as_cohort, load_plan
from medai.training import StepInfo, TrainCallback, build_loss, split_train_val, train

TINY = [
    "train.patch_size=[16,16,16]",
    "train.epochs=2",
    "train.time_budget_s=null",
    "train.steps_per_epoch=3",
    "train.val_every=1",
    "network.depth=3",
    "network.base_channels=4",
    "network.residual_units=1",
]


def tiny_plan(root: Path, extra: list[str] | None = None) -> Plan:
    cohort = as_cohort(root)
    plan = Plan(channels=cohort.channels, labels=cohort.labels, regions=cohort.regions)
    return apply_overrides(plan, TINY + (extra or []))


@pytest.fixture(scope="module")
def msd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_msd(tmp_path_factory.mktemp("seg") / "msd", cases=5)


class _Recorder(TrainCallback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.steps: list[StepInfo] = []
        self.stop_at = stop_at

    def on_step(self, step: StepInfo) -> None:
        self.steps.append(step)
        if self.stop_at is not None and step.global_step == self.stop_at:
            raise KeyboardInterrupt("simulated kill")


def test_train_writes_run_records(msd: Path, tmp_path: Path) -> None:
    rec = _Recorder()
    plan = tiny_plan(msd)
    run = tmp_path / "run"
    result = train(msd, plan, run, callbacks=[rec])
    assert result.steps == 6
    assert [s.global_step for s in rec.steps] == [1, 2, 3, 4, 5, 6]
    # run.json: what `medai evaluate RUN` reads to find the data
    assert json.loads((run / "run.json").read_text()) == {"dataset": str(msd.resolve())}
    # split.json: the deterministic hold-out of the five cases
    split = json.loads((run / "split.json").read_text())
    ids = [f"BRATS_{i:03d}" for i in range(5)]
    train_ids, val_ids = split_train_val(ids, fraction=0.2, seed=0)
    assert split == {"train": train_ids, "validation": val_ids}
    assert len(val_ids) == 1
    assert sorted(train_ids + val_ids) == ids
    # kpis.json: counts are exact, times positive and ordered, the same as the result
    kpis = json.loads((run / "kpis.json").read_text())
    assert kpis == json.loads(json.dumps(result.kpis))
    assert {k: kpis[k] for k in ("steps", "epochs", "samples", "seed", "stopped")} == {
        "steps": 6, "epochs": 2, "samples": 6 * plan.train.batch_size, "seed": 0,
        "stopped": "epochs",
    }  # fmt: skip
    assert (kpis["device"], kpis["world_size"]) == ("cpu", 1)
    for key in ("time_to_preprocess_s", "time_to_train_s", "samples_per_s", "peak_rss_mb"):
        assert kpis[key] > 0, key
    assert 0 < kpis["time_to_best_validation_s"] <= kpis["time_to_train_s"]
    # metrics.json and metrics.csv: one row per epoch; the loss is the epoch's step mean
    rows = json.loads((run / "metrics.json").read_text())
    assert [(r["epoch"], r["global_step"]) for r in rows] == [(1, 3), (2, 6)]
    for row, first in zip(rows, (0, 3), strict=True):
        step_mean = float(np.mean([s.loss for s in rec.steps[first : first + 3]]))
        assert row["train_loss"] == round(step_mean, 5)
        regions = [row[f"val_dice_{n}"] for n in ("WT", "TC", "ET")]
        assert row["val_dice_mean"] == round(float(np.mean(regions)), 4)
    with (run / "metrics.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [{k: float(v) for k, v in r.items()} for r in table] == [
        {k: float(v) for k, v in r.items()} for r in rows
    ]
    # validation.json: the best epoch's cases; ET cross-fitted, the tuned figure labelled
    val = json.loads((run / "validation.json").read_text())
    assert val["best_epoch"] == result.best_epoch
    assert val["best_dice"] == result.best_metrics
    assert val["best_dice_tuned"] == result.best_tuned
    assert set(val["best_dice_tuned"]) == {"ET"}
    assert "cross-fitted" in val["protocol"]
    assert [c["case_id"] for c in val["cases"]] == val_ids
    best_row = rows[result.best_epoch - 1]
    for name in ("WT", "TC"):
        assert val["best_dice"][name] == val["cases"][0]["dice"][name]
        assert best_row[f"val_dice_{name}"] == round(val["best_dice"][name], 4)
    fit = val["inner_threshold"]
    # one validation case: no other case to choose its threshold on, so nothing is dropped
    assert fit["cross_fitted_cases"] == {val_ids[0]: val["cases"][0]["dice"]["ET"]}
    assert val["best_dice"]["ET"] == fit["cross_fitted_dice"] == val["cases"][0]["dice"]["ET"]
    assert val["best_dice_tuned"]["ET"] == fit["tuned_dice"] >= val["best_dice"]["ET"]
    assert result.best_score == pytest.approx(np.mean(list(result.best_metrics.values())))
    # plan.yaml: the plan given, plus the threshold learnt, also inside model.pt
    final = load_plan(run / "plan.yaml")
    assert final.inference.et_min_volume_ml == fit["min_volume_ml"]
    assert final.notes["learned_inner_threshold"] == {
        "region": "ET", "min_volume_ml": fit["min_volume_ml"], "validation_cases": 1,
    }  # fmt: skip
    unchanged = {"notes": True, "inference": {"et_min_volume_ml"}}
    assert final.model_dump(exclude=unchanged) == plan.model_dump(exclude=unchanged)
    stored = torch.load(run / "model.pt", weights_only=False)
    assert Plan.model_validate(stored["plan"]) == final
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_after_mid_epoch_kill_matches_uninterrupted(msd: Path, tmp_path: Path) -> None:
    torch.use_deterministic_algorithms(True)
    try:
        plan = tiny_plan(msd, ["train.checkpoint_every_steps=2", "train.epochs=3"])
        full = train(msd, plan, tmp_path / "full", cache_dir=tmp_path / "cache")
        with pytest.raises(KeyboardInterrupt):
            # killed at step 5 (mid epoch 2); last checkpoint was written after step 4
            train(msd, plan, tmp_path / "cut", callbacks=[_Recorder(stop_at=5)],
                  cache_dir=tmp_path / "cache")  # fmt: skip
        rec = _Recorder()
        resumed = train(msd, plan, tmp_path / "cut", callbacks=[rec], resume=True,
                        cache_dir=tmp_path / "cache")  # fmt: skip
    finally:
        torch.use_deterministic_algorithms(False)
    assert [s.global_step for s in rec.steps] == [5, 6, 7, 8, 9]
    assert resumed.steps == full.steps == 9
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["state"]["history"][-1]["train_loss"] == b["state"]["history"][-1]["train_loss"]
    assert resumed.best_metrics == full.best_metrics


def test_region_loss_is_sigmoid_bce_not_softmax() -> None:
    loss = build_loss("dice_ce")
    target = torch.ones(1, 3, 4, 4, 4)  # all three (overlapping) regions present
    confident = torch.full((1, 3, 4, 4, 4), 12.0)
    assert float(loss(confident, target)) < 1e-3
    with pytest.raises(ValueError, match="dice_ce"):
        build_loss("softmax")


def test_channel_mismatch_is_refused(msd: Path, tmp_path: Path) -> None:
    plan = apply_overrides(tiny_plan(msd), {"channels": ["T1"]})
    with pytest.raises(ValueError, match="plan has 1 channels"):
        train(msd, plan, tmp_path / "run")


def test_resume_with_a_different_plan_is_refused(msd: Path, tmp_path: Path) -> None:
    plan = tiny_plan(msd, ["train.epochs=1"])
    train(msd, plan, tmp_path / "run")
    longer = train(msd, apply_overrides(plan, ["train.epochs=2"]), tmp_path / "run", resume=True)
    assert longer.steps == 6  # the budget may grow on resume
    other = apply_overrides(plan, ["train.epochs=3", "train.lr=0.1"])
    with pytest.raises(ValueError, match="'train' section differs"):
        train(msd, other, tmp_path / "run", resume=True)


def test_early_stopping_and_time_budget(msd: Path, tmp_path: Path) -> None:
    # a learning rate too small to change anything: validation never improves
    frozen = tiny_plan(msd, ["train.epochs=6", "train.lr=1e-12", "train.early_stop_patience=1"])
    result = train(msd, frozen, tmp_path / "es", cache_dir=tmp_path / "cache")
    assert result.stopped == "early_stop"
    assert result.epochs == 2
    timed = tiny_plan(msd, ["train.epochs=null", "train.time_budget_s=1"])
    result = train(msd, timed, tmp_path / "tb", cache_dir=tmp_path / "cache")
    assert result.stopped == "time_budget"
    assert result.kpis["time_to_train_s"] < 30


# -- learning: a criterion that training meets and a frozen network does not -------------
LEARN = [
    "train.epochs=3", "train.steps_per_epoch=8", "train.lr=0.01", "train.val_every=3",
    "train.val_fraction=0.34",
]  # fmt: skip
LOSS_FACTOR = 2.0  # the last steps' loss is at most half the first steps'
WT_BASELINE, TC_BASELINE = 0.8, 0.5  # validation Dice to beat (a whole-brain mask: < 0.4)


def _loss_drop(steps: list[StepInfo], n: int = 4) -> float:
    """Mean loss of the first ``n`` steps over that of the last ``n``."""
    losses = [s.loss for s in steps]
    return float(np.mean(losses[:n]) / np.mean(losses[-n:]))


def _learned(steps: list[StepInfo], dice: dict[str, float]) -> bool:
    return (
        _loss_drop(steps) >= LOSS_FACTOR and dice["WT"] >= WT_BASELINE and dice["TC"] >= TC_BASELINE
    )


def test_training_learns_and_a_zero_learning_rate_does_not(tmp_path: Path) -> None:
    msd = make_msd(tmp_path / "msd", cases=6)  # 4 train, 2 validation (one without ET)
    plan = tiny_plan(msd, LEARN)
    learning, frozen = _Recorder(), _Recorder()
    result = train(msd, plan, tmp_path / "run", callbacks=[learning], cache_dir=tmp_path / "c")
    # the plan refuses lr = 0 from a user; the test sets it directly to prove the point
    zero = plan.model_copy(update={"train": plan.train.model_copy(update={"lr": 0.0})})
    still = train(msd, zero, tmp_path / "lr0", callbacks=[frozen], cache_dir=tmp_path / "c")
    report = (
        f"lr {plan.train.lr}: loss drop {_loss_drop(learning.steps):.2f}, {result.best_metrics}; "
        f"lr 0: loss drop {_loss_drop(frozen.steps):.2f}, {still.best_metrics}"
    )
    assert _learned(learning.steps, result.best_metrics), report
    assert not _learned(frozen.steps, still.best_metrics), report
    assert all(s.lr == 0.0 for s in frozen.steps)
    # the baseline is not met by finding the brain: a whole-brain mask scores far below it
    cohort = as_cohort(msd)
    for case in cohort.subset(
        json.loads((tmp_path / "run" / "split.json").read_text())["validation"]
    ):
        brain = np.any(case.load_image().array != 0, axis=0)
        wt = np.isin(case.load_label().array[0], [1, 2, 3])  # type: ignore[union-attr]
        assert 2 * np.sum(brain & wt) / (brain.sum() + wt.sum()) < 0.4
