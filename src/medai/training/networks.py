"""MONAI networks built from a :class:`~medai.preprocess.plan.NetworkPlan`."""

from __future__ import annotations

from torch import nn

from medai.preprocess.plan import NetworkPlan

__all__ = ["build_network", "patch_multiple"]


def patch_multiple(plan: NetworkPlan) -> int:
    """Patch sides must be a multiple of this (the network's total down-sampling)."""
    return plan.downsampling


def build_network(plan: NetworkPlan, *, in_channels: int, out_channels: int) -> nn.Module:
    """A 3D MONAI network: ``unet``, ``basicunet``, ``dynunet`` or ``segresnet``.

    Args:
        plan: Architecture, base width, depth, residual units, dropout.
        in_channels: Image channels.
        out_channels: Output logits (one per region).
    """
    from monai.networks import nets

    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"channels must be >= 1; got in={in_channels}, out={out_channels}")
    widths = [plan.base_channels * 2**i for i in range(plan.depth)]
    if plan.architecture == "unet":
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
    if plan.architecture == "basicunet":
        feats = [plan.base_channels * 2**i for i in range(5)] + [plan.base_channels]
        return nets.BasicUNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            features=tuple(feats),
            dropout=plan.dropout,
        )
    if plan.architecture == "dynunet":
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
