"""A quick look at one case: an axial slice of each channel with the label overlay.

Slices are shown in radiological convention (patient's left on the right of the
picture, anterior up) after reorienting to RAS, whatever the file's orientation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap

from medai.fsutil import atomic_path
from medai.image import Image, LabelMap, ScalarImage

__all__ = ["PANEL_PIXELS", "render_case_png"]

#: Width and height of one panel in pixels; the PNG is (channels × PANEL_PIXELS) × PANEL_PIXELS.
PANEL_PIXELS = 256
_DPI = 100
_COLOURS = ["#ffd700", "#1e90ff", "#ff3030", "#32cd32", "#ff00ff", "#00ffff", "#ff8c00"]


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


def _panel(axis: Any, data: np.ndarray, label: np.ndarray | None, title: str) -> None:
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
    if label is not None and np.any(label):
        values = np.unique(label[label != 0])
        index = np.searchsorted(values, label)  # 1.. for foreground values
        masked = np.ma.masked_where(label == 0, index)
        cmap = ListedColormap([_COLOURS[i % len(_COLOURS)] for i in range(len(values) + 1)])
        axis.imshow(
            masked[::-1].T,
            cmap=cmap,
            origin="lower",
            alpha=0.45,
            vmin=0,
            vmax=len(values),
            interpolation="nearest",
            aspect="auto",
        )
    axis.set_title(title, color="white", fontsize=9, pad=-12, loc="left")
    axis.set_axis_off()


def render_case_png(
    image: ScalarImage,
    label: LabelMap | None,
    path: str | Path,
    *,
    channel_names: Sequence[str] | None = None,
    slice_index: int | None = None,
) -> Path:
    """Write a PNG with one axial slice per channel, the label overlaid on each.

    Args:
        image: The case's channels.
        label: Its segmentation (on the image's grid), or ``None``.
        path: Output ``.png`` path (written atomically).
        channel_names: Panel titles; default ``channel 0``, ``channel 1``, ...
        slice_index: Axial slice (in RAS order); default the slice with the most
            foreground, or the middle slice when there is no label.

    Returns:
        ``path``. The picture is ``channels × 256`` by ``256`` pixels.

    Raises:
        ValueError: If the label is on another grid, the names do not match the
            channels, or the slice index is out of range.
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
    if label is not None and not label.same_grid(image):
        raise ValueError("label is not on the image's grid (shape or affine differ); resample it")
    data = _to_ras(image.array.astype(np.float32), image.affine)
    lab = _to_ras(label.array, label.affine)[0] if label is not None else None
    depth = data.shape[3]
    k = _slice_index(lab, depth) if slice_index is None else slice_index
    if not 0 <= k < depth:
        raise ValueError(f"slice_index {k} outside 0..{depth - 1}")
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
            _panel(axis, data[c, :, :, k], None if lab is None else lab[:, :, k], name)
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=_DPI, format="png", facecolor="black")
    finally:
        plt.close(fig)
    return path
