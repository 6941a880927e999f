"""Plan: defaults, YAML round trip, overrides, validation, planner choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from _seg_cohort import make_msd
from medai.errors import ConfigError, PlanError
from medai.preprocess import (
    Architecture,
    LossKind,
    Plan,
    apply_overrides,
    load_plan,
    parse_duration,
    parse_overrides,
    save_plan,
)
from medai.training import lr_at, split_train_val
from medai.training.planner import _choose_network, make_plan


def test_defaults_round_trip_yaml(tmp_path: Path) -> None:
    plan = Plan()
    path = save_plan(plan, tmp_path / "plan.yaml")
    back = load_plan(path)
    assert back == plan
    assert plan.train.time_budget_s == 600.0
    text = path.read_text("utf-8")  # closed sets are saved as plain strings
    assert "architecture: unet\n" in text
    assert "loss: dice_ce\n" in text
    assert back.network.architecture is Architecture.UNET
    assert back.train.loss is LossKind.DICE_CE


def test_load_plan_errors_name_the_field_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    with pytest.raises(PlanError, match="not found; write one with `medai plan DATASET"):
        load_plan(path)
    path.write_text("train:\n  loss: focal\n  lr: 0.01\n", "utf-8")
    with pytest.raises(
        PlanError, match=r"train\.loss: Input should be 'dice_ce' or 'dice_focal' \(got 'focal'\)"
    ):
        load_plan(path)
    path.write_text("train:\n  lr: 0.01\n", "utf-8")  # a partial plan: the rest defaults
    assert load_plan(path) == apply_overrides(Plan(), ["train.lr=0.01"])
    path.write_text("network: {architecture: segresnet, depth: 4}\n", "utf-8")
    assert load_plan(path).network.architecture is Architecture.SEGRESNET


def test_parse_overrides_file_then_strings(tmp_path: Path) -> None:
    config = tmp_path / "over.yaml"
    config.write_text("train: {lr: 0.01, batch_size: 4}\ninference.tta_flips: true\n", "utf-8")
    got = parse_overrides(["train.lr=0.002"], config=config)
    assert got == {"train.lr": 0.002, "train.batch_size": 4, "inference.tta_flips": True}
    with pytest.raises(PlanError, match="unknown plan field 'lrr'; fields of train: amp"):
        parse_overrides(["train.lrr=1"])
    with pytest.raises(PlanError, match="unknown plan field '7'; fields of labels: 0, 1"):
        parse_overrides(["labels.7=x"])
    with pytest.raises(PlanError, match=r"override file .*none\.yaml not found"):
        parse_overrides(config=tmp_path / "none.yaml")


def test_overrides_strings_mapping_and_errors() -> None:
    plan = apply_overrides(Plan(), ["train.lr=0.01", "network.architecture=segresnet"])
    assert plan.train.lr == 0.01
    assert plan.network.architecture == "segresnet"
    nested = apply_overrides(Plan(), {"train": {"batch_size": 4}, "inference.tta_flips": True})
    assert nested.train.batch_size == 4
    assert nested.inference.tta_flips is True
    with pytest.raises(PlanError, match="unknown plan field 'lrr'"):
        apply_overrides(Plan(), ["train.lrr=1"])
    with pytest.raises(PlanError, match="multiple of 16"):
        apply_overrides(Plan(), ["train.patch_size=[24,24,24]"])
    with pytest.raises(PlanError, match=r"network\.architecture: Input should be 'unet', "):
        apply_overrides(Plan(), ["network.architecture=resnet"])


def test_parse_duration() -> None:
    assert parse_duration("10m") == 600.0
    assert parse_duration("90s") == 90.0
    assert parse_duration("1.5h") == 5400.0
    assert parse_duration(30) == 30.0
    with pytest.raises(ConfigError, match="10m"):
        parse_duration("ten minutes")
    for bad in ("0", "-1h", "nan", "inf"):
        with pytest.raises(ConfigError, match="positive"):
            parse_duration(bad)


def test_lr_schedule_warmup_then_cosine() -> None:
    assert lr_at(0.0, base=1.0, warmup=0.1) == pytest.approx(0.01)
    assert lr_at(0.05, base=1.0, warmup=0.1) == pytest.approx(0.5)
    assert lr_at(0.1, base=1.0, warmup=0.1) == pytest.approx(1.0)
    assert lr_at(0.55, base=1.0, warmup=0.1) == pytest.approx(0.5)
    assert lr_at(1.0, base=1.0, warmup=0.1) == pytest.approx(0.01)


def test_split_is_deterministic_and_disjoint() -> None:
    ids = [f"c{i}" for i in range(10)]
    train, val = split_train_val(ids, fraction=0.2, seed=3)
    assert (train, val) == split_train_val(list(reversed(ids)), fraction=0.2, seed=3)
    assert len(val) == 2
    assert set(train) | set(val) == set(ids)
    assert not set(train) & set(val)


def test_network_choice_follows_speed_and_budget() -> None:
    import torch

    cpu = torch.device("cpu")
    # SegResNet 7x slower: within 10 min it would see too few samples -> UNet
    speeds = {"segresnet": 0.5, "unet": 3.5}
    assert _choose_network(speeds, 600.0, cpu)[0] == "unet"
    # a fast device (or a long budget) affords the preferred network
    assert _choose_network({"segresnet": 40.0, "unet": 200.0}, 600.0, cpu)[0] == "segresnet"
    assert _choose_network(speeds, 36000.0, cpu)[0] == "segresnet"


def test_make_plan_from_msd(tmp_path: Path) -> None:
    root = make_msd(tmp_path / "msd", cases=3)
    plan = make_plan(root, time_budget_s=60, probe=False, overrides=["train.seed=7"])
    assert plan.channels == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert plan.regions == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert plan.preprocess.target_spacing == (2.0, 2.0, 2.0)
    m = plan.network.downsampling
    assert all(p % m == 0 for p in plan.train.patch_size)
    assert plan.train.seed == 7
    assert plan.notes["fingerprint"]["n_cases"] == 3
