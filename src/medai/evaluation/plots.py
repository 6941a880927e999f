"""Report figures drawn with matplotlib's Agg canvas (no display, no pyplot state).

Every ``plot_*`` returns a :class:`matplotlib.figure.Figure`; :func:`figure_to_png`
turns it into PNG bytes and :func:`png_data_uri` into a ``data:`` URI that an HTML
report embeds, so the report stays one self-contained file.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import ArrayLike, NDArray

from medai.evaluation.calibration import ReliabilityDiagram
from medai.evaluation.classification import (
    compute_average_precision,
    compute_pr_curve,
    compute_roc_auc,
    compute_roc_curve,
)
from medai.evaluation.regression import compute_bland_altman
from medai.evaluation.subgroups import SubgroupAnalysis
from medai.evaluation.uncertainty import ReferralCurve
from medai.fsutil import atomic_write_bytes

__all__ = [
    "figure_to_png",
    "plot_bland_altman",
    "plot_case_distribution",
    "plot_confusion_matrix",
    "plot_forest",
    "plot_overlay",
    "plot_pr",
    "plot_referral_curve",
    "plot_reliability",
    "plot_roc",
    "png_data_uri",
]

_FLAG_COLOUR = "#c0392b"
_MAIN_COLOUR = "#1f4e79"


def figure_to_png(figure: Figure, *, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes with the Agg canvas."""
    FigureCanvasAgg(figure)  # attaches an Agg canvas; no GUI backend is ever touched
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for embedding in HTML."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("png_data_uri expects PNG bytes (from figure_to_png)")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _named(scores: Mapping[str, ArrayLike] | ArrayLike) -> dict[str, ArrayLike]:
    if isinstance(scores, Mapping):
        if not scores:
            raise ValueError("scores is empty; give at least one model's scores")
        return dict(scores)
    return {"model": scores}


def _new(width: float = 5.0, height: float = 4.2) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def plot_roc(
    y_true: ArrayLike, scores: Mapping[str, ArrayLike] | ArrayLike, *, title: str = "ROC curve"
) -> Figure:
    """ROC curves of one or more models (name → positive-class scores), AUC in the legend."""
    fig = _new()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    for name, score in _named(scores).items():
        fpr, tpr, _ = compute_roc_curve(y_true, score)
        auc = compute_roc_auc(y_true, score)
        ax.plot(fpr, tpr, lw=2, label=f"{name} (AUC {auc:.3f})")
    ax.set(xlabel="1 − specificity", ylabel="Sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_pr(
    y_true: ArrayLike,
    scores: Mapping[str, ArrayLike] | ArrayLike,
    *,
    title: str = "Precision–recall curve",
) -> Figure:
    """Precision–recall curves (name → scores), average precision in the legend."""
    fig = _new()
    ax = fig.add_subplot()
    prevalence = float(np.mean(np.asarray(y_true) == 1))
    ax.axhline(prevalence, ls="--", color="0.6", lw=1, label=f"prevalence {prevalence:.2f}")
    for name, score in _named(scores).items():
        precision, recall, _ = compute_pr_curve(y_true, score)
        ap = compute_average_precision(y_true, score)
        ax.step(recall, precision, where="post", lw=2, label=f"{name} (AP {ap:.3f})")
    ax.set(xlabel="Recall (sensitivity)", ylabel="Precision (PPV)", title=title)
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    return fig


def plot_reliability(diagram: ReliabilityDiagram, *, title: str = "Calibration") -> Figure:
    """Reliability diagram (observed vs predicted per bin) above a histogram of bin counts."""
    fig = _new(5.0, 5.2)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    centres = (diagram.edges[:-1] + diagram.edges[1:]) / 2
    width = np.diff(diagram.edges)
    used = diagram.count > 0
    top.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfect calibration")
    top.bar(
        centres[used],
        diagram.observed[used],
        width=width[used] * 0.9,
        color=_MAIN_COLOUR,
        alpha=0.75,
        label="observed",
    )
    top.plot(diagram.confidence[used], diagram.observed[used], "o", color="black", ms=3)
    top.set(ylabel="Observed frequency", title=f"{title} (ECE {diagram.ece:.3f})", ylim=(0, 1))
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, diagram.count, width=width * 0.9, color="0.5")
    bottom.set(xlabel="Predicted probability", ylabel="Cases", xlim=(0, 1))
    return fig


