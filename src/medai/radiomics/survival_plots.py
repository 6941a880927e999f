"""PNG figures for the survival report: Kaplan–Meier by risk group, coefficient forest plot.

Figures are drawn on an Agg canvas without pyplot's global state and returned as PNG
bytes, so the library never opens a window and is safe in worker processes.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullFormatter
from numpy.typing import ArrayLike

__all__ = ["forest_plot_png", "kaplan_meier_png"]

_GROUP_NAMES = {
    2: ("low risk", "high risk"),
    3: ("low", "intermediate", "high"),
    4: ("Q1", "Q2", "Q3", "Q4"),
}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def kaplan_meier_png(
    time: ArrayLike,
    event: ArrayLike,
    groups: ArrayLike,
    *,
    p_value: float | None = None,
    title: str = "Kaplan–Meier by predicted risk group",
) -> bytes:
    """Kaplan–Meier curves, one per risk group (0 = lowest risk), with the log-rank p."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event).astype(int)
    g = np.asarray(groups).ravel()
    labels = np.unique(g)
    names = _GROUP_NAMES.get(labels.size, tuple(f"group {int(v)}" for v in labels))
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot()
    for name, lab in zip(names, labels, strict=True):
        sel = g == lab
        km = KaplanMeierFitter().fit(t[sel], e[sel])
        sf = km.survival_function_.iloc[:, 0]
        ax.step(sf.index.to_numpy(), sf.to_numpy(), where="post", label=f"{name} (n={sel.sum()})")
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title if p_value is None else f"{title}\nlog-rank p = {p_value:.3g}")
    ax.legend(loc="lower left", frameon=False)
    ax.grid(alpha=0.3)
    return _png(fig)


def forest_plot_png(hazard_ratios: pd.DataFrame, *, title: str = "Hazard ratio per SD") -> bytes:
    """Forest plot of ``hr`` with ``hr_low``–``hr_high`` per model column (log scale)."""
    needed = {"hr", "hr_low", "hr_high"}
    if not needed <= set(hazard_ratios.columns):
        raise ValueError(f"hazard_ratios needs columns {sorted(needed)}")
    hr = hazard_ratios.iloc[::-1]
    y = np.arange(len(hr))
    fig = Figure(figsize=(6.0, 1.0 + 0.35 * max(len(hr), 1)))
    ax = fig.add_subplot()
    err = np.vstack([hr["hr"] - hr["hr_low"], hr["hr_high"] - hr["hr"]])
    ax.errorbar(hr["hr"], y, xerr=err, fmt="o", color="black", ecolor="grey", capsize=3)
    ax.axvline(1.0, color="red", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = float(hr["hr_low"].min()), float(hr["hr_high"].max())
    ax.set_xticks([t for t in (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0) if lo / 2 <= t <= hi * 2])
    ax.set_yticks(y, [str(i) for i in hr.index])
    ax.set_xlabel("hazard ratio (95% CI)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)
