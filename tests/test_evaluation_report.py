"""Report figures and the self-contained HTML report, opened in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medai.evaluation import (
    Answer,
    ChecklistItem,
    ReportData,
    ReportFigure,
    ReportSection,
    ReportTable,
    analyse_subgroups,
    bootstrap_ci,
    bootstrap_mean_ci,
    ci_table,
    classification_section,
    compute_confusion_matrix,
    compute_roc_auc,
    figure_to_png,
    find_broken_images,
    plot_bland_altman,
    plot_case_distribution,
    plot_confusion_matrix,
    plot_forest,
    plot_pr,
    plot_reliability,
    plot_roc,
    png_data_uri,
    reliability_diagram,
    render_report,
    screenshot_report,
    segmentation_section,
    subgroup_sections,
    subgroup_table,
    write_report,
)
from medai.evaluation.browser import DEFAULT_CHROMIUM

needs_chromium = pytest.mark.skipif(
    not Path(DEFAULT_CHROMIUM).is_file(), reason="Debian chromium not installed"
)


def _data() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 240
    site = rng.choice(["A", "B", "C"], n)
    y = rng.integers(0, 2, n)
    logit = 2.0 * (y - 0.5) + rng.normal(0, np.where(site == "C", 3.0, 0.8), n)
    return pd.DataFrame(
        {
            "patient": np.arange(n) // 2,
            "y_true": y,
            "y_score": 1 / (1 + np.exp(-logit)),
            "other": 1 / (1 + np.exp(-(2.0 * (y - 0.5) + rng.normal(0, 2.0, n)))),
            "site": site,
            "split": np.where(np.arange(n) < 180, "internal_test", "external_test"),
            "dice": np.clip(rng.normal(0.82, 0.07, n), 0, 1),
        }
    )


@pytest.fixture(scope="module")
def report() -> ReportData:
    data = _data()
    y, p = data["y_true"].to_numpy(), data["y_score"].to_numpy()
    auc = bootstrap_ci(compute_roc_auc, y, p, clusters=data["patient"], n_resamples=200)
    dice = bootstrap_mean_ci(data["dice"], clusters=data["patient"], n_resamples=200)
    groups = analyse_subgroups(
        data, by="site", metric=compute_roc_auc, patient="patient", split="split", n_resamples=200
    )
    figures = [
        ReportFigure.from_figure(plot_roc(y, {"model": p, "other": data["other"]}), caption="ROC"),
        ReportFigure.from_figure(plot_pr(y, p), caption="PR"),
        ReportFigure.from_figure(plot_reliability(reliability_diagram(y, p)), caption="Calib"),
        ReportFigure.from_figure(
            plot_confusion_matrix(
                compute_confusion_matrix(y, (p >= 0.5).astype(int)),
                class_names=["benign", "malignant"],
            ),
            caption="Confusion",
        ),
        ReportFigure.from_figure(plot_case_distribution({"WT": data["dice"]}), caption="Dice"),
        ReportFigure.from_figure(plot_forest(groups), caption="Forest"),
        ReportFigure.from_figure(plot_bland_altman(p, data["other"]), caption="BA"),
    ]
    sections = [
        ReportSection(
            "Metrics <internal>",
            paragraphs=["AUC and Dice with patient-level 95 % intervals."],
            kpis={"AUC": f"{auc.estimate:.3f}", "Dice": f"{dice.estimate:.3f}"},
            tables=[ci_table({"ROC-AUC": auc, "Dice": dice}, caption="Primary metrics")],
            figures=figures,
        ),
        ReportSection("External test set", tables=[subgroup_table(groups, split="external_test")]),
        ReportSection(
            "Checklist",
            checklist=[
                ChecklistItem("Is an external test set used?", "yes", "split column: site C"),
                ChecklistItem("Were results compared with experts?", Answer.NO, "no reader data"),
            ],
        ),
    ]
    return ReportData(title="Demo <model>", sections=sections, metadata={"run": "demo-run"})


def test_figures_are_pngs_with_pixels() -> None:
    y = np.array([0, 1, 0, 1, 1, 0])
    png = figure_to_png(plot_roc(y, np.array([0.1, 0.8, 0.3, 0.6, 0.9, 0.5])), dpi=50)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == (250, 210)  # 5.0 x 4.2 inches at 50 dpi
    assert len(np.unique(np.asarray(image.convert("L")))) > 2
    assert base64.b64decode(png_data_uri(png).split(",", 1)[1]) == png
    with pytest.raises(ValueError, match="expects PNG bytes"):
        png_data_uri(b"GIF89a")
    with pytest.raises(ValueError, match="must be square"):
        plot_confusion_matrix(np.ones((2, 3)))


def test_report_is_self_contained_and_escaped(report: ReportData, tmp_path: Path) -> None:
    path = write_report(report, tmp_path / "out" / "report.html")
    html = path.read_text(encoding="utf-8")
    assert html == render_report(report)
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 7
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from outside
    assert "Demo &lt;model&gt;" in html
    assert "<internal>" not in html
    assert 'class="flagged"' in html  # site C's planted drop is highlighted
    assert 'class="answer yes"' in html
    assert 'class="answer no"' in html
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temp file left


def test_report_validation() -> None:
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        ReportTable(["a", "b"], [["1"]])
    with pytest.raises(ValueError, match="answer must be one of"):
        ChecklistItem("q", "maybe")
    with pytest.raises(ValueError, match="title is empty"):
        ReportData(title=" ", sections=[])
    table = ReportTable.from_frame(
        pd.DataFrame({"x": [0.12345, float("nan")], "ok": [True, False]})
    )
    assert table.rows == [["0.123", "yes"], ["—", "no"]]


@needs_chromium
def test_report_renders_in_chromium_without_broken_images(
    report: ReportData, tmp_path: Path
) -> None:
    path = write_report(report, tmp_path / "report.html")
    count, broken = find_broken_images(path)
    assert count == 7
    assert broken == []
    shot = screenshot_report(path, tmp_path / "shot.png", width=1000)
    with Image.open(shot) as image:
        assert image.size == (1000, 900)


@needs_chromium
def test_chromium_check_detects_a_broken_image(tmp_path: Path) -> None:
    good = ReportFigure(figure_to_png(plot_case_distribution({"x": [0.1, 0.5]}), dpi=30))
    bad = ReportFigure(good.png[:40])  # a truncated PNG cannot be decoded
    data = ReportData(title="t", sections=[ReportSection("s", figures=[good, bad])])
    count, broken = find_broken_images(write_report(data, tmp_path / "r.html"))
    assert count == 2
    assert len(broken) == 1


def test_section_builders(tmp_path: Path) -> None:
    data = _data()
    internal = data[data["split"] == "internal_test"]
    clf = classification_section(
        "Internal test set",
        internal["y_true"],
        internal["y_score"],
        clusters=internal["patient"],
        n_resamples=100,
    )
    assert [row[0] for row in clf.tables[0].rows][:2] == ["ROC-AUC", "PR-AUC (average precision)"]
    auc_row = clf.tables[0].rows[0]
    assert float(auc_row[1]) == pytest.approx(
        compute_roc_auc(internal["y_true"], internal["y_score"]), abs=5e-4
    )
    assert len(clf.figures) == 4
    multi = classification_section(
        "Three classes",
        np.arange(30) % 3,
        np.eye(3)[np.arange(30) % 3] * 0.7 + 0.1,
        n_resamples=100,
    )
    assert len(multi.figures) == 2  # reliability + confusion; no binary ROC/PR
    seg = segmentation_section(
        "Segmentation",
        data.rename(columns={"dice": "WT/dice"}),
        patient="patient",
        n_resamples=100,
    )
    assert seg.tables[0].rows[0][0] == "WT/dice"
    with pytest.raises(ValueError, match="no column for metrics"):
        segmentation_section("x", data, metrics=("hd95",))
    groups = analyse_subgroups(
        data, by="site", metric=compute_roc_auc, patient="patient", split="split", n_resamples=100
    )
    subs = subgroup_sections(groups)
    assert [s.title for s in subs] == ["Subgroups — internal_test", "Subgroups — external_test"]
    assert any("Flagged: site = C" in p for p in subs[0].paragraphs)
    html = render_report(ReportData(title="r", sections=[clf, seg, *subs]))
    assert html.count("<img ") == 4 + 1 + 2
