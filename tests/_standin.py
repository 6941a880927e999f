"""A deterministic stand-in for a trained network whose masks are known in closed form.

The stand-in is one fixed 3D convolution: a tissue fires where one channel of the
voxel's right-hand neighbour (+1 along the network grid's first axis, which points to
R after reorientation) is past a z-score threshold, and the regions are unions of
tissues. On the world phantom of :mod:`_seg_cohort` those thresholds separate the
tissues by many noise standard deviations, so the prediction on *any* input grid is
the phantom's tumour moved :data:`SHIFT_MM` to the left (−R): computable without the
pipeline, and wrong if the pipeline mirrors, permutes or misplaces anything, or feeds
the network an array that is not RAS (the neighbour would be on the wrong side).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from _seg_cohort import world_phantom
from medai.image import LabelMap
from medai.inference import LoadedRun
from medai.preprocess import Plan, apply_overrides

SHIFT_MM = 2.0  # one voxel of the 2 mm network grid
GAIN = 20.0  # logit per z-score unit past a threshold
# Tissue: (channel, sign, z threshold), each threshold halfway between the z-scores the
# tissue and its neighbour take on the phantom (measured on a 2 mm grid): t1gd enhancing
# 5.04 vs ≤ 0.22; T1w necrotic core -7.38 vs enhancing 0.36; T2w oedema 2.25 vs normal
# brain -0.48. Halfway thresholds keep a boundary in place when the pipeline interpolates.
TISSUES = {
    "enhancing": (2, 1.0, 2.5),
    "core": (1, -1.0, -3.5),
    "oedema": (3, 1.0, 0.88),
}
CHANNELS = ["FLAIR", "T1w", "t1gd", "T2w"]
LABELS = {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
REGIONS = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}


class NeighbourRule(nn.Module):
    """Per tissue, a logit ``GAIN * sign * (x[c](v + e_x) - threshold)`` from one fixed
    convolution; regions are unions: ET = enhancing, TC = ET ∪ core, WT = TC ∪ oedema."""

    def __init__(self, regions: list[str]) -> None:
        super().__init__()
        if regions != list(REGIONS):
            raise ValueError(f"the stand-in predicts {list(REGIONS)}; got {regions}")
        self.conv = nn.Conv3d(len(CHANNELS), 3, kernel_size=(3, 1, 1), padding=(1, 0, 0))
        with torch.no_grad():
            self.conv.weight.zero_()
            for i, (channel, sign, threshold) in enumerate(TISSUES.values()):
                self.conv.weight[i, channel, 2, 0, 0] = GAIN * sign  # tap 2 reads v + 1
                self.conv.bias[i] = -GAIN * sign * threshold
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enhancing, core, oedema = self.conv(x).unbind(1)
        tc = torch.maximum(enhancing, core)
        return torch.stack([torch.maximum(tc, oedema), tc, enhancing], 1)


def standin_plan(extra: list[str] | None = None) -> Plan:
    """A BraTS plan whose 32³ window covers every test image in one piece, so the
    stand-in's zero padding is the z-scored background (no window seams)."""
    plan = Plan(channels=CHANNELS, labels=LABELS, regions=REGIONS)
    return apply_overrides(plan, ["train.patch_size=[32,32,32]", *(extra or [])])


def standin_run(plan: Plan | None = None) -> LoadedRun:
    """A :class:`LoadedRun` holding the stand-in instead of trained weights."""
    plan = plan or standin_plan()
    return LoadedRun(plan, NeighbourRule(list(plan.regions)).eval(), torch.device("cpu"))


def expected_labels(
    shape: tuple[int, int, int], affine: np.ndarray, right: np.ndarray, **phantom_args: object
) -> LabelMap:
    """What the stand-in must answer on the grid ``(shape, affine)``: the phantom's labels
    with the tumour moved :data:`SHIFT_MM` against ``right`` (the unit world direction of
    the network grid's first axis: +R, or the oblique axis nearest to it)."""
    centre = np.asarray(phantom_args.pop("tumour_mm", (4.0, -3.0, 3.0)), dtype=np.float64)
    moved = centre - SHIFT_MM * np.asarray(right, dtype=np.float64)
    _, label = world_phantom(shape, affine, tumour_mm=tuple(moved), **phantom_args)  # type: ignore[arg-type]
    return label


def region_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """BraTS region masks of a label array."""
    return {name: np.isin(labels, ids) for name, ids in REGIONS.items()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Plain Dice of two non-empty masks."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float(np.count_nonzero(a & b)) / float(a.sum() + b.sum())
