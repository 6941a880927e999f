"""Training on a tiny cohort: outputs, records, and exact resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _seg_cohort import make_msd
from medai.preprocess import Plan, apply_overrides, as_cohort, load_plan
from medai.training import StepInfo, TrainCallback, build_loss, train

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
    result = train(msd, tiny_plan(msd), tmp_path / "run", callbacks=[rec])
    run = tmp_path / "run"
    for name in ("model.pt", "plan.yaml", "metrics.csv", "metrics.json", "curve.png", "kpis.json"):
        assert (run / name).is_file(), name
    assert result.steps == 6
    assert [s.global_step for s in rec.steps] == [1, 2, 3, 4, 5, 6]
    assert set(result.best_dice) == {"WT", "TC", "ET"}
    kpis = json.loads((run / "kpis.json").read_text())
    for key in ("time_to_preprocess_s", "time_to_train_s", "samples_per_s", "peak_rss_mb"):
        assert kpis[key] > 0
    assert kpis["seed"] == 0
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "val_dice_WT" in rows[0]
    final = load_plan(run / "plan.yaml")
    assert final.notes["learned_inner_threshold"]["region"] == "ET"
    split = json.loads((run / "split.json").read_text())
    assert len(split["validation"]) == 1
    assert len(split["train"]) == 4


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
    assert resumed.best_dice == full.best_dice


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
