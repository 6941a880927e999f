"""Small numeric helpers shared by the feature families."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["bbox_crop", "safe_div", "safe_divide"]


def safe_div(num: float, den: float) -> float:
    """``num / den`` as a float, NaN when the denominator is 0 or not finite."""
    num, den = float(num), float(den)
    if den == 0 or not math.isfinite(den) or not math.isfinite(num):
        return math.nan
    return num / den


def safe_divide(num: NDArray[Any], den: NDArray[Any]) -> NDArray[np.float64]:
    """Element-wise ``num / den`` with NaN where ``den`` is 0."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, np.float64))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def bbox_crop(mask: NDArray[np.bool_], *arrays: NDArray[Any], pad: int = 1) -> list[NDArray[Any]]:
    """Crop ``mask`` and ``arrays`` to the mask's bounding box grown by ``pad`` (zero-filled)."""
    idx = np.nonzero(mask)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    out = [mask[box], *(a[box] for a in arrays)]
    if pad:
        out = [np.pad(a, pad) for a in out]
    return out
