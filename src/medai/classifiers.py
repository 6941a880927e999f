"""MONAI classification networks (2D or 3D) with a dropout head and local-only weights.

:func:`build_classifier` builds DenseNet-121, ResNet-18/50 or EfficientNet-B0 for
``spatial_dims`` 2 or 3, optionally narrower (``width``) so a CPU can train one. The
final linear layer of every architecture is a :class:`DropoutLinear`: it drops its
*input features* with probability ``dropout`` whenever it is in train mode, so Monte
Carlo dropout is ``classifier_head(net).train()`` on an otherwise ``eval()`` network
(batch norm keeps its running statistics, only the head samples). It is the only
stochastic layer: DenseNet's per-layer dropout and EfficientNet's drop-connect are off.

Pretrained weights come only from a local file the user names; nothing is downloaded
(MONAI's ``pretrained=`` paths are never taken). The head may differ from the file's
(another number of classes): it then keeps its fresh initialisation, and says so in the
log. Any other missing, unexpected or mis-shaped parameter is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from medai.errors import ConfigError
from medai.preprocess.plan import Architecture

__all__ = [
    "CLASSIFIERS",
    "DropoutLinear",
    "build_classifier",
    "classifier_head",
    "load_classifier_weights",
]

log = logging.getLogger(__name__)

#: Narrowest and widest ``width`` accepted (1/16 keeps every layer at least 2 channels).
MIN_WIDTH, MAX_WIDTH = 1.0 / 16.0, 4.0

#: EfficientNet-B0's blocks, as MONAI's ``EfficientNetBN("efficientnet-b0")`` defines them.
_EFFICIENTNET_B0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]


#: The plan's architectures this module builds (the others segment).
CLASSIFIERS: tuple[Architecture, ...] = tuple(a for a in Architecture if not a.is_segmentation)


class DropoutLinear(nn.Linear):
    """A linear layer that applies dropout to its input features in train mode.

    Its parameters are named ``weight`` and ``bias`` like :class:`torch.nn.Linear`'s, so
    state dicts of the plain MONAI networks load unchanged.

    Args:
        in_features: Input features.
        out_features: Output features (logits).
        dropout: Probability of zeroing each input feature while training.
    """

    def __init__(self, in_features: int, out_features: int, *, dropout: float = 0.0) -> None:
        super().__init__(in_features, out_features)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropped = F.dropout(x, p=self.dropout, training=self.training)
        return F.linear(dropped, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.dropout}"


def classifier_head(net: nn.Module) -> nn.Linear:
    """The final linear layer producing the logits (for its initialisation or bias).

    Raises:
        ValueError: If ``net`` holds no linear layer.
    """
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    heads = [m for m in linears if isinstance(m, DropoutLinear)]
    if heads or linears:
        return (heads or linears)[-1]
    raise ValueError(f"{type(net).__name__} has no linear layer; it is not a classifier")


def build_classifier(
    architecture: Architecture | str,
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    dropout: float = 0.0,
    width: float = 1.0,
    weights: Path | None = None,
) -> nn.Module:
    """A MONAI classification network returning ``(batch, out_channels)`` logits.

    Args:
        architecture: A classifier :class:`~medai.preprocess.plan.Architecture` (or its value).
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: Image channels.
        out_channels: Logits (classes, or 1 for a binary or regression output).
        dropout: Dropout on the head's input features in train mode (MC dropout).
        width: Channel multiplier in ``[1/16, 4]``: DenseNet's initial features and
            growth rate, ResNet's ``widen_factor``, EfficientNet's width coefficient.
        weights: A local ``state_dict`` file (``torch.save``) to start from; read with
            ``weights_only=True``. The head may differ from the file's.

    Returns:
        The network, in train mode.

    Raises:
        ValueError: If an argument is out of range or names no architecture.
        ConfigError: If ``weights`` is missing, unreadable or does not fit the network.
    """
    arch = _architecture(architecture)
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"channels must be >= 1; got in={in_channels}, out={out_channels}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout}")
    if not MIN_WIDTH <= width <= MAX_WIDTH:
        raise ValueError(f"width must be in [{MIN_WIDTH}, {MAX_WIDTH}]; got {width}")
    net = _monai_classifier(arch, spatial_dims, in_channels, out_channels, width)
    _install_head(net, dropout)
    if weights is not None:
        load_classifier_weights(net, weights)
    return net


def _architecture(value: Architecture | str) -> Architecture:
    try:
        arch = Architecture(value)
    except ValueError:
        arch = None
    if arch not in CLASSIFIERS:
        choices = ", ".join(a.value for a in CLASSIFIERS)
        raise ValueError(f"architecture must be one of {choices}; got {value!r}") from None
    return arch


def _monai_classifier(
    arch: Architecture,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    width: float,
) -> nn.Module:
    from monai.networks import nets

    if arch is Architecture.DENSENET121:
        return nets.DenseNet121(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            init_features=max(2, round(64 * width)),
            growth_rate=max(2, round(32 * width)),
        )
    if arch in (Architecture.RESNET18, Architecture.RESNET50):
        build = nets.resnet18 if arch is Architecture.RESNET18 else nets.resnet50
        return build(
            pretrained=False,
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            num_classes=out_channels,
            widen_factor=width,
            conv1_t_stride=2,
        )
    from monai.networks.nets.efficientnet import efficientnet_params

    b0_width, b0_depth, b0_size, _, _ = efficientnet_params["efficientnet-b0"]
    return nets.EfficientNet(
        list(_EFFICIENTNET_B0_BLOCKS),
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        num_classes=out_channels,
        width_coefficient=b0_width * width,
        depth_coefficient=b0_depth,
        image_size=b0_size,
        dropout_rate=0.0,
        drop_connect_rate=0.0,
    )


def _head_name(net: nn.Module) -> str:
    head = classifier_head(net)
    return next(name for name, module in net.named_modules() if module is head)


def _install_head(net: nn.Module, dropout: float) -> None:
    """Replace the final ``nn.Linear`` by a :class:`DropoutLinear` holding its weights."""
    name = _head_name(net)
    old = net.get_submodule(name)
    if not isinstance(old, nn.Linear):  # pragma: no cover - classifier_head returns one
        raise TypeError(f"{name} is a {type(old).__name__}, not a linear layer")
    head = DropoutLinear(old.in_features, old.out_features, dropout=dropout)
    head.load_state_dict(old.state_dict())
    parent_name, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, attr, head)


def load_classifier_weights(net: nn.Module, weights: Path) -> None:
    """Load a local state-dict file into ``net``; only the head may differ.

    The head's parameters are loaded when their shapes match, else left at their
    initialisation (logged). A file holding ``{"state_dict": {...}}`` is unwrapped.

    Raises:
        ConfigError: If the file is missing or unreadable, or a parameter outside the
            head is missing, unexpected or of another shape.
    """
    state = _read_state_dict(Path(weights))
    own = net.state_dict()
    head = _head_name(net)
    head_keys = {f"{head}.weight", f"{head}.bias"}
    missing = sorted(set(own) - set(state) - head_keys)
    unexpected = sorted(set(state) - set(own) - head_keys)
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state) - head_keys)
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise ConfigError(_mismatch_message(weights, missing, unexpected, mismatched))
    skipped = sorted(
        k for k in head_keys if k in own and (k not in state or state[k].shape != own[k].shape)
    )
    chosen = {k: v for k, v in state.items() if k in own and k not in skipped}
    own.update(chosen)
    net.load_state_dict(own)
    if skipped:
        log.warning(
            "%s: classifier head %r not loaded (%s); it keeps its fresh initialisation",
            weights,
            head,
            ", ".join(_describe(k, state, own) for k in skipped),
        )
    log.info("loaded %d parameters from %s", len(chosen), weights)


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist; give a local state-dict file")
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe file
        raise ConfigError(
            f"weights file {path} could not be read as a state dict ({exc}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise ConfigError(
            f"weights file {path} holds a {type(data).__name__}, not a state dict of tensors; "
            "save one with torch.save(model.state_dict(), path)"
        )
    return data


def _describe(key: str, state: Mapping[str, torch.Tensor], own: Mapping[str, Any]) -> str:
    if key not in state:
        return f"{key} missing from the file"
    return f"{key} file {tuple(state[key].shape)} vs network {tuple(own[key].shape)}"


def _mismatch_message(
    path: Path, missing: list[str], unexpected: list[str], mismatched: list[str]
) -> str:
    parts = []
    for what, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("of another shape", mismatched),
    ):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            parts.append(f"{len(keys)} {what}: {'; '.join(keys[:5])}{more}")
    return (
        f"weights file {path} does not fit this network beyond its classifier head: "
        f"{' | '.join(parts)}; use weights of the same architecture, spatial_dims, "
        "in_channels and width"
    )
