"""Training data: preprocessed cases in memory, foreground-biased random patches.

Every random draw is seeded from ``(run seed, epoch, sample index)``, so a sample's
crop and augmentation replay exactly after a resume, in any worker, on any rank.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset, DistributedSampler

from medai.preprocess.pipeline import load_preprocessed
from medai.preprocess.plan import TrainPlan
from medai.training.augment import SHIFT_STREAM, apply_shift, class_count, draw_shift

__all__ = [
    "CaseArrays",
    "PatchDataset",
    "epoch_batches",
    "labels_to_regions",
    "load_case_arrays",
    "sample_seed",
]


def labels_to_regions(label: NDArray[Any], regions: dict[str, list[int]]) -> NDArray[np.uint8]:
    """``(1, x, y, z)`` integer labels → ``(R, x, y, z)`` binary region masks."""
    lab = label[0] if label.ndim == 4 else label
    return np.stack([np.isin(lab, ids) for ids in regions.values()]).astype(np.uint8)


class CaseArrays:
    """One preprocessed case held in memory: image, region masks, patch indices."""

    def __init__(self, case_id: str, image: NDArray[np.float32], regions: NDArray[np.uint8]):
        self.case_id = case_id
        self.image = image
        self.regions = regions


def load_case_arrays(paths: dict[str, Path], regions: dict[str, list[int]]) -> list[CaseArrays]:
    """Load cached ``.npz`` cases (in the order of ``paths``) for training."""
    out = []
    for case_id, path in paths.items():
        pre = load_preprocessed(path)
        if pre.label is None:
            raise ValueError(f"case {case_id!r} has no label; training needs labelled cases")
        out.append(
            CaseArrays(
                case_id,
                pre.image.array.astype(np.float32),
                labels_to_regions(pre.label.array, regions),
            )
        )
    return out


def _pad_to(array: NDArray[Any], size: tuple[int, int, int]) -> NDArray[Any]:
    """Zero-pad the spatial axes of ``(C, x, y, z)`` symmetrically up to ``size``."""
    pads = [(0, 0)]
    for have, want in zip(array.shape[1:], size, strict=True):
        extra = max(0, want - have)
        pads.append((extra // 2, extra - extra // 2))
    return np.pad(array, pads) if any(p != (0, 0) for p in pads) else array


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 31-bit seed for one sample, stable across processes and Python runs."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _transforms(plan: TrainPlan) -> Any:
    from monai import transforms as mt

    keys = ["image", "label"]
    steps: list[Any] = [
        mt.RandCropByPosNegLabeld(
            keys,
            label_key="label",
            spatial_size=plan.patch_size,
            pos=plan.pos_fraction,
            neg=1.0 - plan.pos_fraction,
            num_samples=1,
            fg_indices_key="fg",
            bg_indices_key="bg",
        ),
    ]
    if plan.augment:
        steps += [
            mt.RandAffined(
                keys,
                prob=0.2,
                rotate_range=(0.26, 0.26, 0.26),
                scale_range=(0.1, 0.1, 0.1),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            mt.RandFlipd(keys, prob=0.5, spatial_axis=0),
            mt.RandFlipd(keys, prob=0.5, spatial_axis=1),
            mt.RandFlipd(keys, prob=0.5, spatial_axis=2),
            mt.RandScaleIntensityd("image", factors=0.1, prob=0.5),
            mt.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
            mt.RandAdjustContrastd("image", prob=0.15, gamma=(0.7, 1.5)),
        ]
    return mt.Compose(steps)


class PatchDataset(Dataset[dict[str, torch.Tensor]]):
    """Virtual dataset: item ``(epoch, i)`` is a random patch of case ``i % n_cases``."""

    def __init__(self, cases: Sequence[CaseArrays], plan: TrainPlan, *, seed: int, length: int):
        from monai.transforms.utils import map_binary_to_indices

        if not cases:
            raise ValueError("cases is empty; training needs at least one case")
        self.cases = list(cases)
        self.seed = seed
        self.length = length
        self.transform = _transforms(plan)
        self.shift = plan.shift
        self.arrays = []
        for case in self.cases:
            image = _pad_to(case.image, plan.patch_size)
            regions = _pad_to(case.regions, plan.patch_size)
            fg, bg = map_binary_to_indices(regions, None, 0.0)
            self.arrays.append((image, regions, np.asarray(fg), np.asarray(bg)))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: Any) -> dict[str, torch.Tensor]:
        epoch, index = key
        image, regions, fg, bg = self.arrays[index % len(self.arrays)]
        self.transform.set_random_state(seed=sample_seed(self.seed, epoch, index))
        out = self.transform({"image": image, "label": regions, "fg": fg, "bg": bg})
        out = out[0] if isinstance(out, list) else out
        patch = np.asarray(out["image"], dtype=np.float32)
        label = np.asarray(out["label"])
        if self.shift.enabled:
            healthy = self.shift.healthy_classes
            rng = np.random.default_rng([sample_seed(self.seed, epoch, index), SHIFT_STREAM])
            draw = draw_shift(
                rng,
                self.shift,
                channels=patch.shape[0],
                classes=class_count(label.shape[0], healthy),
            )
            patch = apply_shift(patch, (label > 0.5).astype(np.uint8), draw, healthy=healthy)
        return {
            "image": torch.as_tensor(patch, dtype=torch.float32),
            "label": torch.as_tensor(label, dtype=torch.float32),
        }


def epoch_batches(
    length: int,
    *,
    batch_size: int,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    skip: int = 0,
) -> Iterator[list[tuple[int, int]]]:
    """This rank's batches of ``(epoch, index)`` keys for ``epoch``, skipping ``skip``."""
    keys: Any = range(length)
    sampler: DistributedSampler[int] = DistributedSampler(
        keys, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
    )
    sampler.set_epoch(epoch)
    order = list(sampler)
    for start in range(skip * batch_size, len(order) - batch_size + 1, batch_size):
        yield [(epoch, i) for i in order[start : start + batch_size]]
