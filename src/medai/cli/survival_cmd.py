"""``medai radiomics survival``: a radiomics table (+ clinical table) → survival model."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import typer
from pydantic import ValidationError
from rich.table import Table

from medai.cli.console import console, user_errors
from medai.errors import ConfigError, DatasetError, validation_summary

# Column prefixes of medai's IBSI feature families (``family_feature[_aggregation]``).
_FEATURE_PREFIXES: tuple[str, ...] = (
    *("morph_", "loc_", "stat_", "ih_", "ivh_", "glcm_", "glrlm_", "glszm_"),
    *("gldzm_", "ngtdm_", "ngldm_"),
)


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"table {path} not found")
    try:
        if path.suffix.lower() in {".tsv", ".tab"}:
            return pd.read_csv(path, sep="\t")
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable table ({exc}); fix or re-export it") from exc


def _regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--features {pattern!r} is not a regular expression ({exc})") from None


def _feature_columns(df: pd.DataFrame, pattern: str | None, exclude: set[str]) -> list[str]:
    """Numeric columns matching ``pattern`` (regex), default the IBSI family prefixes."""
    numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and c not in exclude]
    if pattern:
        regex = _regex(pattern)
        return [c for c in numeric if regex.search(str(c))]
    # A long table's columns start with the family (``glcm_...``); a wide table's carry
    # ``<region>_<channel>_`` before it (``WT_t1gd_glcm_...``).
    family = re.compile(r"(^|_)(" + "|".join(p.rstrip("_") for p in _FEATURE_PREFIXES) + r")_")
    return [c for c in numeric if family.search(str(c))]


def survival(
    features_table: Path = typer.Argument(..., help="Radiomics table (CSV/TSV/Parquet)."),
    time_col: str = typer.Option("survival_days", "--time", help="Follow-up time column."),
    event_col: str = typer.Option("event", "--event", help="Event column (1 = event)."),
    clinical_table: Path | None = typer.Option(
        None, "--clinical-table", help="Clinical table joined on --on (e.g. clinical.csv)."
    ),
    on: str = typer.Option("patient_id", "--on", help="Join key between the two tables."),
    clinical: list[str] = typer.Option([], "--clinical", help="Clinical covariate (repeat)."),
    features: str | None = typer.Option(
        None, "--features", help="Regex for feature columns (default: IBSI family prefixes)."
    ),
    model: str = typer.Option("cox", "--model", help="cox or spline_cox."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds."),
    top_k: int = typer.Option(10, "--top-k", help="Radiomic features kept per fold."),
    seed: int = typer.Option(0, "--seed", help="Seed for folds and bootstrap."),
    out: Path | None = typer.Option(None, "--out", help="Folder for JSON, CSV and PNGs."),
) -> None:
    """Cross-validated penalised Cox model with leak-free feature selection."""
    from medai.radiomics.survival import fit_survival
    from medai.radiomics.survival_pipeline import SurvivalSettings

    with user_errors():
        try:
            fields = {"top_k": top_k, "model": model, "folds": folds, "seed": seed}
            settings = SurvivalSettings.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(f"survival settings: {validation_summary(exc)}") from None
        df = _read_table(features_table)
        if clinical_table is not None:
            clin = _read_table(clinical_table)
            for name, frame in (("features table", df), ("clinical table", clin)):
                if on not in frame.columns:
                    raise ConfigError(f"--on {on!r} is not a column of the {name}")
            df = df.merge(clin, on=on, how="inner", suffixes=("", "_clinical"))
        named = [
            ("--time", time_col),
            ("--event", event_col),
            *(("--clinical", c) for c in clinical),
        ]
        for option, column in named:
            if column not in df.columns:
                raise ConfigError(
                    f"{option} {column!r} is not a column of the table(s); columns include "
                    f"{list(df.columns)[:12]}"
                )
        exclude = {time_col, event_col, on, *clinical}
        cols = _feature_columns(df, features, exclude)
        if not cols and not clinical:
            raise ConfigError("no feature columns found; pass --features REGEX or --clinical")
        with console.status(f"fitting {model} on {len(df)} patients, {len(cols)} features"):
            res = fit_survival(
                df, time_col=time_col, event_col=event_col, features=cols,
                clinical=clinical, model=model, folds=folds, seed=seed, settings=settings,
            )  # fmt: skip
    console.print(f"CV C-index ({folds}-fold): [bold]{res.c_index}[/]")
    aucs = ", ".join(
        f"t={t:g}: {a:.3f}" for t, a in zip(res.auc_times, res.time_dependent_auc, strict=True)
    )
    console.print(f"time-dependent AUC: {aucs}")
    console.print(f"log-rank p (risk groups, out-of-fold): {res.logrank.p_value:.3g}")
    table = Table(title="Final model (hazard ratio per SD)")
    for head in ("covariate", "HR", "95% CI", "p"):
        table.add_column(head)
    for covariate, row in res.hazard_ratios.iterrows():
        table.add_row(
            str(covariate), f"{row.hr:.2f}", f"{row.hr_low:.2f}–{row.hr_high:.2f}", f"{row.p:.2g}"
        )
    console.print(table)
    if out is not None:
        written = res.save(out)
        console.print(f"wrote {len(written)} files to {out}")
