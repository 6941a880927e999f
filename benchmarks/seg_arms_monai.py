"""The two MONAI peer arms of the segmentation benchmark, written as a user would.

``monai_unet``      the plain MONAI UNet loop from the MONAI docs: UNet 16-256, 2
                    residual units, 64³ foreground-biased crops, flips, DiceLoss(sigmoid),
                    Adam 1e-3, batch 2.
``monai_tutorial``  the MONAI BraTS tutorial recipe: SegResNet-16 (dropout 0.2), random
                    crops of the tutorial's ROI scaled to 2 mm (112×112×72), flips,
                    channel-wise non-zero normalisation, intensity scale/shift,
                    DiceLoss(squared_pred, sigmoid), Adam 1e-4 + cosine, batch 1; MSD labels
                    converted correctly (WT = 1|2|3, TC = 2|3, ET = 3).

Both are seeded (weights, data order, augmentation) with ``monai.utils.set_determinism``
and a seeded loader, and keep the best validated model like the MONAI tutorials do. The
tutorial's cosine schedule runs over the arm's wall clock instead of its epochs. Caching
(``CacheDataset``) counts inside the budget. Validation (6 cases) is due at a tenth of the
budget, then only while it stays under 15 % of the time since the previous one (medai's
rule), and once at the end; it uses the shared window, not the tutorials' full-image one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medai.image import ScalarImage
from seg_common import (
    NO_POST,
    LabelledCase,
    ScoredNet,
    Snapshots,
    Split,
    dice,
    msd_items,
    postprocess,
    window_probabilities,
)

TUTORIAL_ROI_1MM = (224, 224, 144)  # its training crop; scaled to 2 mm and ≤ the image
UNET_PATCH = (64, 64, 64)


def _to_regions() -> Any:
    """The tutorial's label conversion, corrected for MSD labels (3 is enhancing)."""
    from monai.transforms import MapTransform

    class ToRegions(MapTransform):
        def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
            d = dict(data)
            for key in self.keys:
                lab = d[key][0] if d[key].ndim == 4 else d[key]
                d[key] = torch.stack([lab >= 1, (lab == 2) | (lab == 3), lab == 3]).float()
            return d

    return ToRegions(["label"])


def _base_transforms() -> list[Any]:
    from monai import transforms as mt

    return [
        mt.LoadImaged(["image", "label"]),
        mt.EnsureChannelFirstd("image"),
        mt.EnsureTyped(["image", "label"]),
        _to_regions(),
        mt.Orientationd(["image", "label"], axcodes="RAS"),
        mt.Spacingd(["image", "label"], pixdim=(2.0, 2.0, 2.0), mode=("bilinear", "nearest")),
        mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
    ]


def monai_prepare(image: ScalarImage) -> np.ndarray:
    """The peers' input on the input grid (RAS 2 mm cohort: only the normalisation acts)."""
    from monai.transforms import NormalizeIntensity

    if not np.allclose(image.spacing, 2.0) or np.any(np.diag(image.affine)[:3] < 0):
        raise SystemExit("the MONAI arms are scored on RAS 2 mm images; regenerate the cohort")
    out = NormalizeIntensity(nonzero=True, channel_wise=True)(image.array.astype(np.float32))
    return np.asarray(out, dtype=np.float32)


