"""A quick look at one case: an axial slice of each channel with the label overlay.

Slices are shown in radiological convention (patient's left on the right of the
picture, anterior up) after reorienting to RAS, whatever the file's orientation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from medai.errors import ConfigError, GeometryError
from medai.fsutil import atomic_path
from medai.image import Image, LabelMap, ScalarImage

__all__ = ["PANEL_PIXELS", "Overlay", "render_case_png"]


class Overlay(StrEnum):
    """How the label is drawn over the image."""

    CONTOUR = "contour"  # outlines; the contrast stays visible
    FILL = "fill"  # semi-transparent colour


#: Width and height of one panel in pixels; the PNG is (channels × PANEL_PIXELS) × PANEL_PIXELS.
PANEL_PIXELS = 256
_DPI = 100
#: Overlay colour of label value v: MSD order (1 oedema green, 2 non-enhancing red,
#: 3 enhancing yellow); 4 (BraTS enhancing) yellow too; further values cycle.
_COLOURS = ["#32cd32", "#ff3030", "#ffd700", "#ffd700", "#1e90ff", "#ff00ff", "#00ffff"]


def _colour(value: int) -> str:
    return _COLOURS[(int(value) - 1) % len(_COLOURS)]


def _to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(C, x, y, z)`` array reordered/flipped so the axes point R, A, S."""
    ornt = nib.orientations.io_orientation(affine)
    out = [nib.orientations.apply_orientation(a, ornt) for a in array]
    return np.stack(out)


def _slice_index(label: np.ndarray | None, depth: int) -> int:
    """The axial slice with the most foreground, else the middle one."""
    if label is not None and np.any(label):
        return int(np.argmax((label != 0).sum(axis=(0, 1))))
    return depth // 2


def _contours(axis: Any, label: np.ndarray) -> None:
    """Outline each label value (the contrast underneath stays visible)."""
    shown = label[::-1].T
    for value in np.unique(label[label != 0]):
        mask = (shown == value).astype(np.float32)
        axis.contour(mask, levels=[0.5], colors=[_colour(value)], linewidths=1.2)


def _panel(
    axis: Any, data: np.ndarray, label: np.ndarray | None, title: str, overlay: Overlay
) -> None:
    low, high = np.percentile(data, [0.5, 99.5]) if data.size else (0.0, 1.0)
    axis.imshow(
        data[::-1].T,
        cmap="gray",
        origin="lower",
        vmin=low,
        vmax=max(high, low + 1e-6),
        interpolation="nearest",
        aspect="auto",
    )
    if label is not None and np.any(label) and overlay is Overlay.CONTOUR:
        _contours(axis, label)
    elif label is not None and np.any(label):
        values = np.unique(label[label != 0])
        index = np.searchsorted(values, label) + 1  # 1.. for foreground values
        masked = np.ma.masked_where(label == 0, index)
        cmap = ListedColormap(["black"] + [_colour(v) for v in values])
        axis.imshow(
            masked[::-1].T,
            cmap=cmap,
            origin="lower",
            alpha=0.45,
            vmin=-0.5,
            vmax=len(values) + 0.5,
            interpolation="nearest",
            aspect="auto",
        )
    axis.text(
        0.03, 0.97, title, transform=axis.transAxes, color="white", fontsize=10, va="top", ha="left"
    )
    axis.set_axis_off()


def _legend(axis: Any, names: Mapping[int, str]) -> None:
    handles = [Patch(color=_colour(v), label=f"{v} {n}") for v, n in sorted(names.items()) if v]
    axis.legend(
        handles=handles,
        loc="lower right",
        fontsize=7,
        framealpha=0.4,
        labelcolor="white",
        facecolor="black",
        edgecolor="none",
    )


def render_case_png(
    image: ScalarImage,
    label: LabelMap | None,
    path: str | Path,
    *,
    channel_names: Sequence[str] | None = None,
    slice_index: int | None = None,
    label_names: Mapping[int, str] | None = None,
    overlay: Overlay | str = Overlay.CONTOUR,
) -> Path:
    """Write a PNG with one axial slice per channel, the label overlaid on each.

    Args:
        image: The case's channels.
        label: Its segmentation (on the image's grid), or ``None``.
        path: Output ``.png`` path (written atomically).
        channel_names: Panel titles; default ``channel 0``, ``channel 1``, ...
        slice_index: Axial slice (in RAS order); default the slice with the most
            foreground, or the middle slice when there is no label.
        label_names: Label value → name, for a colour legend on the last panel.
        overlay: ``"contour"`` (outlines; the contrast stays visible) or ``"fill"``
            (semi-transparent colour).

    Returns:
        ``path``. The picture is ``channels × 256`` by ``256`` pixels.

    Raises:
        ValueError: If the names do not match the channels or ``overlay`` is unknown.
        GeometryError: If the label is on another grid.
        ConfigError: If the slice index is out of range.
    """
    if not isinstance(image, Image):
        raise TypeError(f"image must be a ScalarImage; got {type(image).__name__}")
    names = (
        list(channel_names)
        if channel_names is not None
        else [f"channel {i}" for i in range(image.num_channels)]
    )
    if len(names) != image.num_channels:
        raise ValueError(f"channel_names has {len(names)} names for {image.num_channels} channels")
    style = Overlay(overlay)
    if label is not None and not label.same_grid(image):
        raise GeometryError(
            "label is not on the image's grid (shape or affine differ); resample it onto the "
            "image (or run `medai data check` to find such cases)"
        )
    data = _to_ras(image.array.astype(np.float32), image.affine)
    lab = _to_ras(label.array, label.affine)[0] if label is not None else None
    depth = data.shape[3]
    k = _slice_index(lab, depth) if slice_index is None else slice_index
    if not 0 <= k < depth:
        raise ConfigError(f"slice index {k} is outside 0..{depth - 1}; choose one in that range")
    inches = PANEL_PIXELS / _DPI
    fig, axes = plt.subplots(
        1,
        len(names),
        figsize=(inches * len(names), inches),
        dpi=_DPI,
        squeeze=False,
        facecolor="black",
    )
    try:
        fig.subplots_adjust(left=0, right=1, bottom=0, top=1, wspace=0, hspace=0)
        for c, (axis, name) in enumerate(zip(axes[0], names, strict=True)):
            _panel(axis, data[c, :, :, k], None if lab is None else lab[:, :, k], name, style)
        if label_names:
            _legend(axes[0][-1], label_names)
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=_DPI, format="png", facecolor="black")
    finally:
        plt.close(fig)
    return path
