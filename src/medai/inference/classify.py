"""Image → label or number with PyTorch: logits, several passes for uncertainty, and
the plan's learnt output settings (temperature, threshold, target scale).

Every task's outputs go through :func:`outputs_from_logits` (numpy, in
:mod:`medai.inference.outputs`, re-exported here), so training's validation, evaluation
and the exported bundle's torch-free runtime read a model's output the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from medai.inference.outputs import (
    ImagePrediction,
    case_uncertainty,
    decide,
    image_predictions,
    outputs_from_logits,
    shifted_inputs,
    tta_shifts,
)
from medai.preprocess.plan import Plan, UncertaintyMethod

__all__ = [
    "ImagePrediction",
    "case_uncertainty",
    "decide",
    "forward_logits",
    "member_logits",
    "outputs_from_logits",
    "predict_images",
    "tta_shifts",
]

F32 = NDArray[np.float32]


def forward_logits(
    net: nn.Module, images: F32, *, device: torch.device, batch_size: int = 8
) -> F32:
    """Logits ``(N, out)`` of ``images`` ``(N, C, *spatial)`` in eval mode, no gradient."""
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.as_tensor(images[start : start + batch_size], device=device)
            out.append(net(x).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 1), np.float32)


@contextmanager
def _dropout_on(net: nn.Module) -> Iterator[None]:
    """Eval mode everywhere except dropout layers (Monte Carlo dropout)."""
    net.eval()
    drops = [m for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not drops:
        raise ValueError(
            "MC dropout needs dropout layers, and this network has none: train with "
            "network.dropout > 0, or use target.uncertainty=tta"
        )
    for m in drops:
        m.train()
    try:
        yield
    finally:
        net.eval()


def member_logits(net: nn.Module, images: F32, plan: Plan, *, device: torch.device) -> F32:
    """Logits ``(M, N, out)`` from the plan's uncertainty method (M passes; M = 1 for
    ``none``). MC dropout is seeded from the plan's seed, so it replays."""
    method, passes = plan.target.uncertainty, plan.target.uncertainty_passes
    if method is UncertaintyMethod.NONE:
        return forward_logits(net, images, device=device)[None]
    if method is UncertaintyMethod.MC_DROPOUT:
        torch.manual_seed(plan.train.seed)
        with _dropout_on(net), torch.no_grad():
            members = []
            for _ in range(passes):
                x = torch.as_tensor(images, device=device)
                members.append(net(x).float().cpu().numpy())
        net.eval()
        return np.stack(members).astype(np.float32)
    shifted = shifted_inputs(images, plan.input.spatial_dims, passes)
    return np.stack([forward_logits(net, s, device=device) for s in shifted])


def predict_images(
    net: nn.Module, images: F32, plan: Plan, case_ids: list[str], *, device: torch.device
) -> list[ImagePrediction]:
    """Predict preprocessed inputs ``(N, C, *size)`` with the plan's output settings."""
    first = forward_logits(net, images, device=device)
    members = member_logits(net, images, plan, device=device)
    return image_predictions(first, members, plan, case_ids)
