"""The training recipe's small parts: loss, learning-rate schedule, seeding, RNG state.

Kept apart from the trainer's loop so each can be tested and replayed on its own; the
RNG state functions are what makes an interrupted run resume exactly.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from medai.preprocess.plan import LossKind

__all__ = ["build_loss", "lr_at", "rng_state", "seed_all", "set_rng_state"]


def lr_at(progress: float, *, base: float, warmup: float) -> float:
    """Learning rate at ``progress`` ∈ [0, 1]: linear warm-up, then cosine to 1 %."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return base * max(p / warmup, 0.01)
    frac = (p - warmup) / max(1.0 - warmup, 1e-9)
    return base * max(0.5 * (1.0 + math.cos(math.pi * frac)), 0.01)


def build_loss(kind: LossKind | str) -> nn.Module:
    """Batch Dice + BCE (or Dice + focal) on sigmoid region channels.

    Batch Dice pools voxels over the batch, so a patch without a region does not
    score 1 − 0 for any false-positive voxel (nnU-Net's choice for 3D).

    MONAI's ``DiceCELoss`` applies a *softmax* cross-entropy to multi-channel input
    even with ``sigmoid=True``, which is wrong for overlapping regions, so the BCE
    part is torch's ``BCEWithLogitsLoss``.
    """
    from monai.losses import DiceFocalLoss, DiceLoss

    try:
        loss = LossKind(kind)
    except ValueError:
        choices = " or ".join(repr(k.value) for k in LossKind)
        raise ValueError(f"loss must be {choices}; got {kind!r}") from None
    if loss is LossKind.DICE_FOCAL:
        return DiceFocalLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=True)
    dice = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=True)
    bce = nn.BCEWithLogitsLoss()

    class _DiceBCE(nn.Module):
        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return dice(logits, target) + bce(logits, target)

    return _DiceBCE()


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code draws from it
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
