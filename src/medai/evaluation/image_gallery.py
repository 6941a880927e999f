"""The heat-map gallery of an image run in its evaluation report.

Another step (``medai explain``) writes ``RUN/explain/gallery/*.png`` and
``RUN/explain/explain.json`` (``method``; ``pointing_game`` ``{hits, n, rate, chance}``,
optional; ``randomisation`` ``[{layer, spearman, ssim}, ...]``). :func:`load_explanation`
reads them; :func:`gallery_section` shows the images, the pointing game and the
cascading parameter-randomisation check.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medai.evaluation.report import ReportFigure, ReportSection, ReportTable

__all__ = [
    "Explanation",
    "explanation_json",
    "gallery_section",
    "load_explanation",
    "plot_randomisation",
]

_GALLERY_MAX = 12
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Explanation:
    """A run's heat-map gallery (``explain/gallery/*.png`` and ``explain/explain.json``)."""

    folder: Path
    gallery: list[Path]
    method: str = ""
    pointing_game: Mapping[str, Any] | None = None
    randomisation: list[Mapping[str, Any]] = field(default_factory=list)


def load_explanation(folder: Path) -> Explanation | None:
    """The gallery in ``folder`` (None when it holds no ``gallery/*.png``)."""
    found = sorted((folder / "gallery").glob("*.png")) if (folder / "gallery").is_dir() else []
    gallery = [p for p in found if p.read_bytes()[:8] == _PNG_SIGNATURE]
    if len(gallery) < len(found):
        log.warning(
            "%s: %d file(s) named .png are not PNG images; left out",
            folder / "gallery",
            len(found) - len(gallery),
        )
    if not gallery:
        return None
    record = folder / "explain.json"
    doc: dict[str, Any] = {}
    if record.is_file():
        try:
            doc = dict(json.loads(record.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            log.warning("%s unreadable (%s); the gallery is shown without it", record, exc)
    return Explanation(
        folder=folder,
        gallery=gallery,
        method=str(doc.get("method", "")),
        pointing_game=doc.get("pointing_game"),
        randomisation=list(doc.get("randomisation") or []),
    )


def explanation_json(found: Explanation | None) -> dict[str, Any] | None:
    """What ``metrics.json`` records of the gallery."""
    if found is None:
        return None
    return {
        "folder": str(found.folder),
        "method": found.method,
        "gallery": [p.name for p in found.gallery],
        "pointing_game": found.pointing_game,
        "randomisation_checked": bool(found.randomisation),
    }


def plot_randomisation(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Spearman and SSIM of each map against the trained model's as layers are randomised."""
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    for key, style in (("spearman", "o-"), ("ssim", "s--")):
        ax.plot(x, [float(r.get(key, np.nan)) for r in rows], style, label=key)
    ax.set_xticks(
        x, [str(r.get("layer", i)) for i, r in enumerate(rows)], rotation=45, ha="right", fontsize=7
    )
    ax.set(ylabel="Similarity to trained map", title="Parameter randomisation (cascading)")
    ax.legend(fontsize=8)
    return fig


def gallery_section(found: Explanation) -> ReportSection:
    """Images (up to 12), pointing game and randomisation check of a gallery."""
    text = [
        f"Heat maps ({found.method or 'method not recorded'}) of {len(found.gallery)} "
        f"case(s), from {found.folder}."
    ]
    game = found.pointing_game
    if game:
        text.append(
            f"Pointing game: the map's peak fell inside the reference region in "
            f"{game.get('hits')} of {game.get('n')} true-positive cases (rate "
            f"{float(game.get('rate', np.nan)):.2f}; chance "
            f"{float(game.get('chance', np.nan)):.2f})."
        )
    figures = [ReportFigure(p.read_bytes(), p.stem) for p in found.gallery[:_GALLERY_MAX]]
    tables = []
    if found.randomisation:
        rows = [
            [
                str(r.get("layer")),
                f"{float(r.get('spearman', np.nan)):.3f}",
                f"{float(r.get('ssim', np.nan)):.3f}",
            ]
            for r in found.randomisation
        ]
        tables.append(
            ReportTable(
                ["Layers randomised to", "Spearman", "SSIM"],
                rows,
                "Map similarity as the network is randomised from the top",
            )
        )
        figures.append(
            ReportFigure.from_figure(
                plot_randomisation(found.randomisation), caption="Randomisation check"
            )
        )
        text.append(
            "Maps that stay similar after randomisation do not depend on what the model learnt."
        )
    else:
        text.append("No parameter-randomisation check was recorded for these maps.")
    return ReportSection(
        "How the model decides: heat maps", paragraphs=text, tables=tables, figures=figures
    )
