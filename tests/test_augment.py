"""Shift augmentation: each step changes what it should and nothing else, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from _seg_cohort import make_msd
from medai.preprocess.plan import Plan, ShiftPlan, apply_overrides, parse_overrides
from medai.training.augment import (
    ShiftDraw,
    apply_shift,
    class_count,
    draw_shift,
    intensity_classes,
)
from medai.training.data import CaseArrays, PatchDataset
from medai.training.planner import choose_shift, make_plan

OFF = {
    "p_redraw": 0.0,
    "p_gamma": 0.0,
    "p_warp": 0.0,
    "p_bias": 0.0,
    "p_lowres": 0.0,
    "p_blur": 0.0,
    "p_noise": 0.0,
    "p_ringing": 0.0,
    "channel_dropout": 0.0,
}
STEPS = [k for k in OFF if k != "channel_dropout"]


def _only(step: str, **more: float) -> ShiftPlan:
    return ShiftPlan(enabled=True, **{**OFF, step: 1.0, **more})


@pytest.fixture(scope="module")
def patch() -> tuple[np.ndarray, np.ndarray]:
    """A 4-channel brain patch (zero background border) and nested region masks."""
    rng = np.random.default_rng(0)
    grid = np.indices((24, 24, 24)).sum(axis=0) / 70.0
    image = np.stack([grid + 0.1 * c + 0.2 * rng.normal(size=grid.shape) for c in range(4)])
    image = image.astype(np.float32)
    image[:, :3] = 0.0
    image[:, :, -2:] = 0.0
    regions = np.zeros((3, 24, 24, 24), np.uint8)
    regions[0, 8:20, 8:20, 8:20] = 1
    regions[1, 10:18, 10:18, 10:18] = 1
    regions[2, 12:15, 12:15, 12:15] = 1
    image[:, 8:20, 8:20, 8:20] += 1.0
    return image, regions


def test_disabled_draws_nothing_and_changes_nothing(patch) -> None:
    image, regions = patch
    draw = draw_shift(np.random.default_rng(1), ShiftPlan(), channels=4, classes=10)
    assert draw == ShiftDraw()
    np.testing.assert_array_equal(apply_shift(image, regions, draw, healthy=3), image)


@pytest.mark.parametrize("step", STEPS)
def test_each_step_changes_the_brain_only_and_replays(patch, step) -> None:
    image, regions = patch
    before_regions = regions.copy()
    plan = _only(step)
    draws = [draw_shift(np.random.default_rng(s), plan, channels=4, classes=10) for s in (5, 5, 6)]
    assert draws[0].dropped == ()
    outs = [apply_shift(image, regions, d, healthy=3) for d in draws]
    brain = np.any(image != 0, axis=0)
    np.testing.assert_array_equal(outs[0], outs[1])  # same seed, same result
    assert not np.array_equal(outs[0], outs[2])  # another seed, another result
    changed = np.abs(outs[0] - image) > 1e-4
    assert changed[:, brain].mean() > 0.2  # it does something to the brain
    assert not outs[0][:, ~brain].any()  # background stays exactly zero
    np.testing.assert_array_equal(regions, before_regions)  # labels untouched
    assert outs[0].dtype == np.float32


def test_redraw_moves_each_class_mean_by_its_drawn_offset(patch) -> None:
    image, regions = patch
    draw = draw_shift(np.random.default_rng(3), _only("p_redraw"), channels=4, classes=10)
    assert draw.redraw is not None
    out = apply_shift(image, regions, draw, healthy=3)
    classes = intensity_classes(image, regions, healthy=3)
    for k in np.unique(classes[classes >= 0]):
        where = classes == k
        for c in range(4):
            moved = out[c][where].mean() - image[c][where].mean()
            assert moved == pytest.approx(draw.redraw[k, c, 0], abs=1e-4)
            spread = out[c][where].std() / max(image[c][where].std(), 1e-6)
            if image[c][where].std() > 1e-3:
                assert spread == pytest.approx(draw.redraw[k, c, 1], rel=1e-3)


def test_intensity_classes_split_healthy_brain_and_code_regions(patch) -> None:
    image, regions = patch
    classes = intensity_classes(image, regions, healthy=3)
    brain = np.any(image != 0, axis=0)
    assert (classes[~brain] == -1).all()
    assert (classes[12:15, 12:15, 12:15] == 3 + 0b111 - 1).all()  # WT, TC and ET
    assert (classes[8, 8:20, 8:20] == 3 + 0b001 - 1).all()  # WT only
    healthy = classes[brain & (regions.sum(axis=0) == 0)]
    counts = np.bincount(healthy, minlength=3)
    assert counts.min() > 0.3 * counts.max()  # quantile classes of similar size
    assert class_count(3, 3) == 10


def test_gamma_and_warp_keep_the_order_of_brain_values(patch) -> None:
    image, regions = patch
    brain = np.any(image != 0, axis=0)
    for step in ("p_gamma", "p_warp"):
        draw = draw_shift(np.random.default_rng(8), _only(step), channels=4, classes=10)
        out = apply_shift(image, regions, draw, healthy=3)
        for c in range(4):
            rho = stats.spearmanr(image[c][brain], out[c][brain]).statistic
            assert rho > 0.999


def test_low_resolution_smooths_along_the_drawn_axis(patch) -> None:
    image, regions = patch
    plan = _only("p_lowres", strength=2.0)
    draw = draw_shift(np.random.default_rng(2), plan, channels=4, classes=10)
    out = apply_shift(image, regions, draw, healthy=3)
    inner = (slice(4, 22), slice(2, 20), slice(2, 20))
    for c, spec in enumerate(draw.lowres):
        assert spec is not None
        axis, factor = spec
        assert 1.5 <= factor <= 7.0
        rough_before = np.abs(np.diff(image[c][inner], axis=axis)).mean()
        rough_after = np.abs(np.diff(out[c][inner], axis=axis)).mean()
        assert rough_after < 0.7 * rough_before


def test_channel_dropout_zeroes_exactly_the_dropped_channels(patch) -> None:
    image, regions = patch
    plan = ShiftPlan(enabled=True, **{**OFF, "channel_dropout": 1.0})
    seen = set()
    for seed in range(60):
        draw = draw_shift(np.random.default_rng(seed), plan, channels=4, classes=10)
        assert 1 <= len(draw.dropped) <= 3  # never all four
        seen.add(len(draw.dropped))
        out = apply_shift(image, regions, draw, healthy=3)
        for c in range(4):
            if c in draw.dropped:
                assert not out[c].any()
            else:
                np.testing.assert_array_equal(out[c], image[c])
    assert seen == {1, 2, 3}
    one = draw_shift(np.random.default_rng(0), plan, channels=1, classes=10)
    assert one.dropped == ()  # a single channel is never dropped


def test_planner_strength_follows_the_budget_and_says_why() -> None:
    short, why_short = choose_shift(4, 1000)
    long, why_long = choose_shift(4, 20000)
    middle, _ = choose_shift(4, 5000)
    assert (short.strength, middle.strength, long.strength) == (0.5, 0.75, 1.0)
    assert not short.enabled
    assert not long.enabled
    assert why_short.startswith("off by default")
    assert long.channel_dropout > 0
    assert "strength 0.5" in why_short
    assert "lose 1 to 3" in why_long
    single, why = choose_shift(1, 20000)
    assert single.channel_dropout == 0
    assert "no channel dropout" in why


def test_shift_settings_are_overridable_one_field_at_a_time() -> None:
    plan = Plan()
    plan.train.shift = ShiftPlan(enabled=True, strength=0.8, channel_dropout=0.2)
    dotted = apply_overrides(plan, ["train.shift.strength=0.3"])
    assert dotted.train.shift.enabled
    assert dotted.train.shift.strength == 0.3
    assert dotted.train.shift.channel_dropout == 0.2
    nested = apply_overrides(plan, {"train": {"shift": {"p_noise": 0.0}}})
    assert nested.train.shift.enabled
    assert nested.train.shift.p_noise == 0.0
    assert nested.train.shift.strength == 0.8
    with pytest.raises(Exception, match="strength"):
        parse_overrides(["train.shift.strenght=1"])


def test_patch_dataset_applies_the_plan_and_keeps_labels(patch) -> None:
    image, regions = patch
    case = CaseArrays("c0", image, regions)
    base = Plan().train.model_copy(update={"patch_size": (16, 16, 16), "augment": False})
    shifted = base.model_copy(
        update={"shift": ShiftPlan(enabled=True, **{**OFF, "channel_dropout": 1.0})}
    )
    plain_ds = PatchDataset([case], base, seed=4, length=6)
    shift_ds = PatchDataset([case], shifted, seed=4, length=6)
    for i in range(6):
        a, b = plain_ds[(0, i)], shift_ds[(0, i)]
        assert np.array_equal(a["label"].numpy(), b["label"].numpy())
        zero = [c for c in range(4) if not b["image"][c].any() and a["image"][c].any()]
        assert 1 <= len(zero) <= 3
        kept = [c for c in range(4) if c not in zero]
        np.testing.assert_array_equal(a["image"][kept].numpy(), b["image"][kept].numpy())
        again = shift_ds[(0, i)]
        np.testing.assert_array_equal(again["image"].numpy(), b["image"].numpy())


def test_make_plan_plans_shift_off_and_records_why(tmp_path) -> None:
    root = make_msd(tmp_path / "msd", cases=3)
    plan = make_plan(root, time_budget_s=60, probe=False)
    shift = plan.train.shift
    assert not shift.enabled
    assert shift.channel_dropout == pytest.approx(0.2)
    # 60 s at the static 4 samples/s: 192 samples, far below 2000, so half strength.
    assert shift.strength == 0.5
    assert "strength 0.5" in plan.notes["shift_reason"]
    on = make_plan(root, time_budget_s=60, probe=False, overrides=["train.shift.enabled=true"])
    assert on.train.shift.enabled
    assert on.train.shift.strength == 0.5