def plot_confusion_matrix(
    matrix: ArrayLike,
    *,
    class_names: Sequence[str] | None = None,
    normalise: bool = False,
    title: str = "Confusion matrix",
) -> Figure:
    """Heat map of a confusion matrix (rows true, columns predicted) with counts written in."""
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"matrix must be square (K, K); got shape {counts.shape}")
    k = counts.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for a {k}×{k} matrix")
    shown = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalise else counts
    fig = _new(1.6 + 0.9 * k, 1.2 + 0.9 * k)
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    threshold = shown.max() / 2 if shown.size else 0
    for (i, j), value in np.ndenumerate(shown):
        text = f"{value:.2f}" if normalise else f"{int(value)}"
        ax.text(
            j, i, text, ha="center", va="center", color="white" if value > threshold else "black"
        )
    ax.set(xticks=range(k), yticks=range(k), xticklabels=names, yticklabels=names)
    ax.set(xlabel="Predicted", ylabel="True", title=title)
    return fig


def plot_case_distribution(
    values: Mapping[str, ArrayLike],
    *,
    ylabel: str = "Dice",
    title: str = "Per-case distribution",
    seed: int = 0,
) -> Figure:
    """Box plot with every case drawn as a jittered point, one column per group/metric.

    NaN values are left out and counted in the tick label.
    """
    if not values:
        raise ValueError("values is empty; give at least one name → per-case values")
    fig = _new(max(3.5, 1.3 * len(values) + 1.5), 4.2)
    ax = fig.add_subplot()
    rng = np.random.default_rng(seed)
    data, labels = [], []
    for name, vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        data.append(finite)
        missing = arr.size - finite.size
        labels.append(f"{name}\n(n={finite.size}{f', {missing} NaN' if missing else ''})")
    ax.boxplot(data, widths=0.5, showfliers=False)
    for i, arr in enumerate(data, start=1):
        ax.plot(
            i + rng.uniform(-0.15, 0.15, arr.size), arr, "o", ms=3, alpha=0.6, color=_MAIN_COLOUR
        )
    ax.set_xticks(range(1, len(data) + 1), labels)
    ax.set(ylabel=ylabel, title=title)
    return fig


def plot_forest(
    analysis: SubgroupAnalysis, *, split: str | None = None, title: str | None = None
) -> Figure:
    """Forest plot of per-group estimates with intervals; flagged groups in red.

    Args:
        analysis: Result of :func:`~medai.evaluation.analyse_subgroups`.
        split: Which split to draw; the first one when omitted.
        title: Figure title; defaults to the metric and split.
    """
    overall = analysis.overall
    split_name = str(overall["split"].iloc[0]) if split is None else split
    if split_name not in set(overall["split"]):
        raise ValueError(f"split {split_name!r} not in the analysis {list(overall['split'])}")
    whole = overall[overall["split"] == split_name].iloc[0]
    rows: pd.DataFrame = analysis.table
    if not rows.empty:
        rows = rows[(rows["split"] == split_name) & rows["estimate"].notna()]
    fig = _new(6.0, 1.2 + 0.35 * (len(rows) + 1))
    ax = fig.add_subplot()
    ys = np.arange(len(rows), 0, -1)
    for y, (_, row) in zip(ys, rows.iterrows(), strict=True):
        colour = _FLAG_COLOUR if row["flagged"] else _MAIN_COLOUR
        ax.errorbar(
            row["estimate"],
            y,
            xerr=[[row["estimate"] - row["low"]], [row["high"] - row["estimate"]]],
            fmt="s",
            color=colour,
            capsize=3,
        )
    ax.errorbar(
        whole["estimate"],
        0,
        xerr=[[whole["estimate"] - whole["low"]], [whole["high"] - whole["estimate"]]],
        fmt="D",
        color="black",
        capsize=3,
    )
    ax.axvline(whole["estimate"], ls="--", color="0.5", lw=1)
    labels = [f"{r['column']}: {r['group']} (n={r['n_cases']})" for _, r in rows.iterrows()]
    ax.set_yticks([*ys, 0], [*labels, f"overall (n={whole['n_cases']})"])
    ax.set_ylim(-0.7, len(rows) + 0.7)
    ax.set(
        xlabel=analysis.metric_name,
        title=title or f"{analysis.metric_name} by subgroup — {split_name}",
    )
    return fig


