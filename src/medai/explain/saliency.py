"""Saliency maps of a classification network: Grad-CAM, Grad-CAM++ and occlusion.

The maps come from MONAI's :mod:`monai.visualize` (``GradCAM``, ``GradCAMpp``,
``OcclusionSensitivity``) and are returned on the input's grid as float32 in ``[0, 1]``,
1 where the evidence for the class is strongest (MONAI's own default normaliser maps the
maximum to 0; it is not used here).

Every map is computed on a private copy of the network in eval mode, because MONAI's
hooks stay registered on the module they wrap and its backward pass writes ``.grad``:
the caller's network keeps its mode, its parameters, its gradients and its hooks.

Example:
    >>> net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)  # doctest: +SKIP
    >>> heat = saliency_map(net, torch.rand(1, 64, 64), method="gradcam")  # doctest: +SKIP
    >>> heat.shape, heat.dtype  # doctest: +SKIP
    ((64, 64), dtype('float32'))
"""

from __future__ import annotations

import copy
import difflib
import logging
import warnings
from enum import StrEnum

import numpy as np
import torch
from monai.networks.nets import DenseNet, EfficientNet, ResNet
from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity
from numpy.typing import NDArray
from torch import nn

__all__ = ["SaliencyMethod", "default_target_layer", "saliency_map"]

log = logging.getLogger(__name__)

#: Occluded windows scored per forward pass.
_OCCLUSION_BATCH = 16
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class SaliencyMethod(StrEnum):
    """How a map is made: from gradients at a layer (CAM) or by occluding the input."""

    GRADCAM = "gradcam"
    GRADCAM_PP = "gradcam++"
    OCCLUSION = "occlusion"

    @property
    def uses_layer(self) -> bool:
        """True for the class-activation methods, which read a target layer."""
        return self is not SaliencyMethod.OCCLUSION


def default_target_layer(net: nn.Module) -> str:
    """The layer Grad-CAM reads for a MONAI classifier: its last block with spatial output.

    ``DenseNet`` (``DenseNet121`` …): ``class_layers.relu``, as in MONAI's own examples;
    ``ResNet`` (``resnet18``, ``resnet50`` …): ``layer4``; ``EfficientNet``
    (``EfficientNetBN``): ``_bn1``, the normalised head convolution (its ``_swish`` module is
    shared with the stem, so hooks on it would fire twice). 2D and 3D alike.

    Raises:
        ValueError: For any other network; pass ``target_layer`` explicitly then.
    """
    if isinstance(net, DenseNet):
        return "class_layers.relu"
    if isinstance(net, ResNet):
        return "layer4"
    if isinstance(net, EfficientNet):
        return "_bn1"
    raise ValueError(
        f"no default target layer for {type(net).__name__} (known: MONAI DenseNet, ResNet, "
        "EfficientNet); pass target_layer= the name of its last convolution block with "
        f"spatial output ({_layer_hint(net)})"
    )


def saliency_map(
    net: nn.Module,
    image: torch.Tensor,
    *,
    method: SaliencyMethod | str,
    class_index: int | None = None,
    target_layer: str | None = None,
    occlusion_mask_size: int | None = None,
) -> NDArray[np.float32]:
    """Where in ``image`` the network finds evidence for a class, scaled to ``[0, 1]``.

    Args:
        net: A classifier returning ``(batch, classes)`` logits; left untouched.
        image: One ``(channels, *spatial)`` input, 2D or 3D, as the network takes it.
        method: ``gradcam``, ``gradcam++`` or ``occlusion``.
        class_index: The class to explain; ``None`` = the predicted class. A single-logit
            (binary) network has class 0 only: its logit, the positive class.
        target_layer: Layer name (as in ``net.named_modules()``) for the CAM methods;
            ``None`` = :func:`default_target_layer`.
        occlusion_mask_size: Side in voxels of the occluded window (occlusion only);
            ``None`` = about a quarter of the smallest side, odd, at least 3.

    Returns:
        A float32 array of the image's spatial shape, min-max scaled (all zeros when the
        map is constant). For occlusion, the drop in the class probability when a window
        around each voxel is occluded.

    Raises:
        TypeError: If ``image`` is not a tensor.
        ValueError: If the image does not fit the network (channels, dimensions), the
            class or layer does not exist, or an option does not apply to the method.
    """
    explainer = _Explainer(
        net,
        method=method,
        target_layer=target_layer,
        occlusion_mask_size=occlusion_mask_size,
    )
    return explainer(image, class_index=class_index)