def build_net(arm: str) -> torch.nn.Module:
    from monai.networks.nets import SegResNet, UNet

    if arm == "monai_unet":
        return UNet(3, 4, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    if arm == "monai_tutorial":
        return SegResNet(
            blocks_down=(1, 2, 2, 4),
            blocks_up=(1, 1, 1),
            init_filters=16,
            in_channels=4,
            out_channels=3,
            dropout_prob=0.2,
        )
    raise ValueError(f"not a MONAI arm: {arm!r}")


def tutorial_patch(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The tutorial's crop on 2 mm voxels, no larger than the image, multiples of 8."""
    sides = [min(round(s / 2.0), n) // 8 * 8 for s, n in zip(TUTORIAL_ROI_1MM, shape, strict=True)]
    return (sides[0], sides[1], sides[2])


def scored_net(arm: str, weights: Path, patch: list[int]) -> ScoredNet:
    model = build_net(arm)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    return ScoredNet(arm, model.eval(), (patch[0], patch[1], patch[2]), monai_prepare)


@dataclass
class _Recipe:
    model: torch.nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    lr_at: Callable[[float], float]
    random: list[Any]
    batch: int
    patch: tuple[int, int, int]


def _recipe(arm: str, shape: tuple[int, ...]) -> _Recipe:
    from monai import transforms as mt
    from monai.losses import DiceLoss

    flips = [mt.RandFlipd(["image", "label"], prob=0.5, spatial_axis=a) for a in (0, 1, 2)]
    model = build_net(arm)
    if arm == "monai_unet":
        crop = mt.RandCropByPosNegLabeld(
            ["image", "label"], "label", UNET_PATCH, pos=1, neg=1, num_samples=1
        )
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        loss = DiceLoss(sigmoid=True)
        return _Recipe(model, loss, opt, lambda _p: 1e-3, [crop, *flips], 2, UNET_PATCH)
    patch = tutorial_patch(shape)
    rand = [
        mt.RandSpatialCropd(["image", "label"], roi_size=patch, random_size=False),
        *flips,
        mt.RandScaleIntensityd("image", factors=0.1, prob=1.0),
        mt.RandShiftIntensityd("image", offsets=0.1, prob=1.0),
    ]
    loss = DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, sigmoid=True)
    opt = torch.optim.Adam(model.parameters(), 1e-4, weight_decay=1e-5)
    return _Recipe(
        model,
        loss,
        opt,
        lambda p: 1e-4 * 0.5 * (1 + math.cos(math.pi * p)),
        rand,
        1,
        patch,
    )


def _validate(
    model: torch.nn.Module, cases: list[LabelledCase], patch: tuple[int, int, int]
) -> float:
    """In-loop validation for model selection: the shared window (foreground box, Gaussian,
    overlap 0.5), sigmoid ≥ 0.5; cheaper on a CPU than the tutorials' full-image window."""
    net = ScoredNet("peer", model, patch, monai_prepare)
    scores = []
    for case in cases:
        probs = window_probabilities(net, case.image)
        per_region = dice(postprocess(probs, case.image, NO_POST), case.regions)
        scores.append(np.mean(list(per_region.values())))
    model.train()
    return float(np.mean(scores))


def train_monai(
    arm: str,
    root: Path,
    split: Split,
    val_cases: list[LabelledCase],
    *,
    seed: int,
    budget_s: float,
    out: Path,
    snap_every_s: float,
) -> dict[str, Any]:
    """Train one MONAI arm for ``budget_s`` of arm clock (caching included)."""
    from monai import transforms as mt
    from monai.data import CacheDataset, DataLoader
    from monai.utils import set_determinism

    t0 = time.perf_counter()
    set_determinism(seed=seed)
    rec = _recipe(arm, val_cases[0].image.shape)
    snaps = Snapshots(out / "snapshots", t0, snap_every_s)
    ds = CacheDataset(
        msd_items(root, split.fit), mt.Compose(_base_transforms() + rec.random), progress=False
    )
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds, batch_size=rec.batch, shuffle=True, num_workers=0, generator=gen)
    cache_s = time.perf_counter() - t0
    # validate first at a tenth of the budget, then (like medai) only while validation
    # stays under 15 % of the time since the last one; always once at the end
    next_val, val_cost, val_end, last_step = budget_s / 10, 0.0, 0.0, 0.0
    best: tuple[float, dict[str, torch.Tensor] | None, float] = (-1.0, None, 0.0)
    samples, steps, step_time, curve = 0, 0, 0.0, []
    done = False
    while not done:
        for batch in loader:
            t = time.perf_counter()
            for group in rec.optimizer.param_groups:
                group["lr"] = rec.lr_at(min(snaps.elapsed() / budget_s, 1.0))
            rec.optimizer.zero_grad()
            loss = rec.loss(rec.model(batch["image"]), batch["label"])
            loss.backward()
            rec.optimizer.step()
            last_step = time.perf_counter() - t
            step_time += last_step
            samples += int(batch["image"].shape[0])
            steps += 1
            snaps.maybe(rec.model.state_dict, steps)
            now = snaps.elapsed()
            done = now + 1.1 * val_cost + last_step >= budget_s
            due = now >= next_val and val_cost <= 0.15 * (now - val_end + val_cost)
            if due or done:
                tv = time.perf_counter()
                score = _validate(rec.model, val_cases, rec.patch)
                val_cost = time.perf_counter() - tv
                curve.append((round(snaps.elapsed(), 2), round(score, 4)))
                print(
                    f"  {arm} seed {seed}: t={snaps.elapsed():.0f}s val Dice {score:.3f}",
                    flush=True,
                )
                if score > best[0]:
                    state = {k: v.detach().clone() for k, v in rec.model.state_dict().items()}
                    best = (score, state, snaps.elapsed())
                val_end = snaps.elapsed()
            if done:
                break
    torch.save(best[1], out / "final.pt")
    return {
        "arm": arm,
        "seed": seed,
        "wall_s": round(snaps.elapsed(), 2),
        "cache_s": round(cache_s, 2),
        "samples": samples,
        "steps": steps,
        "samples_per_s": round(samples / max(step_time, 1e-9), 3),
        "own_val_curve": curve,
        "best_val_s": round(best[2], 2),
        "final": str(out / "final.pt"),
        "patch": list(rec.patch),
        "snapshots": snaps.taken,
    }
