"""Normality ranking on closed-form cases: known z, the MAD floor, colours and their reasons."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2, norm

from medai.service import normality as nm
from medai.service.normality import (
    Colour,
    MeasureTable,
    Method,
    NormalityConfig,
    NormalityResult,
    Thresholds,
    Transform,
    bin_index,
    bin_opacity,
    choose_transform,
    fit_scale,
    histogram,
    rank,
    score_tasks,
)
from medai.service.normality_measures import MAD_TO_SD

LINEAR = NormalityConfig(method=Method.MAXZ, default_transform=Transform.LINEAR)
VOLUMES = ("volume_ml.WT", "volume_ml.TC", "probability")
UNITS = {"volume_ml.WT": "mL", "volume_ml.TC": "mL"}


def _one_measure(values: list[float], name: str = "v") -> MeasureTable:
    keys = tuple(f"t{i:02d}" for i in range(len(values)))
    return MeasureTable(keys, (name,), np.array(values)[:, None])


def _cohort(n: int = 40, seed: int = 0) -> tuple[MeasureTable, np.ndarray]:
    """Tumour volumes (lognormal, median ≈ 41 mL), a core share of it, and a probability."""
    rng = np.random.default_rng(seed)
    wt = np.exp(rng.normal(np.log(41.0), 0.5, n))
    tc = wt * np.exp(rng.normal(np.log(0.6), 0.1, n))
    probability = rng.uniform(0.8, 1.0, n)
    values = np.column_stack([wt, tc, probability])
    keys = tuple(f"case{i:02d}" for i in range(n))
    return MeasureTable(keys, VOLUMES, values), np.median(values, axis=0)


def test_one_measure_known_z() -> None:
    # median 5.5; |x − 5.5| = 4.5 … 0.5, 94.5 → MAD 2.5; scale 1.4826·2.5 = 3.7065
    values = [*range(1, 10), 100.0]
    scale = fit_scale(values, measure="v")
    assert scale.transform is Transform.LINEAR  # octiles of 1..9, 100 are symmetric
    assert (scale.median, scale.n, scale.floored) == (5.5, 10, False)
    assert scale.scale == pytest.approx(3.7065)
    assert scale.z([100.0, 1.0, 5.5]) == pytest.approx([94.5 / 3.7065, -4.5 / 3.7065, 0.0])

    results = score_tasks(_one_measure(values), config=LINEAR)
    top = rank(results)[0]
    assert top.task_key == "t09"
    assert top.z == {"v": pytest.approx(25.4958, abs=1e-4)}
    assert top.rank_score == pytest.approx(25.4958, abs=1e-4)
    assert top.colour is Colour.RED
    assert top.reasons == ("v = 100 is 25.5 robust SDs above the project median 5.5",)
    assert [r.colour for r in results[:9]] == [Colour.GREEN] * 9


def test_mad_floor_when_all_equal() -> None:
    five = fit_scale([5.0] * 12)
    assert five.floored
    assert five.scale == pytest.approx(0.05)  # 1 % of |median|
    assert five.z(6.0) == pytest.approx(20.0)
    zero = fit_scale([0.0] * 12)
    assert zero.scale == 1e-6  # the absolute floor
    assert zero.z(0.0) == 0.0
    loose = fit_scale([5.0] * 12, mad_floor_rel=0.2)
    assert loose.z(6.0) == pytest.approx(1.0)

    accepted = _one_measure([5.0] * 12)
    tasks = MeasureTable(("same", "odd"), ("v",), np.array([[5.0], [6.0]]))
    same, odd = score_tasks(accepted, tasks, config=NormalityConfig())
    assert (same.colour, same.rank_score) == (Colour.GREEN, 0.0)
    assert odd.colour is Colour.RED
    assert odd.reasons[0].startswith("v = 6 is 20.0 robust SDs above the project median 5")


def test_tenfold_volume_is_red_and_ordinary_is_green() -> None:
    table, medians = _cohort()
    tasks = MeasureTable(
        ("planted", "ordinary"),
        VOLUMES,
        np.array([[10 * medians[0], medians[1], medians[2]], medians]),
    )
    planted, ordinary = score_tasks(table, tasks, units=UNITS)
    assert planted.method is Method.IFOREST
    assert planted.colour is Colour.RED
    assert planted.rank_score == pytest.approx(planted.z["volume_ml.WT"])  # |z| ≥ red counts
    assert planted.rank_score > 5
    wt = f"{10 * medians[0]:.0f}"
    assert planted.reasons[0].startswith(f"volume_ml.WT = {wt} mL is ")
    assert "robust SDs on the log scale above the project median" in planted.reasons[0]
    assert planted.reasons[0].endswith(f"{medians[0]:.3g} mL")
    assert all("volume_ml.TC =" not in r for r in planted.reasons)
    assert ordinary.colour is Colour.GREEN
    assert ordinary.rank_score < 1
    assert ordinary.reasons[0].startswith("rank score")


def test_clean_cohort_is_mostly_green() -> None:
    table, _ = _cohort(n=80, seed=3)
    colours = [r.colour for r in score_tasks(table)]
    assert colours.count(Colour.RED) == 0
    assert colours.count(Colour.GREEN) >= 72  # ≤ 10 % amber by chance


def _correlated(n: int = 60) -> MeasureTable:
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, n)
    y = x + 0.1 * rng.normal(0.0, 1.0, n)
    return MeasureTable(tuple(f"a{i}" for i in range(n)), ("x", "y"), np.column_stack([x, y]))


def test_mcd_flags_a_point_off_the_correlation_line_max_z_does_not() -> None:
    accepted = _correlated()
    tasks = MeasureTable(("off", "on"), ("x", "y"), np.array([[1.5, -1.5], [2.0, 2.0]]))
    config = NormalityConfig(method=Method.MCD, default_transform=Transform.LINEAR)
    off, on = score_tasks(accepted, tasks, config=config)
    assert all(abs(z) < 3 for z in off.z.values())  # normal in each marginal
    assert (off.method, off.colour) == (Method.MCD, Colour.RED)
    assert off.reasons == (
        f"the combination of x and y is unusual (robust Mahalanobis distance "
        f"{off.outlyingness:.1f})",
    )
    assert on.colour is Colour.GREEN
    maxz = config.model_copy(update={"method": Method.MAXZ})
    off_maxz, _ = score_tasks(accepted, tasks, config=maxz)
    assert (off_maxz.method, off_maxz.colour) == (Method.MAXZ, Colour.GREEN)
    assert off_maxz.rank_score == pytest.approx(max(abs(z) for z in off.z.values()))


def test_chi2_tail_becomes_the_z_of_equal_tail() -> None:
    # one measure: χ²₁ tail of d² = z² is the two-sided normal tail of z, so the score is z
    model = nm._Mcd(("a",), np.zeros(1), np.eye(1))
    z = np.array([0.5, 3.0, 5.0, 1000.0])  # 1000² is past scipy's χ² underflow
    d, score, contribution = model.score(z[:, None])
    assert d == pytest.approx(z)
    assert score == pytest.approx(z, rel=1e-6)
    assert contribution[:, 0] == pytest.approx(z**2)
    # two measures, d² = 9.21 → tail 0.01 → the normal |z| with two-sided tail 0.01;
    # a missing measure leaves a one-dimensional distance
    two = nm._Mcd(("a", "b"), np.zeros(2), np.eye(2))
    d2 = chi2.isf(0.01, 2)
    _, score, _ = two.score(np.array([[math.sqrt(d2), 0.0], [3.0, np.nan], [np.nan, np.nan]]))
    assert score[:2] == pytest.approx([norm.isf(0.005), 3.0])
    assert np.isnan(score[2])


def test_nan_is_a_missing_measure() -> None:
    table, medians = _cohort()
    with_gaps = np.array(table.values)
    with_gaps[::4, 1] = np.nan  # a quarter of TC missing
    gappy = MeasureTable(table.tasks, table.measures, with_gaps)
    full = fit_scale(table.values[1::4, 1])
    assert fit_scale(np.concatenate([table.values[1::4, 1], [np.nan]])) == full

    tasks = MeasureTable.from_records(
        {
            "no_tc": {"volume_ml.WT": 10 * medians[0], "probability": medians[2]},
            "empty": {"volume_ml.WT": None},
        }
    )
    no_tc, empty = score_tasks(gappy, tasks, units=UNITS)
    assert set(no_tc.z) == {"volume_ml.WT", "probability"}
    assert no_tc.method is Method.IFOREST  # a missing measure sits at the median
    assert no_tc.colour is Colour.RED
    assert no_tc.reasons[0].startswith("volume_ml.WT = ")
    assert (empty.colour, empty.reasons, empty.z) == (Colour.AMBER, ("no measures to rank",), {})
    assert math.isnan(empty.rank_score)
    assert all(math.isfinite(r.rank_score) for r in score_tasks(gappy))


def test_too_few_results_is_amber_never_green() -> None:
    small = _one_measure([40.0, 41.0, 42.0, 39.0, 40.5])
    results = score_tasks(small)
    assert {r.colour for r in results} == {Colour.AMBER}
    assert {r.reasons for r in results} == {("too few results to rank (n=5)",)}
    assert all(math.isnan(r.rank_score) and r.z == {} for r in results)
    unknown = MeasureTable(("new",), ("w",), np.array([[3.0]]))
    (new,) = score_tasks(_cohort()[0], unknown)  # a measure no accepted result has
    assert (new.colour, new.reasons) == (Colour.AMBER, ("too few results to rank (n=0)",))


def test_reference_distribution_when_the_project_is_small() -> None:
    small = _one_measure([40.0, 41.0, 42.0, 39.0, 40.5], name="volume_ml.WT")
    reference = {"volume_ml.WT": np.exp(np.random.default_rng(2).normal(np.log(41), 0.3, 200))}
    tasks = MeasureTable(("big", "ordinary"), ("volume_ml.WT",), np.array([[410.0], [41.0]]))
    big, ordinary = score_tasks(small, tasks, reference=reference, units=UNITS)
    ref = fit_scale(reference["volume_ml.WT"], source="reference")
    assert big.z["volume_ml.WT"] == pytest.approx(float(ref.z(410.0)))
    assert (big.colour, big.method) == (Colour.RED, Method.MAXZ)
    assert "above the reference median" in big.reasons[0]
    assert ordinary.colour is Colour.GREEN


def test_uncertainty_forces_at_least_amber() -> None:
    table, medians = _cohort()
    tasks = MeasureTable(
        ("calm", "unsure", "at_threshold", "red_and_unsure"),
        VOLUMES,
        np.array([medians, medians, medians, [10 * medians[0], medians[1], medians[2]]]),
    )
    uncertainty = {"calm": 0.1, "unsure": 0.5, "at_threshold": 0.3, "red_and_unsure": 0.9}
    calm, unsure, at, red = score_tasks(table, tasks, uncertainty=uncertainty, review_threshold=0.3)
    assert (calm.colour, calm.uncertain) == (Colour.GREEN, False)
    assert (at.colour, at.uncertain) == (Colour.GREEN, False)  # review when above, as needs_review
    assert (unsure.colour, unsure.uncertain) == (Colour.AMBER, True)
    assert unsure.reasons == ("the model's uncertainty 0.5 is above the review threshold 0.3",)
    assert (red.colour, red.uncertain) == (Colour.RED, True)
    assert red.reasons[0].startswith("volume_ml.WT = ")
    assert red.reasons[-1] == "the model's uncertainty 0.9 is above the review threshold 0.3"
    with pytest.raises(ValueError, match="review_threshold"):
        score_tasks(table, tasks, uncertainty=uncertainty)


def _result(key: str, colour: Colour, score: float) -> NormalityResult:
    return NormalityResult(key, {}, score, score, colour, (), False, Method.MAXZ)


def test_rank_puts_the_oddest_first() -> None:
    results = [
        _result("g", Colour.GREEN, 2.5),
        _result("a_unscored", Colour.AMBER, math.nan),
        _result("r_low", Colour.RED, 6.0),
        _result("a_high", Colour.AMBER, 4.0),
        _result("r_high", Colour.RED, 30.0),
        _result("a_low", Colour.AMBER, 3.0),
        _result("g0", Colour.GREEN, 0.0),
    ]
    order = [r.task_key for r in rank(results)]
    assert order == ["r_high", "r_low", "a_high", "a_low", "a_unscored", "g", "g0"]


@pytest.mark.parametrize("method", ["mcd", "iforest", "maxz"])
def test_deterministic(method: str) -> None:
    table, _ = _cohort(seed=5)
    config = NormalityConfig(method=Method(method), seed=7)
    first, second = score_tasks(table, config=config), score_tasks(table, config=config)
    assert first == second
    assert {r.method for r in first} == {Method(method)}


def test_iforest_puts_the_tenfold_volume_near_the_top() -> None:
    table, medians = _cohort()
    planted = np.vstack([table.values, [10 * medians[0], medians[1], medians[2]]])
    table = MeasureTable((*table.tasks, "planted"), VOLUMES, planted)
    results = rank(score_tasks(table, config=NormalityConfig(method=Method.IFOREST)))
    # the forest's depth saturates: extremes all look alike, so "near the top", not first
    planted_at = [r.task_key for r in results].index("planted")
    assert planted_at < 2
    assert results[planted_at].colour is not Colour.GREEN
    assert results[planted_at].method is Method.IFOREST


def test_mcd_falls_back_to_max_z_without_enough_complete_rows() -> None:
    table, _ = _cohort(n=12)  # 3 measures need 15 complete rows
    results = score_tasks(table)
    assert {r.method for r in results} == {Method.MAXZ}
    assert all(r.rank_score == pytest.approx(max(map(abs, r.z.values()))) for r in results)


def test_transform_chosen_from_the_data() -> None:
    rng = np.random.default_rng(4)
    assert choose_transform(np.exp(rng.normal(3.0, 1.0, 100))) is Transform.LOG1P
    assert choose_transform(rng.normal(50.0, 5.0, 100)) is Transform.LINEAR
    assert choose_transform(rng.normal(0.0, 1.0, 100) ** 3) is Transform.LINEAR  # negatives
    log = fit_scale([0.0, 1.0, 3.0], transform="log1p")
    assert log.median == pytest.approx(math.log(2.0))
    assert log.centre == pytest.approx(1.0)
    assert log.z(-1.0) < log.z(0.0)  # below 0 the scale continues instead of vanishing
    # declared: median of log1p(1..9, 100) is (ln 6 + ln 7) / 2, i.e. √42 − 1 = 5.48 back
    declared = LINEAR.model_copy(update={"transforms": {"v": Transform.LOG1P}})
    top = score_tasks(_one_measure([*range(1, 10), 100.0]), config=declared)[-1]
    assert top.reasons[0].endswith("on the log scale above the project median 5.48")


def test_thresholds_and_config_are_validated() -> None:
    assert Thresholds() == Thresholds(amber=3.0, red=5.0)
    with pytest.raises(ValueError, match=r"red \(3.0\) must be above amber \(5.0\)"):
        Thresholds(amber=5.0, red=3.0)
    with pytest.raises(ValueError, match="method"):
        NormalityConfig(method="svm")  # type: ignore[arg-type]
    # median 6.5, MAD 3 → scale 4.4478: z(100) = 21.0, z(10) = 0.79, z(14) = 1.69
    custom = LINEAR.model_copy(update={"thresholds": Thresholds(amber=1.5, red=3.0)})
    results = score_tasks(_one_measure([*range(1, 10), 100.0, 10.0, 14.0]), config=custom)
    assert [r.colour for r in results][-3:] == [Colour.RED, Colour.GREEN, Colour.AMBER]


def test_measure_table_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 1\) but there are 3 tasks"):
        MeasureTable(("a", "b", "c"), ("v",), np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"tasks has duplicates \['a'\]"):
        MeasureTable(("a", "a"), ("v",), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="±inf"):
        MeasureTable(("a",), ("v",), np.array([[np.inf]]))
    with pytest.raises(ValueError, match="no finite values"):
        fit_scale([np.nan])


def test_histogram_and_opacity() -> None:
    edges, counts = histogram([0.0, 0.0, 1.0, np.nan, 0.2], bins=2)
    assert edges == pytest.approx([0.0, 0.5, 1.0])
    assert counts.tolist() == [3, 1]
    assert bin_opacity(counts) == pytest.approx([1.0, math.log(2) / math.log(4)])
    assert bin_opacity([0, 0]).tolist() == [0.0, 0.0]
    assert bin_opacity([0, 1, 100])[0] == 0.0
    assert (bin_index(edges, 0.0), bin_index(edges, 0.7), bin_index(edges, 1.0)) == (0, 1, 1)
    assert bin_index(edges, 1.5) is None
    with pytest.raises(ValueError, match="bins must be at least 1"):
        histogram([1.0], bins=0)
    with pytest.raises(ValueError, match="must not be negative"):
        bin_opacity([1, -1])


def test_a_point_mass_is_a_normal_state_and_the_rest_set_the_scale() -> None:
    # 6 of 20 enhancing volumes are exactly 0 (low-grade tumours): 0 is z = 0, the other
    # 14 give median and MAD; closed form on the linear scale
    rest = np.array([10.0, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23])
    scale = fit_scale(np.concatenate([np.zeros(6), rest]), transform=Transform.LINEAR)
    assert (scale.mass, scale.mass_share, scale.n) == (0.0, 0.3, 20)
    mad = MAD_TO_SD * float(np.median(np.abs(rest - 16.5)))
    assert (scale.median, scale.scale) == (16.5, pytest.approx(mad))
    assert scale.z([0.0, 16.5, 16.5 + 3 * mad]) == pytest.approx([0.0, 0.0, 3.0])
    assert scale.z(5.0) == pytest.approx((5.0 - 16.5) / mad)  # between the states: odd
    # below the share, or with fewer than 3 other values, no mass
    assert fit_scale(np.concatenate([np.zeros(3), rest])).mass is None
    assert fit_scale([0.0] * 10 + [1.0, 2.0]).mass is None
    assert fit_scale([5.0] * 12).floored


def test_low_grade_results_with_no_enhancement_stay_green() -> None:
    rng = np.random.default_rng(4)
    wt = np.exp(rng.normal(np.log(60.0), 0.4, 30))
    et = np.where(np.arange(30) < 9, 0.0, wt * 0.2 * np.exp(rng.normal(0.0, 0.2, 30)))
    accepted = MeasureTable(tuple(f"a{i}" for i in range(30)), ("wt", "et"), np.c_[wt, et])
    tasks = MeasureTable(("lgg", "hgg"), ("wt", "et"), np.array([[60.0, 0.0], [60.0, 12.0]]))
    for method in Method:
        lgg, hgg = score_tasks(accepted, tasks, config=NormalityConfig(method=method))
        assert (lgg.colour, hgg.colour) == (Colour.GREEN, Colour.GREEN), method
        assert lgg.z["et"] == 0.0


def test_uncertainty_is_one_sided() -> None:
    table, medians = _cohort()
    u = np.random.default_rng(5).uniform(0.1, 0.2, len(table.tasks))
    accepted = MeasureTable(table.tasks, (*VOLUMES, "uncertainty"), np.c_[table.values, u])
    tasks = MeasureTable(
        ("sure", "unsure"), accepted.measures, np.array([[*medians, 0.0], [*medians, 0.9]])
    )
    sure, unsure = score_tasks(accepted, tasks)
    assert (sure.z["uncertainty"], sure.colour) == (0.0, Colour.GREEN)
    assert unsure.z["uncertainty"] > 5
    assert unsure.colour is Colour.RED
    assert unsure.reasons[0].startswith("uncertainty = 0.9 is ")
    both = NormalityConfig(sides={})
    sure_both, _ = score_tasks(accepted, tasks, config=both)
    assert sure_both.z["uncertainty"] < -3  # two-sided, a confident result would be odd


def test_forest_calibration_keeps_clean_rows_out_of_red() -> None:
    for seed in range(3, 8):
        table, _ = _cohort(n=80, seed=seed)
        results = score_tasks(table, config=NormalityConfig(method=Method.IFOREST))
        assert {r.method for r in results} == {Method.IFOREST}
        assert sum(r.colour is Colour.RED for r in results) == 0, seed
