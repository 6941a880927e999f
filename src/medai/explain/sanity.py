"""Checks that a saliency map explains the model: parameter randomisation and pointing game.

:func:`randomisation_check` is the cascading model-parameter randomisation test of
Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018): layers are
re-initialised one by one from the output towards the input, and a map that still looks
like the trained model's map once the weights are random is explaining the image, not
the model. :func:`pointing_game` scores whether a map's peak falls on the finding
(Zhang et al., "Top-down Neural Attention by Excitation Backprop", 2016).

Example:
    >>> steps = randomisation_check(net, images, method="gradcam")  # doctest: +SKIP
    >>> steps[-1].spearman < 0.5  # all layers random: the map should have changed
    True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from medai.explain.saliency import SaliencyMethod, _Explainer

__all__ = [
    "LayerCheck",
    "PointingResult",
    "compute_map_similarity",
    "pointing_game",
    "randomisation_check",
]

log = logging.getLogger(__name__)

#: SSIM's default window side; smaller maps use their smallest odd side.
_SSIM_WINDOW = 7


@dataclass(frozen=True)
class LayerCheck:
    """Similarity to the trained maps once ``layer`` and every layer above it are random.

    Attributes:
        layer: Module name (as in ``named_modules()``) re-initialised at this step.
        spearman: Mean Spearman rank correlation over the images (0 for a constant map).
        ssim: Mean structural similarity over the images (``data_range=1``).
    """

    layer: str
    spearman: float
    ssim: float


@dataclass(frozen=True)
class PointingResult:
    """Pointing-game score.

    Attributes:
        hits: Cases whose map maximum lies inside the mask.
        n: Cases scored.
        rate: ``hits / n``.
        chance: The rate a uniformly random point would reach: the mean over cases of
            mask area / support area (the whole image when no support is given).
    """

    hits: int
    n: int
    rate: float
    chance: float


def compute_map_similarity(
    reference: NDArray[np.floating], other: NDArray[np.floating]
) -> tuple[float, float]:
    """Spearman rank correlation and SSIM (``data_range=1``) of two maps in ``[0, 1]``.

    A constant map carries no ranking: its correlation is reported as 0.

    Raises:
        ValueError: If the shapes differ or a side is shorter than 3 voxels.
    """
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps must have one shape; got {a.shape} and {b.shape}")
    side = min(a.shape)
    if side < 3:
        raise ValueError(f"maps need at least 3 voxels a side for SSIM; got shape {a.shape}")
    window = min(_SSIM_WINDOW, side if side % 2 else side - 1)
    ssim = float(structural_similarity(a, b, data_range=1.0, win_size=window))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0, ssim
    rho = float(spearmanr(a.ravel(), b.ravel()).statistic)
    return rho, ssim


def randomisation_check(
    net: nn.Module,
    images: list[torch.Tensor],
    *,
    method: SaliencyMethod | str,
    class_index: int | None = None,
    seed: int = 0,
    max_layers: int | None = None,
    target_layer: str | None = None,
) -> list[LayerCheck]:
    """Cascading parameter randomisation, from the output layer towards the input.

    The maps of the trained network are the reference. At step ``k`` a copy of the network
    has its ``k`` parameterised layers nearest the output (in the order the forward pass
    runs them) re-initialised with their default initialiser, and the maps are recomputed
    for the same class (the trained network's prediction when ``class_index`` is None).
    ``net`` itself is never modified, and the global random state is left as it was.

    Args:
        net: The trained classifier.
        images: ``(channels, *spatial)`` inputs, each side at least 3 voxels.
        method: Saliency method (:class:`~medai.explain.SaliencyMethod`), default layers.
        class_index: Class to explain; ``None`` = each image's predicted class.
        seed: Seed of the re-initialisation.
        max_layers: Stop after this many layers (``None`` = all of them).
        target_layer: The CAM methods' layer; ``None`` = the network's default.

    Returns:
        One :class:`LayerCheck` per step, output layer first.

    Raises:
        ValueError: If ``images`` is empty or ``max_layers`` is below 1.
    """
    if not images:
        raise ValueError("images is empty; give at least one image to compare maps on")
    if max_layers is not None and max_layers < 1:
        raise ValueError(f"max_layers must be >= 1 or None; got {max_layers}")
    trained = _Explainer(net, method=method, target_layer=target_layer, occlusion_mask_size=None)
    classes = [trained.predicted_class(image, class_index) for image in images]
    reference = [trained(image, class_index=c) for image, c in zip(images, classes, strict=True)]
    randomised = _Explainer(net, method=method, target_layer=target_layer, occlusion_mask_size=None)
    layers = _layers_output_first(randomised.model, images[0])
    if max_layers is not None:
        layers = layers[:max_layers]
    steps: list[LayerCheck] = []
    cuda = sorted({p.device.index or 0 for p in net.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):  # the caller's random state is restored
        torch.manual_seed(seed)
        for name in layers:  # cumulative: the layers above stay random
            _reinitialise(randomised.model.get_submodule(name))
            scores = [
                compute_map_similarity(ref, randomised(image, class_index=c))
                for image, c, ref in zip(images, classes, reference, strict=True)
            ]
            rho, ssim = np.mean(scores, axis=0)
            steps.append(LayerCheck(layer=name, spearman=float(rho), ssim=float(ssim)))
            log.debug("randomised down to %s: spearman %.3f, ssim %.3f", name, rho, ssim)
    return steps


def _layers_output_first(model: nn.Module, image: torch.Tensor) -> list[str]:
    """Modules holding parameters of their own, in reverse order of the forward pass."""
    owners = {
        module: name
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    }
    order: list[str] = []

    def record(module: nn.Module, _inputs: object, _output: object) -> None:
        if owners[module] not in order:
            order.append(owners[module])

    handles = [module.register_forward_hook(record) for module in owners]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(image.detach().to(device, torch.float32).unsqueeze(0))
    finally:
        for handle in handles:
            handle.remove()
    return order[::-1]


def _reinitialise(module: nn.Module) -> None:
    """Draw a module's parameters anew (its own initialiser; normal(0, 0.02) without one)."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    with torch.no_grad():
        for param in module.parameters(recurse=False):
            nn.init.normal_(param, mean=0.0, std=0.02)


def pointing_game(
    maps: Sequence[NDArray[np.floating]],
    masks: Sequence[NDArray[np.generic]],
    *,
    support: Sequence[NDArray[np.generic]] | None = None,
) -> PointingResult:
    """Count the maps whose maximum (the first, on ties) lies inside the case's mask.

    Args:
        maps: Saliency maps, one per case.
        masks: Target masks (nonzero = finding) on the maps' grids; none may be empty.
        support: Optional masks of where a point could fall (e.g. the brain), for the
            chance rate; the whole image when omitted.

    Raises:
        ValueError: If the sequences differ in length or are empty, shapes differ, a mask
            is empty, or a support has no voxel.
    """
    if len(maps) != len(masks) or (support is not None and len(support) != len(maps)):
        given = f"{len(maps)} maps, {len(masks)} masks"
        given += "" if support is None else f", {len(support)} supports"
        raise ValueError(f"maps, masks (and support) need one entry per case; got {given}")
    if not maps:
        raise ValueError("no cases: give at least one map and mask")
    hits, chances = 0, []
    for i, (heat, target) in enumerate(zip(maps, masks, strict=True)):
        values, inside = np.asarray(heat), np.asarray(target) != 0
        region = np.ones_like(inside) if support is None else np.asarray(support[i]) != 0
        if values.shape != inside.shape or region.shape != inside.shape:
            raise ValueError(
                f"case {i}: map {values.shape}, mask {inside.shape} and support "
                f"{region.shape} must have one shape"
            )
        if not inside.any():
            raise ValueError(
                f"case {i}: mask is empty; the pointing game scores cases with a target"
            )
        if not region.any():
            raise ValueError(f"case {i}: support is empty; give the region a point may fall in")
        hits += bool(inside.flat[int(np.argmax(values))])
        chances.append(np.count_nonzero(inside & region) / np.count_nonzero(region))
    n = len(maps)
    return PointingResult(hits=hits, n=n, rate=hits / n, chance=float(np.mean(chances)))
