"""Sliding-window inference with Gaussian blending and optional flip TTA (MONAI)."""

from __future__ import annotations

import itertools
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

__all__ = ["predict_probabilities"]


def predict_probabilities(
    model: nn.Module,
    image: NDArray[Any],
    *,
    patch_size: tuple[int, int, int],
    overlap: float = 0.5,
    tta_flips: bool = False,
    device: torch.device | str = "cpu",
    amp: bool = False,
    sw_batch_size: int = 2,
    members: bool = False,
) -> NDArray[np.float32]:
    """Sigmoid region probabilities ``(R, x, y, z)`` for a ``(C, x, y, z)`` image.

    With ``members=True`` the TTA members are returned unaveraged, ``(M, R, x, y, z)``
    (``M`` = 8 with flips, 1 without), for :func:`medai.inference.segment_image` to
    average and to measure their disagreement.

    Args:
        model: Network returning one logit per region.
        image: Preprocessed channels-first array.
        patch_size: Window size (the training patch).
        overlap: Window overlap fraction; windows are blended with a Gaussian.
        tta_flips: Average over the 8 flip combinations of the three axes.
        device: Where to run.
        amp: Use mixed precision (CUDA only).
        sw_batch_size: Windows per forward pass.
        members: Return every TTA member instead of their mean.
    """
    from monai.inferers import sliding_window_inference

    if image.ndim != 4:
        raise ValueError(f"image must be (C, x, y, z); got shape {image.shape}")
    dev = torch.device(device)
    x = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32, device=dev)[None]
    flips: list[tuple[int, ...]] = [()]
    if tta_flips:
        flips = [c for n in range(4) for c in itertools.combinations((2, 3, 4), n)]
    was_training = model.training
    model.eval()
    total = torch.zeros(())
    kept: list[torch.Tensor] = []
    use_amp = amp and dev.type == "cuda"
    with torch.no_grad(), torch.autocast(dev.type, enabled=use_amp):
        for dims in flips:
            inp = torch.flip(x, dims) if dims else x
            logits = cast(
                torch.Tensor,
                sliding_window_inference(
                    inp, patch_size, sw_batch_size, model, overlap=overlap, mode="gaussian"
                ),
            )
            prob = torch.sigmoid(logits.float())
            prob = torch.flip(prob, dims) if dims else prob
            if members:
                kept.append(prob[0].cpu())
            else:
                total = total + prob
    model.train(was_training)
    if members:
        return torch.stack(kept).numpy().astype(np.float32)
    return (total / len(flips))[0].cpu().numpy().astype(np.float32)
