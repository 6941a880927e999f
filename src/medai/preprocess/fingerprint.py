"""Dataset fingerprint: what the planner needs to know about a cohort.

Spacings, shapes, the size of the non-zero (brain) box in millimetres, per-channel
intensity statistics inside the non-zero voxels, and label / region frequencies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, Field

from medai.preprocess.cases import SegCase
from medai.preprocess.steps import foreground_bbox, foreground_mask, reorient_to_ras

__all__ = ["ChannelStats", "Fingerprint", "compute_fingerprint"]


class ChannelStats(BaseModel):
    """Intensities of one channel inside the non-zero voxels, pooled over cases."""

    mean: float
    std: float
    p00_5: float
    p99_5: float


class Fingerprint(BaseModel):
    """Summary of a cohort for planning."""

    n_cases: int
    spacings: list[tuple[float, float, float]]
    shapes: list[tuple[int, int, int]]
    foreground_extent_mm: list[tuple[float, float, float]]
    median_spacing: tuple[float, float, float]
    channels: list[ChannelStats]
    label_case_fraction: dict[int, float] = Field(description="share of cases holding a label")
    label_voxel_fraction: dict[int, float] = Field(description="mean share of foreground voxels")
    region_case_fraction: dict[str, float]
    region_volume_ml: dict[str, list[float]]


def _case_stats(
    case: SegCase, regions: dict[str, list[int]], rng: np.random.Generator
) -> tuple[dict[str, object], list[np.ndarray]]:
    image = reorient_to_ras(case.load_image())
    label = case.load_label()
    mask = foreground_mask(image)
    box = foreground_bbox(image) if mask.any() else ((0, 1), (0, 1), (0, 1))
    extent = tuple(float((hi - lo) * s) for (lo, hi), s in zip(box, image.spacing, strict=True))
    samples = []
    for data in image.array:
        values = data[mask]
        take = min(values.size, 20000)
        samples.append(rng.choice(values, take, replace=False) if take else values)
    info: dict[str, object] = {"spacing": image.spacing, "shape": image.shape, "extent": extent}
    if label is not None:
        lab = label.array[0]
        voxel_ml = float(np.prod(label.spacing)) / 1000.0
        n_fg = max(int(mask.sum()), 1)
        values, counts = np.unique(lab, return_counts=True)
        info["labels"] = {int(v): int(c) / n_fg for v, c in zip(values, counts, strict=True)}
        info["regions"] = {r: float(np.isin(lab, ls).sum()) * voxel_ml for r, ls in regions.items()}
    return info, samples


def compute_fingerprint(
    cases: Sequence[SegCase],
    *,
    regions: dict[str, list[int]],
    seed: int = 0,
    on_case: Callable[[str], None] | None = None,
) -> Fingerprint:
    """Fingerprint ``cases`` (reads every image and label once).

    Raises:
        ValueError: If ``cases`` is empty.
    """
    if not cases:
        raise ValueError("cases is empty; a fingerprint needs at least one case")
    rng = np.random.default_rng(seed)
    infos, pooled = [], []
    for case in cases:
        info, samples = _case_stats(case, regions, rng)
        infos.append(info)
        pooled.append(samples)
        if on_case is not None:
            on_case(case.case_id)
    channels = []
    for c in range(len(pooled[0])):
        v = np.concatenate([p[c] for p in pooled]).astype(np.float64)
        channels.append(
            ChannelStats(
                mean=float(v.mean()),
                std=float(v.std()),
                p00_5=float(np.percentile(v, 0.5)),
                p99_5=float(np.percentile(v, 99.5)),
            )
        )
    labelled = [i for i in infos if "labels" in i]
    all_labels = sorted({k for i in labelled for k in i["labels"]})  # type: ignore[attr-defined]
    n = max(len(labelled), 1)
    spacings = [i["spacing"] for i in infos]
    return Fingerprint(
        n_cases=len(cases),
        spacings=spacings,  # type: ignore[arg-type]
        shapes=[i["shape"] for i in infos],  # type: ignore[misc]
        foreground_extent_mm=[i["extent"] for i in infos],  # type: ignore[misc]
        median_spacing=tuple(float(x) for x in np.median(np.asarray(spacings), axis=0)),  # type: ignore[arg-type]
        channels=channels,
        label_case_fraction={
            k: sum(k in i["labels"] for i in labelled) / n  # type: ignore[operator]
            for k in all_labels
        },
        label_voxel_fraction={
            k: float(np.mean([i["labels"].get(k, 0.0) for i in labelled]))  # type: ignore[attr-defined]
            for k in all_labels
        },
        region_case_fraction={
            r: sum(i["regions"][r] > 0 for i in labelled) / n  # type: ignore[index]
            for r in regions
        },
        region_volume_ml={r: [i["regions"][r] for i in labelled] for r in regions},  # type: ignore[index]
    )
