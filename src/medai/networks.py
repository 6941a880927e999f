"""MONAI networks built from a :class:`~medai.preprocess.plan.NetworkPlan`.

Below both training (which builds and trains them) and the PyTorch inference path
(which rebuilds one to load its weights), so neither imports the other for it."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from medai.preprocess.plan import Architecture, NetworkPlan, Plan, TaskKind

__all__ = ["build_network", "build_plan_network", "output_conv", "output_width", "patch_multiple"]


def patch_multiple(plan: NetworkPlan) -> int:
    """Patch sides must be a multiple of this (the network's total down-sampling)."""
    return plan.downsampling


def output_conv(net: nn.Module) -> nn.Module:
    """The layer producing the logits (DynUNet's output block, else the last conv)."""
    block = getattr(net, "output_block", None)
    if block is not None:
        return block.conv.conv
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)]
    if not convs:
        raise ValueError(f"{type(net).__name__} has no 3D convolution")
    return convs[-1]


def output_width(plan: Plan) -> int:
    """Logits a plan's network outputs: one per region (segmentation), one (binary,
    regression), one per class (multi-class, multi-label)."""
    if plan.task is TaskKind.SEGMENTATION:
        return len(plan.regions)
    if plan.task in (TaskKind.BINARY, TaskKind.REGRESSION):
        return 1
    return len(plan.classes)


def build_plan_network(plan: Plan) -> nn.Module:
    """The network ``plan`` describes, with the plan's input and output widths."""
    return build_network(
        plan.network,
        in_channels=len(plan.channels),
        out_channels=output_width(plan),
        spatial_dims=3 if plan.task is TaskKind.SEGMENTATION else plan.input.spatial_dims,
    )


def build_network(
    plan: NetworkPlan, *, in_channels: int, out_channels: int, spatial_dims: int = 3
) -> nn.Module:
    """The plan's MONAI network: a 3D segmentation network (``unet``, ``basicunet``,
    ``dynunet``, ``segresnet``) or a 2D/3D classifier (:mod:`medai.classifiers`).

    The output bias starts at ``logit(plan.output_prior)`` (the focal-loss "prior"
    initialisation): small tumours are rare voxels, and starting every sigmoid at 0.5
    wastes the first hundreds of steps of a short CPU budget on learning the background.

    Args:
        plan: Architecture, base width, depth, residual units, dropout.
        in_channels: Image channels.
        out_channels: Output logits (one per region; classifiers: per class).
        spatial_dims: Classifiers only: 2 or 3 (segmentation networks are 3D).
    """
    if not plan.architecture.is_segmentation:
        from medai.classifiers import build_classifier

        weights = Path(plan.weights) if plan.weights else None
        return build_classifier(
            plan.architecture.value,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            dropout=plan.dropout,
            width=plan.width,
            weights=weights,
        )
    net = _monai_network(plan, in_channels=in_channels, out_channels=out_channels)
    head = output_conv(net)
    bias = getattr(head, "bias", None)
    if isinstance(bias, torch.Tensor):
        nn.init.constant_(bias, math.log(plan.output_prior / (1.0 - plan.output_prior)))
    return net


def _monai_network(plan: NetworkPlan, *, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks import nets

    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"channels must be >= 1; got in={in_channels}, out={out_channels}")
    widths = [plan.base_channels * 2**i for i in range(plan.depth)]
    if plan.architecture is Architecture.UNET:
        return nets.UNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(widths),
            strides=(2,) * (plan.depth - 1),
            num_res_units=plan.residual_units,
            norm="instance",
            dropout=plan.dropout,
        )
    if plan.architecture is Architecture.BASICUNET:
        feats = [plan.base_channels * 2**i for i in range(5)] + [plan.base_channels]
        return nets.BasicUNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            features=tuple(feats),
            dropout=plan.dropout,
        )
    if plan.architecture is Architecture.DYNUNET:
        kernels = [[3, 3, 3]] * plan.depth
        strides = [[1, 1, 1]] + [[2, 2, 2]] * (plan.depth - 1)
        return nets.DynUNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernels,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=widths,
            dropout=plan.dropout or None,
            norm_name="instance",
            res_block=plan.residual_units > 0,
        )
    blocks = [1, 2, 2, 4][: min(plan.depth, 4)]
    return nets.SegResNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        init_filters=plan.base_channels,
        blocks_down=tuple(blocks),
        blocks_up=tuple([1] * (len(blocks) - 1)),
        dropout_prob=plan.dropout or None,
    )
