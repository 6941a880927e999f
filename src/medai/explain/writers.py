"""Saliency maps written out: as a NIfTI on the image's grid, or as a PNG overlay.

Both writes are atomic (:mod:`medai.fsutil`): a failed write leaves what was at the
target before. The PNG is drawn on matplotlib's Agg canvas without pyplot state.

Example:
    >>> pixels = torch.as_tensor(image.array)  # (channels, x, y, z)  # doctest: +SKIP
    >>> heat = saliency_map(net, pixels, method="gradcam")  # doctest: +SKIP
    >>> write_heatmap_nifti(heat, image, "heat.nii.gz")  # doctest: +SKIP
    >>> z = best_slice(heat)  # doctest: +SKIP
    >>> write_overlay_png(heat[..., z], image.numpy3d()[..., z], "heat.png")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray

from medai.evaluation.plots import figure_to_png
from medai.fsutil import atomic_write_bytes
from medai.image import ScalarImage
from medai.io import is_nifti, write_image

__all__ = ["best_slice", "write_heatmap_nifti", "write_overlay_png"]

#: Most opaque the heat layer gets (at map value 1); 0 leaves the background clear.
_MAX_ALPHA = 0.6
_MASK_COLOUR = "#00e5ff"


def write_heatmap_nifti(map: ArrayLike, image: ScalarImage, path: str | Path) -> Path:
    """Write ``map`` as a float32 NIfTI with ``image``'s affine, so viewers overlay it.

    Args:
        map: Values on the image's spatial grid: ``(x, y, z)``, or ``(x, y)`` for a 2D image.
        image: The image the map explains (its geometry is used, not its voxels).
        path: A ``.nii`` or ``.nii.gz`` file.

    Raises:
        ValueError: If the map is not on the image's grid, is not finite, or the suffix is
            not NIfTI.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"heat map path must end in .nii or .nii.gz; got {path.name!r}")
    values = np.asarray(map, dtype=np.float32)
    if values.ndim == 2 and image.is_2d:
        values = values[..., np.newaxis]
    if values.shape != image.shape:
        raise ValueError(
            f"map shape {values.shape} is not the image's grid {image.shape}; compute the map "
            "on the image's (x, y, z) array"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("map holds NaN or infinity; a heat map must be finite")
    heat = ScalarImage(values, image.affine.copy(), meta={"explains": image.meta.get("source")})
    return write_image(heat, path)


def write_overlay_png(
    map: ArrayLike,
    background: ArrayLike,
    path: str | Path,
    *,
    mask: ArrayLike | None = None,
    title: str | None = None,
) -> Path:
    """Draw a 2D map in 'inferno' over a grey background slice and write it as PNG.

    The heat is more opaque where the map is higher, so low values leave the anatomy
    visible. Arrays are indexed ``(i, j)`` with ``i`` running left to right and ``j``
    upwards, as :mod:`medai.evaluation.plots` draws slices. For a volume, pass one slice
    (:func:`best_slice` picks one).

    Args:
        map: Saliency values in ``[0, 1]`` (clipped), 2D.
        background: The image slice, same shape; shown between its 1st and 99th percentile.
        path: A ``.png`` file.
        mask: Optional finding mask on the slice, drawn as an outline.
        title: Optional figure title.

    Raises:
        ValueError: If the arrays are not 2D of one shape or the suffix is not ``.png``.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"overlay path must end in .png; got {path.name!r}")
    heat = np.clip(np.nan_to_num(np.asarray(map, dtype=np.float64)), 0.0, 1.0)
    pixels = np.asarray(background, dtype=np.float64)
    outline = None if mask is None else np.asarray(mask) != 0
    shapes = [heat.shape, pixels.shape] + ([] if outline is None else [outline.shape])
    if heat.ndim != 2 or len(set(shapes)) != 1:
        raise ValueError(
            f"map, background (and mask) must be 2D of one shape; got {shapes} "
            "(for a volume pass one slice, e.g. best_slice(map))"
        )
    fig = Figure(figsize=(4.4, 4.0))
    ax = fig.add_subplot()
    low, high = np.percentile(pixels, [1, 99])
    ax.imshow(pixels.T, cmap="gray", origin="lower", vmin=low, vmax=max(high, low + 1e-6))
    shown = ax.imshow(
        heat.T, cmap="inferno", origin="lower", vmin=0.0, vmax=1.0, alpha=_MAX_ALPHA * heat.T
    )
    if outline is not None and outline.any() and not outline.all():
        ax.contour(outline.T.astype(np.float64), levels=[0.5], colors=[_MASK_COLOUR], linewidths=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="saliency")
    ax.set(xticks=[], yticks=[], title=title or "")
    atomic_write_bytes(path, figure_to_png(fig))
    return path


def best_slice(map3d: NDArray[np.floating]) -> int:
    """The axial slice (last axis, ``z``) holding the most map mass; the first on ties.

    Raises:
        ValueError: If ``map3d`` is not 3D.
    """
    values = np.asarray(map3d, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"best_slice needs a 3D (x, y, z) map; got shape {values.shape}")
    return int(np.argmax(np.nan_to_num(values).sum(axis=(0, 1))))
