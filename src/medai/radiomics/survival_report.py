"""The survival model's section of the evaluation report."""

from __future__ import annotations

from medai.evaluation.report import ReportFigure, ReportSection, ReportTable, ci_table
from medai.radiomics.survival import SurvivalResult

__all__ = ["survival_section"]


def survival_section(
    result: SurvivalResult, *, title: str = "Outcome model (radiomics survival)"
) -> ReportSection:
    """Report section: CV C-index with CI, AUC(t), log-rank test, hazard ratios, figures.

    Example:
        >>> section = survival_section(fit_survival(df, ...))  # doctest: +SKIP
    """
    s = result.settings
    paragraphs = [
        f"{s.model} model, {s.folds}-fold cross-validation stratified on the event "
        f"(seed {s.seed}); feature filtering, ranking, correlation pruning "
        f"(|Spearman| > {s.max_correlation}), top-{s.top_k} selection and standardisation "
        "are refit on every training fold, so test folds never inform them.",
        "Risk groups use cut-points from each training fold's predictions; hazard ratios "
        "come from the final model fit on all patients (per SD of each covariate).",
    ]
    auc_rows = [
        [f"{t:g}", f"{a:.3f}"]
        for t, a in zip(result.auc_times, result.time_dependent_auc, strict=True)
    ]
    hr = result.hazard_ratios
    hr_rows = [
        [str(name), f"{row.hr:.2f}", f"{row.hr_low:.2f} – {row.hr_high:.2f}", f"{row.p:.2g}"]
        for name, row in hr.iterrows()
    ]
    groups = ", ".join(
        f"{n} patients / {e} events"
        for n, e in zip(result.logrank.counts, result.logrank.events, strict=True)
    )
    return ReportSection(
        title=title,
        paragraphs=paragraphs,
        kpis={
            "CV C-index": str(result.c_index),
            "log-rank p": f"{result.logrank.p_value:.3g}",
            "selected features": ", ".join(result.selected_features) or "none",
        },
        tables=[
            ci_table({"Harrell's C-index (CV)": result.c_index}, caption="Discrimination"),
            ReportTable(["Horizon", "AUC(t)"], auc_rows, "Cumulative/dynamic AUC, IPCW (CV)"),
            ReportTable(["Covariate", "HR", "95 % CI", "p"], hr_rows, "Final model"),
        ],
        figures=[
            ReportFigure(
                result.figures["km_risk_groups"],
                caption=f"Kaplan–Meier by out-of-fold risk group ({groups})",
            ),
            ReportFigure(result.figures["forest"], caption="Hazard ratios per SD (95 % CI)"),
        ],
    )