def plot_bland_altman(
    a: ArrayLike, b: ArrayLike, *, units: str = "", title: str = "Bland–Altman"
) -> Figure:
    """Difference ``a − b`` against the mean of both, with bias and 95 % limits of agreement."""
    agreement = compute_bland_altman(a, b)
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    fig = _new()
    ax = fig.add_subplot()
    ax.plot((x + y) / 2, x - y, "o", ms=4, alpha=0.7, color=_MAIN_COLOUR)
    for value, name, style in (
        (agreement.bias, "bias", "-"),
        (agreement.lower, "−1.96 SD", "--"),
        (agreement.upper, "+1.96 SD", "--"),
    ):
        ax.axhline(value, ls=style, color="0.3", lw=1)
        ax.annotate(
            f"{name} {value:.2f}",
            (1.0, value),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=8,
        )
    suffix = f" ({units})" if units else ""
    ax.set(xlabel=f"Mean of both{suffix}", ylabel=f"Difference{suffix}", title=title)
    return fig


def _outline(ax: object, mask: NDArray[np.bool_], colour: str) -> None:
    if mask.any() and not mask.all():  # a constant mask has no contour (matplotlib warns)
        ax.contour(mask.T.astype(np.float64), levels=[0.5], colors=[colour], linewidths=1.5)  # type: ignore[attr-defined]


def plot_overlay(
    image: ArrayLike,
    reference: ArrayLike,
    prediction: ArrayLike,
    *,
    aspect: float = 1.0,
    title: str = "",
) -> Figure:
    """A 2-D slice in grey with the reference (green) and predicted (red) outlines.

    Args:
        image: Slice intensities indexed ``(i, j)``; ``i`` runs left to right.
        reference: Reference mask on the same slice.
        prediction: Predicted mask on the same slice.
        aspect: Pixel height / width (``spacing_j / spacing_i``).
        title: Figure title.
    """
    pixels = np.asarray(image, dtype=np.float64)
    ref, pred = np.asarray(reference) != 0, np.asarray(prediction) != 0
    if pixels.ndim != 2 or ref.shape != pixels.shape or pred.shape != pixels.shape:
        raise ValueError(
            f"image, reference and prediction must be 2-D of one shape; got "
            f"{pixels.shape}, {ref.shape}, {pred.shape}"
        )
    fig = _new(4.2, 4.4)
    ax = fig.add_subplot()
    ax.imshow(pixels.T, cmap="gray", origin="lower", aspect=aspect, interpolation="nearest")
    _outline(ax, ref, "#2ecc71")
    _outline(ax, pred, "#e74c3c")
    handles = [
        Line2D([], [], color="#2ecc71", lw=1.5, label="reference"),
        Line2D([], [], color="#e74c3c", lw=1.5, label="prediction"),
    ]
    ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.7)
    ax.set(title=title, xticks=[], yticks=[])
    return fig


def plot_referral_curve(
    curve: ReferralCurve,
    path: str | Path | None = None,
    *,
    quality: str = "Quality",
    title: str = "Referral curve",
) -> Figure:
    """Mean quality of the kept cases against the fraction referred: by uncertainty,
    oracle (worst first) and random. With ``path``, also written there as PNG (atomically).
    """
    fig = _new()
    ax = fig.add_subplot()
    x = 100 * curve.fractions
    ax.plot(x, curve.oracle, ls="--", color="0.3", lw=1, label="oracle (worst first)")
    ax.plot(x, curve.random, ls=":", color="0.5", lw=1.5, label="random")
    ax.plot(x, curve.retained_quality, "o-", color=_MAIN_COLOUR, lw=2, ms=4, label="uncertainty")
    ax.set(xlabel="Cases referred (%)", ylabel=f"{quality} of kept cases", title=title)
    ax.legend(loc="lower right", fontsize=8)
    if path is not None:
        atomic_write_bytes(path, figure_to_png(fig))
    return fig