class _Explainer:
    """A private copy of a network, hooked once, that maps images with one method."""

    def __init__(
        self,
        net: nn.Module,
        *,
        method: SaliencyMethod | str,
        target_layer: str | None,
        occlusion_mask_size: int | None,
    ) -> None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module; got {type(net).__name__}")
        self.method = _as_method(method)
        if not self.method.uses_layer and target_layer is not None:
            raise ValueError("target_layer applies to gradcam and gradcam++, not to occlusion")
        if self.method.uses_layer and occlusion_mask_size is not None:
            raise ValueError(f"occlusion_mask_size applies to occlusion only, not to {method}")
        self.in_channels, self.spatial_dims = _input_shape(net)
        self.layer = _check_layer(net, target_layer) if self.method.uses_layer else None
        self.mask_size = occlusion_mask_size
        model = copy.deepcopy(net)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        for param in model.parameters():  # a frozen copy would give no gradients to hook
            param.requires_grad_(True)
        self.cam: GradCAM | None = None
        if self.layer is not None:
            cam_type = GradCAMpp if self.method is SaliencyMethod.GRADCAM_PP else GradCAM
            self.cam = cam_type(model, target_layers=self.layer, postprocessing=_identity)

    def __call__(self, image: torch.Tensor, *, class_index: int | None) -> NDArray[np.float32]:
        x = self._batch(image)
        logits, layer_shape = self._forward(x)
        index = _class_index(logits, class_index)
        if self.cam is not None:
            if layer_shape is None or len(layer_shape) != x.ndim:
                raise ValueError(
                    f"layer {self.layer!r} outputs shape {layer_shape}; Grad-CAM needs a "
                    f"layer with {self.spatial_dims}D spatial output ({_layer_hint(self.model)})"
                )
            with torch.enable_grad():
                raw = self.cam(x, class_idx=index).detach()
            self.model.zero_grad(set_to_none=True)
        else:
            raw = self._occlusion(x, logits, index)
        values = raw.cpu().numpy().astype(np.float64).reshape(x.shape[2:])
        return _normalise(values)

    def predicted_class(self, image: torch.Tensor, class_index: int | None = None) -> int:
        """``class_index`` checked against the outputs, or the class predicted for ``image``."""
        logits, _ = self._forward(self._batch(image))
        return _class_index(logits, class_index)

    def _batch(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            raise TypeError(
                f"image must be a torch.Tensor (channels, *spatial); got {type(image).__name__}"
            )
        if image.ndim != self.spatial_dims + 1:
            raise ValueError(
                f"image must have shape (channels, *spatial) with {self.spatial_dims} spatial "
                f"dimensions for this network; got shape {tuple(image.shape)}"
            )
        if image.shape[0] != self.in_channels:
            raise ValueError(
                f"image has {image.shape[0]} channels but the network takes "
                f"{self.in_channels}; give the channels it was trained on, channels first"
            )
        return image.detach().to(self.device, torch.float32).unsqueeze(0)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None]:
        """Logits, and the target layer's output shape, without gradients."""
        shapes: list[tuple[int, ...]] = []
        handle = None
        if self.layer is not None:
            module = self.model.get_submodule(self.layer)
            handle = module.register_forward_hook(
                lambda _m, _i, out: shapes.append(tuple(getattr(out, "shape", ())))
            )
        try:
            with torch.no_grad():
                logits = self.model(x)
        finally:
            if handle is not None:
                handle.remove()
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ValueError(
                f"net must return (batch, classes) logits to be explained; got {shape} "
                "(a segmentation network is not a classifier)"
            )
        return logits, (shapes[-1] if shapes else None)

    def _occlusion(self, x: torch.Tensor, logits: torch.Tensor, index: int) -> torch.Tensor:
        size = self.mask_size if self.mask_size is not None else _default_mask(x.shape[2:])
        if not isinstance(size, int) or not 1 <= size <= min(x.shape[2:]):
            raise ValueError(
                f"occlusion_mask_size must be an int from 1 to the smallest image side "
                f"({min(x.shape[2:])}); got {size!r}"
            )
        occlusion = OcclusionSensitivity(
            self.model,
            mask_size=size,
            n_batch=_OCCLUSION_BATCH,
            verbose=False,
            activate=_probabilities,
        )
        with torch.no_grad(), warnings.catch_warnings():
            # MONAI 1.6 indexes tensors with lists, which torch >= 2.9 warns about
            warnings.filterwarnings("ignore", "Using a non-tuple sequence", UserWarning)
            occluded, _ = occlusion(x)
        base = _probabilities(logits)[0, index]
        return base - torch.as_tensor(occluded)[0, index]


def _as_method(method: SaliencyMethod | str) -> SaliencyMethod:
    try:
        return SaliencyMethod(method)
    except ValueError:
        names = ", ".join(m.value for m in SaliencyMethod)
        raise ValueError(f"unknown saliency method {method!r}; use one of {names}") from None


def _input_shape(net: nn.Module) -> tuple[int, int]:
    """Input channels and spatial dimensions, read from the first convolution."""
    for module in net.modules():
        if isinstance(module, _CONVS):
            return module.in_channels, _CONVS.index(type(module)) + 1
    raise ValueError(
        f"{type(net).__name__} has no convolution; saliency maps need a convolutional network"
    )


def _check_layer(net: nn.Module, target_layer: str | None) -> str:
    layer = default_target_layer(net) if target_layer is None else target_layer
    names = [name for name, _ in net.named_modules() if name]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"target_layer {layer!r} is not a layer of {type(net).__name__}; {hint}"
            f"available layers: {_layer_hint(net)}"
        )
    return layer


def _layer_hint(net: nn.Module) -> str:
    """The layers two levels deep (any name from ``named_modules()`` is accepted)."""
    names = [name for name, _ in net.named_modules() if name and name.count(".") <= 1]
    return ", ".join(names) + " (or any deeper name from net.named_modules())"


def _class_index(logits: torch.Tensor, class_index: int | None) -> int:
    classes = int(logits.shape[1])
    if class_index is None:
        return int(logits[0].argmax())
    if isinstance(class_index, bool) or not isinstance(class_index, int | np.integer):
        raise TypeError(f"class_index must be an int or None; got {class_index!r}")
    if not 0 <= class_index < classes:
        raise ValueError(
            f"class_index {class_index} out of range: the network has {classes} output(s), "
            f"so use 0..{classes - 1}" + (" (0 = the positive logit)" if classes == 1 else "")
        )
    return int(class_index)


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes; sigmoid for a single-logit (binary) network."""
    return logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(1)


def _default_mask(spatial: torch.Size) -> int:
    return max(3, (min(spatial) // 4) | 1)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _normalise(values: NDArray[np.float64]) -> NDArray[np.float32]:
    """Min-max scale to ``[0, 1]``; a constant (or empty) map becomes all zeros."""
    if not np.all(np.isfinite(values)):
        log.warning("saliency map holds NaN or infinity (overflowing logits?); set to 0")
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12 * max(1.0, abs(high)):
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)
