"""A self-contained HTML evaluation report: sections of text, tables, figures, checklist.

The report is one file: CSS is inline and every figure is a base64 ``data:`` PNG, so it
can be mailed, archived with the run, or opened on a machine with no network.

Example:
    >>> section = ReportSection("Test set", paragraphs=["200 patients, 2 sites."])
    >>> html = render_report(ReportData(title="Model report", sections=[section]))
    >>> html.startswith("<!DOCTYPE html>")
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from matplotlib.figure import Figure

from medai.evaluation.bootstrap import ConfidenceInterval
from medai.evaluation.plots import figure_to_png, png_data_uri
from medai.evaluation.subgroups import SubgroupAnalysis
from medai.fsutil import atomic_write_text

__all__ = [
    "Answer",
    "ChecklistItem",
    "ReportData",
    "ReportFigure",
    "ReportSection",
    "ReportTable",
    "ci_table",
    "render_report",
    "subgroup_table",
    "write_report",
]

_TEMPLATES = Path(__file__).parent / "templates"


class Answer(Enum):
    """Answer to a checklist question, derived from the run's own data."""

    YES = "yes"
    NO = "no"
    PARTLY = "partly"
    NOT_APPLICABLE = "n/a"


def _cell(value: Any, float_format: str) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else float_format.format(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@dataclass
class ReportTable:
    """A table of already formatted cells.

    Attributes:
        columns: Header cells.
        rows: Body rows, each as long as ``columns``.
        caption: Text above the table.
        highlight: Indices of rows to mark (e.g. flagged subgroups).
    """

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    highlight: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        width = len(self.columns)
        for i, row in enumerate(self.rows):
            if len(row) != width:
                raise ValueError(f"table row {i} has {len(row)} cells; the header has {width}")
        bad = [i for i in self.highlight if not 0 <= i < len(self.rows)]
        if bad:
            raise ValueError(f"highlight rows {bad} out of range 0..{len(self.rows) - 1}")

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        caption: str = "",
        float_format: str = "{:.3f}",
        highlight: Sequence[int] = (),
    ) -> ReportTable:
        """Build from a DataFrame; floats formatted with ``float_format``, NaN shown as —."""
        rows = [[_cell(v, float_format) for v in row] for row in frame.itertuples(index=False)]
        return cls([str(c) for c in frame.columns], rows, caption, list(highlight))


@dataclass
class ReportFigure:
    """A PNG figure with its caption, embedded as a data URI."""

    png: bytes
    caption: str = ""
    alt: str = ""

    def __post_init__(self) -> None:
        self.data_uri = png_data_uri(self.png)

    @classmethod
    def from_figure(
        cls, figure: Figure, *, caption: str = "", alt: str = "", dpi: int = 110
    ) -> ReportFigure:
        return cls(figure_to_png(figure, dpi=dpi), caption, alt or caption)


@dataclass
class ChecklistItem:
    """One checklist question answered from the run (``how`` says from what)."""

    question: str
    answer: Answer | str
    how: str = ""

    def __post_init__(self) -> None:
        try:
            self.answer = Answer(self.answer)
        except ValueError:
            choices = [a.value for a in Answer]
            raise ValueError(f"answer must be one of {choices}; got {self.answer!r}") from None


@dataclass
class ReportSection:
    """A titled part of the report; any of its parts may be empty."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    kpis: dict[str, str] = field(default_factory=dict)
    tables: list[ReportTable] = field(default_factory=list)
    figures: list[ReportFigure] = field(default_factory=list)
    checklist: list[ChecklistItem] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


@dataclass
class ReportData:
    """Everything a report shows, in order."""

    title: str
    sections: list[ReportSection]
    subtitle: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    generated_at: str = field(
        default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    )

    def __post_init__(self) -> None:
        if not self.title.strip():
            raise ValueError("report title is empty; give the run or model name")


def ci_table(
    metrics: Mapping[str, ConfidenceInterval], *, caption: str = "", digits: int = 3
) -> ReportTable:
    """Metric | estimate | 95 % CI | method | patients, one row per metric."""
    rows = []
    for name, ci in metrics.items():
        rows.append(
            [
                name,
                f"{ci.estimate:.{digits}f}",
                f"{ci.low:.{digits}f} – {ci.high:.{digits}f}",
                str(ci.method),
                str(ci.n_clusters),
            ]
        )
    pct = round(100 * next(iter(metrics.values())).confidence) if metrics else 95
    return ReportTable(["Metric", "Estimate", f"{pct} % CI", "Interval", "Patients"], rows, caption)


def subgroup_table(
    analysis: SubgroupAnalysis, *, split: str | None = None, digits: int = 3
) -> ReportTable:
    """Subgroup results of one split (all when ``split`` is None); flagged rows highlighted."""
    table = analysis.table
    if split is not None and not table.empty:
        table = table[table["split"] == split]
    columns = [
        "Split",
        "Column",
        "Group",
        "Cases",
        "Patients",
        "Estimate",
        "95 % CI",
        "Gap",
        "Flagged",
        "Reason",
    ]
    rows, flagged = [], []
    for i, (_, row) in enumerate(table.iterrows()):
        interval = (
            "—" if math.isnan(row["low"]) else f"{row['low']:.{digits}f} – {row['high']:.{digits}f}"
        )
        rows.append(
            [
                str(row["split"]),
                str(row["column"]),
                str(row["group"]),
                str(row["n_cases"]),
                str(row["n_patients"]),
                _cell(float(row["estimate"]), f"{{:.{digits}f}}"),
                interval,
                _cell(float(row["gap"]), f"{{:+.{digits}f}}"),
                _cell(bool(row["flagged"]), ""),
                str(row["reason"]),
            ]
        )
        if row["flagged"]:
            flagged.append(i)
    if split is not None:
        columns, rows = columns[1:], [r[1:] for r in rows]
    caption = f"{analysis.metric_name} by subgroup" + (f" — {split}" if split else "")
    return ReportTable(columns, rows, caption, flagged)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(data: ReportData) -> str:
    """The report as one HTML string (CSS inline, images embedded)."""
    return _environment().get_template("report.html.j2").render(report=data)


def write_report(data: ReportData, path: str | Path) -> Path:
    """Render and write the report atomically; returns the path written."""
    target = Path(path)
    atomic_write_text(target, render_report(data))
    return target
