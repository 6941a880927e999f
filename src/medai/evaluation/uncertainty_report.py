"""The uncertainty section of a segmentation evaluation: does the TTA uncertainty of a
case say which cases are bad?

Prediction writes, beside each label map ``<split>/<case_id>.nii.gz``, a sidecar
``<split>/<case_id>_uncertainty.json`` (:func:`write_case_uncertainty`; only when it
predicted with TTA members). :func:`attach_uncertainty` adds those scores to the scored
cases, and :func:`uncertainty_section` measures them per split: the referral curve of
mean Dice over the retained cases as the most uncertain are referred (the value at 10 %
referred against all cases) and Spearman's rho of uncertainty against mean Dice with a
bootstrap interval that resamples patients.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medai.evaluation.plots import plot_referral_curve
from medai.evaluation.report import ReportFigure, ReportSection, ReportTable
from medai.evaluation.uncertainty import referral_curve, spearman_with_ci
from medai.fsutil import atomic_write_text

__all__ = [
    "REFER_FRACTION",
    "attach_uncertainty",
    "read_case_uncertainty",
    "uncertainty_path",
    "uncertainty_section",
    "write_case_uncertainty",
]

REFER_FRACTION = 0.1
"""The fraction of most uncertain cases referred in the headline figure."""
_FRACTIONS = np.linspace(0.0, 0.5, 11)


def uncertainty_path(predictions_dir: str | Path, split: str, case_id: str) -> Path:
    """``predictions_dir/<split>/<case_id>_uncertainty.json``."""
    return Path(predictions_dir) / split / f"{case_id}_uncertainty.json"


def write_case_uncertainty(
    path: str | Path, *, score: float, volume_spread_ml: float | None, region: str | None
) -> Path:
    """Write one case's uncertainty sidecar (atomically).

    Raises:
        ValueError: If ``score`` is not a finite number >= 0.
    """
    if not (math.isfinite(score) and score >= 0):
        raise ValueError(f"score must be a finite entropy >= 0 (nats); got {score}")
    payload = {"score": score, "volume_spread_ml": volume_spread_ml, "region": region}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def read_case_uncertainty(path: str | Path) -> float | None:
    """The score in a sidecar, or ``None`` when there is no sidecar.

    Raises:
        ValueError: If the sidecar is not JSON with a numeric ``score``.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        score = json.loads(path.read_text(encoding="utf-8"))["score"]
        return float(score)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path} holds no numeric 'score' ({exc}); delete it and predict the case again"
        ) from exc


def attach_uncertainty(frame: pd.DataFrame, predictions_dir: str | Path) -> pd.DataFrame:
    """``frame`` with an ``uncertainty`` column (NaN where a case has no sidecar); the
    frame is returned unchanged when no case has one."""
    scores = [
        read_case_uncertainty(uncertainty_path(predictions_dir, split, case_id))
        for split, case_id in zip(frame["split"], frame["case_id"], strict=True)
    ]
    if all(s is None for s in scores):
        return frame
    out = frame.copy()
    out["uncertainty"] = [np.nan if s is None else s for s in scores]
    return out


def _split_analysis(
    part: pd.DataFrame, *, n_resamples: int, seed: int
) -> tuple[dict[str, Any], ReportFigure | None]:
    """Referral curve and Spearman's rho of one split's cases that have a score."""
    scored = part[part["uncertainty"].notna()]
    u = scored["uncertainty"].to_numpy(dtype=np.float64)
    dice = scored["mean_dice"].to_numpy(dtype=np.float64)
    result: dict[str, Any] = {"n_cases": len(scored)}
    if len(scored) == 0:
        return result, None
    curve = referral_curve(u, dice, fractions=_FRACTIONS)
    at = int(np.argmin(np.abs(curve.fractions - REFER_FRACTION)))
    result.update(
        mean_dice_all=float(curve.random[0]),
        mean_dice_at_10pct_referred=float(curve.retained_quality[at]),
        n_referred_at_10pct=int(curve.n_referred[at]),
        curve={
            "fraction_referred": curve.fractions.tolist(),
            "mean_dice_retained": curve.retained_quality.tolist(),
            "oracle": curve.oracle.tolist(),
        },
    )
    try:
        ci = spearman_with_ci(
            u, dice, clusters=scored["patient_id"].to_numpy(), n_resamples=n_resamples, seed=seed
        )
        result["spearman"] = {"estimate": ci.estimate, "low": ci.low, "high": ci.high}
    except ValueError as exc:  # fewer than 3 cases, or a constant score
        result["spearman"] = None
        result["spearman_note"] = str(exc)
    figure = ReportFigure.from_figure(
        plot_referral_curve(curve, quality="Mean Dice", title="Referral by TTA uncertainty"),
        caption="Mean Dice of the kept cases as the most uncertain are referred",
    )
    return result, figure


def _row(split: str, result: dict[str, Any]) -> list[str]:
    if result["n_cases"] == 0:
        return [split, "0", "—", "—", "—"]
    rho = result.get("spearman")
    rho_text = "—" if rho is None else f"{rho['estimate']:.3f} ({rho['low']:.3f}–{rho['high']:.3f})"
    return [
        split,
        str(result["n_cases"]),
        f"{result['mean_dice_all']:.3f}",
        f"{result['mean_dice_at_10pct_referred']:.3f} ({result['n_referred_at_10pct']} referred)",
        rho_text,
    ]


def uncertainty_section(
    frame: pd.DataFrame, splits: Sequence[str], *, n_resamples: int, seed: int
) -> tuple[ReportSection | None, dict[str, Any] | None]:
    """The report section and the ``metrics.json`` entry (``None, None`` without scores).

    Args:
        frame: Scored cases with ``split``, ``patient_id``, ``mean_dice`` and (from
            :func:`attach_uncertainty`) ``uncertainty``.
        splits: The evaluated splits, in report order.
        n_resamples: Bootstrap replicates of the Spearman interval.
        seed: Bootstrap seed.
    """
    if "uncertainty" not in frame.columns:
        return None, None
    results: dict[str, Any] = {}
    figures: list[ReportFigure] = []
    for split in splits:
        part = frame[frame["split"] == split]
        results[split], figure = _split_analysis(part, n_resamples=n_resamples, seed=seed)
        figures += [figure] if figure is not None else []
    table = ReportTable(
        ["Split", "Cases", "Mean Dice, all", "Mean Dice, 10 % referred", "Spearman ρ (95 % CI)"],
        [_row(split, results[split]) for split in splits],
        caption="Mean Dice of the retained cases and the rank correlation of uncertainty "
        "with mean Dice",
    )
    text = (
        "Uncertainty is the mean voxel entropy (nats) of the mean of the flip-TTA members "
        "inside the largest predicted region. Referring the most uncertain 10 % of cases "
        "to a reader should raise the mean Dice of the cases kept; a useful score has a "
        "negative Spearman ρ with Dice (uncertain cases are the bad ones). The ρ interval "
        "is a BCa bootstrap that resamples patients."
    )
    section = ReportSection("Uncertainty", paragraphs=[text], tables=[table], figures=figures)
    document = {
        "measure": "mean voxel entropy (nats) inside the largest region (TTA: of the mean)",
        "refer_fraction": REFER_FRACTION,
        "splits": results,
    }
    return section, document
