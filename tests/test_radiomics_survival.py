"""Tests for medai.radiomics survival modelling: metrics, leak-free selection, Cox fits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from lifelines.statistics import logrank_test
from lifelines.utils import concordance_index
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from medai.cli.survival_cmd import survival
from medai.evaluation.report import ReportData, render_report
from medai.radiomics.survival import fit_survival
from medai.radiomics.survival_metrics import (
    assign_risk_groups,
    compute_c_index,
    compute_time_dependent_auc,
    logrank_risk_groups,
    risk_group_cutpoints,
)
from medai.radiomics.survival_pipeline import SurvivalPipeline, SurvivalSettings
from medai.radiomics.survival_report import survival_section

FAST = SurvivalSettings(n_bootstrap=200)
TRUE = ("volume", "enhancing_fraction", "age")


def _zscore(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / v.std()


def simulate_cohort(
    n: int = 300, n_noise: int = 20, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray]:
    """Weibull-baseline Cox cohort: log-HR 0.8·log-volume + 0.6·enhancing + 0.5·age (per SD)."""
    rng = np.random.default_rng(seed)
    volume = rng.lognormal(3.0, 0.6, n)
    enhancing = rng.beta(2.0, 3.0, n)
    age = rng.normal(60.0, 10.0, n)
    lp = 0.8 * _zscore(np.log(volume)) + 0.6 * _zscore(enhancing) + 0.5 * _zscore(age)
    event_time = (-np.log(rng.uniform(size=n)) / (0.05 * np.exp(lp))) ** (1 / 1.5)
    censor_time = rng.uniform(0.0, 1.5 * np.quantile(event_time, 0.9), n)
    df = pd.DataFrame({"volume": volume, "enhancing_fraction": enhancing, "age": age})
    for j in range(n_noise):
        df[f"noise_{j:02d}"] = rng.normal(size=n)
    df["os"] = np.minimum(event_time, censor_time)
    df["dead"] = (event_time <= censor_time).astype(int)
    return df, lp


# -- C-index ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_c_index_matches_lifelines_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    time = rng.integers(1, 8, n).astype(float)
    event = rng.integers(0, 2, n)
    risk = rng.integers(0, 5, n).astype(float)
    expected = concordance_index(time, -risk, event)
    assert compute_c_index(time, event, risk) == pytest.approx(expected, abs=1e-12)


def test_c_index_closed_forms() -> None:
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 1, 0])
    assert compute_c_index(time, event, -time) == 1.0
    assert compute_c_index(time, event, time) == 0.0
    assert compute_c_index(time, event, np.zeros(4)) == 0.5
    assert np.isnan(compute_c_index(time, np.zeros(4), time))


def test_c_index_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="event must hold only 0/1"):
        compute_c_index([1, 2], [0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="risk has 1 entries"):
        compute_c_index([1, 2], [0, 1], [0.1])
    with pytest.raises(ValueError, match="time must be finite"):
        compute_c_index([1, -2], [0, 1], [0.1, 0.2])


# -- time-dependent AUC ----------------------------------------------------------------
def test_time_dependent_auc_closed_form_with_ipcw() -> None:
    # Censoring KM: G drops to 4/5 after t=2 and to 2/5 after t=5.
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    event = np.array([1, 0, 1, 1, 0, 1])
    risk = np.array([5.0, 1.0, 3.0, 4.0, 2.0, 3.5])
    auc = compute_time_dependent_auc(time, event, risk, [3.5, 5.5])
    # t=3.5: cases 0 (w=1, beats 3 controls) and 2 (w=5/4, beats 1 of 3).
    # t=5.5: cases 0 (w=1, wins), 2 (w=5/4, loses), 3 (w=5/4, wins) vs one control.
    np.testing.assert_allclose(auc, [17 / 27, 9 / 14], rtol=1e-12)


def test_time_dependent_auc_without_censoring_is_plain_auc() -> None:
    rng = np.random.default_rng(4)
    time = rng.exponential(5.0, 80)
    risk = -time + rng.normal(0.0, 3.0, 80)
    horizon = float(np.median(time))
    auc = compute_time_dependent_auc(time, np.ones(80), risk, [horizon])
    assert auc[0] == pytest.approx(roc_auc_score(time <= horizon, risk), abs=1e-12)


def test_time_dependent_auc_undefined_horizons_are_nan() -> None:
    auc = compute_time_dependent_auc([1.0, 2.0, 3.0], [1, 1, 1], [3.0, 2.0, 1.0], [0.5, 3.0])
    assert np.isnan(auc).all()
    with pytest.raises(ValueError, match="give both censoring_time and censoring_event"):
        compute_time_dependent_auc([1.0], [1], [1.0], [1.0], censoring_time=[1.0])


# -- risk groups and log-rank ----------------------------------------------------------
def test_risk_groups_and_logrank_match_lifelines() -> None:
    df, lp = simulate_cohort(n=120, n_noise=0, seed=2)
    cuts = risk_group_cutpoints(lp, n_groups=2)
    groups = assign_risk_groups(lp, cuts)
    np.testing.assert_array_equal(groups, (lp > np.median(lp)).astype(int))
    low, high = groups == 0, groups == 1
    expected = logrank_test(df.os[low], df.os[high], df.dead[low], df.dead[high])
    result = logrank_risk_groups(df.os, df.dead, groups)
    assert result.p_value == pytest.approx(expected.p_value, rel=1e-9)
    assert result.counts == (60, 60)
    assert result.p_value < 1e-3


def test_tertile_groups_and_errors() -> None:
    groups = assign_risk_groups([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [1.5, 3.5])
    np.testing.assert_array_equal(groups, [0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="n_groups must be 2"):
        risk_group_cutpoints([1.0, 2.0], n_groups=7)
    with pytest.raises(ValueError, match="at least two non-empty risk groups"):
        logrank_risk_groups([1.0, 2.0], [1, 1], [0, 0])


# -- the pipeline ----------------------------------------------------------------------
def test_pipeline_filters_constant_and_correlated_features() -> None:
    df, _ = simulate_cohort(n=150, n_noise=3, seed=5)
    df["volume_copy"] = 2.0 * df["volume"] + 1.0  # |Spearman| = 1 with volume
    df["constant"] = 7.0
    feats = ["volume", "volume_copy", "constant", "enhancing_fraction", "noise_00"]
    pipe = SurvivalPipeline(SurvivalSettings(top_k=None)).fit(
        df, time_col="os", event_col="dead", features=feats, clinical=["age"]
    )
    assert "constant" not in pipe.selected_
    assert len({"volume", "volume_copy"} & set(pipe.selected_)) == 1
    assert pipe.columns_[-1] == "age"  # clinical kept as adjustment covariate


def test_pipeline_learns_only_from_training_rows() -> None:
    df, _ = simulate_cohort(n=200, n_noise=2, seed=6)
    train, test = df.iloc[:100], df.iloc[100:].copy()
    pipe = SurvivalPipeline(FAST).fit(
        train, time_col="os", event_col="dead", features=["volume", "noise_00"]
    )
    test.loc[test.index[0], "volume"] = np.nan
    risk = pipe.predict_risk(test)
    filled = test.fillna({"volume": train["volume"].median()})
    np.testing.assert_allclose(risk, pipe.predict_risk(filled))
    # Changing the test rows' outcomes cannot change a model fit on the training rows.
    shuffled = df.copy()
    shuffled.loc[shuffled.index[100:], "os"] = 1.0
    again = SurvivalPipeline(FAST).fit(
        shuffled.iloc[:100], time_col="os", event_col="dead", features=["volume", "noise_00"]
    )
    np.testing.assert_allclose(again.predict_risk(filled), risk)


def test_pipeline_errors() -> None:
    df, _ = simulate_cohort(n=40, n_noise=1, seed=1)
    with pytest.raises(RuntimeError, match="not fitted"):
        SurvivalPipeline().predict_risk(df)
    with pytest.raises(ValueError, match="has no events"):
        SurvivalPipeline().fit(
            df.assign(dead=0), time_col="os", event_col="dead", features=["volume"]
        )
    with pytest.raises(ValidationError, match="l1_ratio"):
        SurvivalSettings(l1_ratio=2.0)


# -- fit_survival end to end ------------------------------------------------------------
def test_cox_recovers_true_covariates_and_oracle_c_index(tmp_path: Path) -> None:
    df, lp = simulate_cohort()
    oracle = compute_c_index(df.os, df.dead, lp)
    feats = [c for c in df.columns if c not in ("os", "dead", "age")]
    res = fit_survival(
        df, time_col="os", event_col="dead", features=feats, clinical=["age"], settings=FAST
    )
    assert set(res.strongest[:3]) == set(TRUE)
    assert abs(res.c_index.estimate - oracle) < 0.04
    assert res.c_index.low < res.c_index.estimate < res.c_index.high
    assert (res.hazard_ratios.loc[list(TRUE), "hr_low"] > 1.0).all()
    assert all(0.65 < a < 0.95 for a in res.time_dependent_auc)
    assert res.logrank.p_value < 1e-6
    assert res.selection_frequency["volume"] == 1.0
    assert res.figures["forest"].startswith(b"\x89PNG")
    written = res.save(tmp_path)
    assert {p.name for p in written} == {
        "survival.json", "hazard_ratios.csv", "km_risk_groups.png", "forest.png",
    }  # fmt: skip
    summary = json.loads(written[0].read_text())
    assert summary["c_index"]["estimate"] == pytest.approx(res.c_index.estimate)


def test_selection_inside_folds_keeps_noise_at_chance() -> None:
    rng = np.random.default_rng(3)
    n, p = 120, 200
    df = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"f{j:03d}" for j in range(p)])
    df["os"] = rng.exponential(10.0, n)
    df["dead"] = (rng.uniform(size=n) < 0.7).astype(int)
    feats = [f"f{j:03d}" for j in range(p)]
    settings = SurvivalSettings(top_k=5, n_bootstrap=200)
    honest = fit_survival(df, time_col="os", event_col="dead", features=feats, settings=settings)
    assert abs(honest.c_index.estimate - 0.5) < 0.1
    # The same features chosen once on all rows (a leak) inflate the CV C-index.
    leaked = SurvivalPipeline(settings).fit(df, time_col="os", event_col="dead", features=feats)
    leaky = fit_survival(
        df, time_col="os", event_col="dead", features=leaked.selected_, settings=settings
    )
    assert leaky.c_index.estimate > honest.c_index.estimate + 0.1


def test_spline_cox_captures_a_u_shaped_effect() -> None:
    rng = np.random.default_rng(7)
    n = 300
    x = rng.normal(size=n)
    event_time = (-np.log(rng.uniform(size=n)) / (0.05 * np.exp(1.2 * x**2))) ** (1 / 1.5)
    df = pd.DataFrame({"x": x, "os": event_time, "dead": 1})
    linear = fit_survival(df, time_col="os", event_col="dead", features=["x"], settings=FAST)
    spline = fit_survival(
        df, time_col="os", event_col="dead", features=["x"], model="spline_cox", settings=FAST
    )
    assert linear.c_index.estimate < 0.62  # a straight line cannot follow a U
    assert spline.c_index.estimate > linear.c_index.estimate + 0.1
    assert "x__rcs1" in spline.hazard_ratios.index


def test_fit_survival_input_errors() -> None:
    df, _ = simulate_cohort(n=30, n_noise=1, seed=9)
    with pytest.raises(ValueError, match=r"lacks columns \['nope'\]"):
        fit_survival(df, time_col="os", event_col="dead", features=["nope"])
    with pytest.raises(ValueError, match="too few for 5-fold"):
        fit_survival(df.iloc[:8], time_col="os", event_col="dead", features=["volume"])
    with pytest.raises(ValueError, match="must be 0/1"):
        fit_survival(df.assign(dead=2), time_col="os", event_col="dead", features=["volume"])
    with pytest.raises(ValueError, match=r"\['age'\] are listed twice"):
        fit_survival(df, time_col="os", event_col="dead", features=["age"], clinical=["age"])
    with pytest.raises(TypeError, match="pandas DataFrame"):
        fit_survival(df.to_numpy(), time_col="os", event_col="dead", features=["volume"])  # type: ignore[arg-type]


# -- report section and CLI --------------------------------------------------------------
def test_report_section_and_cli(tmp_path: Path) -> None:
    df, _ = simulate_cohort(n=150, n_noise=5, seed=11)
    df.insert(0, "patient_id", [f"P{i:03d}" for i in range(len(df))])
    df = df.rename(columns={"volume": "morph_volume", "enhancing_fraction": "stat_mean"})
    res = fit_survival(
        df, time_col="os", event_col="dead", features=["morph_volume", "stat_mean"],
        clinical=["age"], settings=FAST,
    )  # fmt: skip
    section = survival_section(res)
    html = render_report(ReportData(title="t", sections=[section]))
    assert "C-index" in html
    assert "data:image/png;base64" in html
    assert section.tables[2].rows[0][0] == res.hazard_ratios.index[0]
    feats, clin = tmp_path / "features.csv", tmp_path / "clinical.csv"
    df.drop(columns=["age", "os", "dead"]).to_csv(feats, index=False)
    df[["patient_id", "age", "os", "dead"]].to_csv(clin, index=False)
    app = typer.Typer()
    app.command()(survival)
    args = [str(feats), "--clinical-table", str(clin), "--time", "os", "--event", "dead"]
    args += ["--clinical", "age", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "CV C-index" in result.output
    assert "morph_volume" in result.output
    assert (tmp_path / "out" / "forest.png").is_file()
    bad = CliRunner().invoke(app, [str(feats), "--clinical-table", str(clin), "--on", "nope"])
    assert bad.exit_code == 2
    assert "--on 'nope'" in bad.output


def test_cli_default_features_match_long_and_wide_tables() -> None:
    from medai.cli.survival_cmd import _feature_columns

    table = pd.DataFrame(
        {"WT_t1gd_glcm_joint_max_3d_avg": [1.0], "morph_volume": [2.0], "age": [3.0],
         "wt_ml": [4.0], "survival_days": [5.0]}
    )  # fmt: skip
    assert _feature_columns(table, None, {"survival_days"}) == [
        "WT_t1gd_glcm_joint_max_3d_avg",
        "morph_volume",
    ]
