"""The measures of a project's results: their table, one measure's robust scale, its histogram.

* **Scale per measure.** Each measure is ranked on a scale (:class:`Transform`): declared, or
  chosen from the data by :func:`choose_transform` — ``log1p`` when every value is ≥ 0, the
  octile skewness ``(Q⅞ + Q⅛ − 2·Q½) / (Q⅞ − Q⅛)`` is at least ``auto_skew`` (default 0.1;
  a lognormal with σ = 0.5 has 0.28, tumour volumes more) and log1p makes the values more
  symmetric; else ``linear``. Octiles, unlike moments, are not moved by the outliers being
  looked for. Below 0 ``log1p`` continues with slope 1 (its slope at 0), so an impossible
  negative value still counts as odd instead of vanishing.
* **Robust z.** ``z = (t(x) − median) / scale`` with
  ``scale = max(1.4826·MAD, mad_floor_rel·|median|, mad_floor_abs)`` on the transformed
  scale; 1.4826·MAD estimates the SD of normal data. The floor keeps a measure that is
  (nearly) constant over the project from turning every tiny difference into an infinite z:
  with the defaults (1 % of |median|, 10⁻⁶) a measure that is 5 everywhere puts 6 at
  z = 20, not ∞.
* **A point mass.** When at least ``point_mass_share`` of the values are one and the same
  number (an enhancing-tumour volume of exactly 0 in every low-grade glioma), that value is
  a normal state of its own, not the far tail of the others: it gets z = 0, and the centre,
  spread and scale come from the other values. A measure with fewer than 3 other values
  keeps the plain rule (a measure that is 0 everywhere makes any non-zero value odd).
* **A side.** A measure where only one direction is bad (the model's uncertainty: a
  confident result is not odd) is ``upper`` (or ``lower``): its z on the harmless side is 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "MAD_TO_SD",
    "MeasureTable",
    "RobustScale",
    "Side",
    "Transform",
    "bin_index",
    "bin_opacity",
    "choose_transform",
    "finite_values",
    "fit_scale",
    "histogram",
    "octile_skewness",
]

MAD_TO_SD = 1.4826  # 1 / Φ⁻¹(3/4): 1.4826·MAD estimates σ of normal data
Floats = NDArray[np.float64]


class Transform(StrEnum):
    """The scale a measure is ranked on; ``auto`` chooses from the data (module docstring)."""

    AUTO = "auto"
    LINEAR = "linear"
    LOG1P = "log1p"


class Side(StrEnum):
    """Which direction of a measure is odd; the other side's z is 0."""

    BOTH = "both"
    UPPER = "upper"  # only high values are odd, e.g. the model's uncertainty
    LOWER = "lower"


@dataclass(frozen=True, eq=False)
class MeasureTable:
    """Numeric measures of tasks: ``values[i, j]`` is measure ``measures[j]`` of ``tasks[i]``.

    NaN marks a missing measure; ±inf is refused.
    """

    tasks: tuple[str, ...]
    measures: tuple[str, ...]
    values: Floats

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.float64, ndmin=2)
        shape = (len(self.tasks), len(self.measures))
        if values.size == 0 and 0 in shape:
            values = np.empty(shape)
        if values.shape != shape:
            raise ValueError(
                f"values has shape {values.shape} but there are {shape[0]} tasks and "
                f"{shape[1]} measures; pass one row per task and one column per measure"
            )
        for name, keys in (("tasks", self.tasks), ("measures", self.measures)):
            twice = sorted(k for k, n in Counter(keys).items() if n > 1)
            if twice:
                raise ValueError(f"{name} has duplicates {twice}; make the keys unique")
        if np.isinf(values).any():
            raise ValueError("values contain ±inf; use NaN for a missing measure")
        values.flags.writeable = False
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "measures", tuple(self.measures))
        object.__setattr__(self, "values", values)

    @classmethod
    def from_records(cls, records: Mapping[str, Mapping[str, float | None]]) -> MeasureTable:
        """A table from ``{task: {measure: value}}``; absent or ``None`` values become NaN."""
        measures = tuple(sorted({m for row in records.values() for m in row}))
        values = [
            [np.nan if row.get(m) is None else float(row[m]) for m in measures]  # type: ignore[arg-type]
            for row in records.values()
        ]
        return cls(tuple(records), measures, np.array(values, dtype=np.float64))

    def column(self, measure: str) -> Floats:
        """The values of one measure (NaN where missing), or all NaN if the table lacks it."""
        if measure not in self.measures:
            return np.full(len(self.tasks), np.nan)
        return self.values[:, self.measures.index(measure)]


def _forward(x: Floats, transform: Transform) -> Floats:
    if transform is Transform.LOG1P:
        return np.where(x >= 0, np.log1p(np.maximum(x, 0)), x)
    return x


def _inverse(y: float, transform: Transform) -> float:
    return math.expm1(y) if transform is Transform.LOG1P and y >= 0 else y


def finite_values(values: ArrayLike) -> Floats:
    """The finite values of ``values``, flattened."""
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def octile_skewness(values: ArrayLike) -> float:
    """``(Q⅞ + Q⅛ − 2·Q½) / (Q⅞ − Q⅛)`` of the finite values: 0 when symmetric, in [−1, 1].

    NaN with fewer than 3 values or no spread between the octiles.
    """
    x = finite_values(values)
    if x.size < 3:
        return math.nan
    low, mid, high = np.quantile(x, [0.125, 0.5, 0.875])
    return float((high + low - 2 * mid) / (high - low)) if high > low else math.nan


def choose_transform(values: ArrayLike, *, auto_skew: float = 0.1) -> Transform:
    """``LOG1P`` for right-skewed non-negative values that log1p makes more symmetric.

    The rule: every finite value ≥ 0, octile skewness ≥ ``auto_skew`` and |octile
    skewness| of ``log1p(values)`` smaller than that of the values; else ``LINEAR``.
    """
    x = finite_values(values)
    if x.size < 3 or x.min() < 0:
        return Transform.LINEAR
    raw, logged = octile_skewness(x), octile_skewness(np.log1p(x))
    if not raw >= auto_skew or not abs(logged) < raw:  # NaN compares False
        return Transform.LINEAR
    return Transform.LOG1P


@dataclass(frozen=True)
class RobustScale:
    """Centre and spread of one measure on its transformed scale.

    Attributes:
        measure: The measure's name.
        transform: ``LINEAR`` or ``LOG1P`` (never ``AUTO`` once fitted).
        median: Median of the transformed values.
        scale: ``max(1.4826·MAD, floors)`` of the transformed values; > 0.
        n: Number of finite values it was fitted on.
        source: ``"project"`` or ``"reference"``.
        floored: Whether a floor, not the MAD, set ``scale``.
        mass: The value holding a point mass (z = 0 there; the rest set the scale), or None.
        mass_share: The share of the fitted values at ``mass`` (0 without one).
        side: Which direction is odd; z on the other side is 0.
    """

    measure: str
    transform: Transform
    median: float
    scale: float
    n: int
    source: str
    floored: bool
    mass: float | None = None
    mass_share: float = 0.0
    side: Side = Side.BOTH

    @property
    def centre(self) -> float:
        """The median back on the measure's own scale (what the reasons quote)."""
        return _inverse(self.median, self.transform)

    def z(self, values: ArrayLike) -> Floats:
        """Robust z of ``values`` (NaN stays NaN)."""
        x = np.asarray(values, dtype=np.float64)
        z = (_forward(x, self.transform) - self.median) / self.scale
        if self.mass is not None:
            z = np.where(x == self.mass, 0.0, z)
        if self.side is Side.UPPER:
            z = np.where(z < 0, 0.0, z)
        elif self.side is Side.LOWER:
            z = np.where(z > 0, 0.0, z)
        return z


def fit_scale(
    values: ArrayLike,
    *,
    measure: str = "",
    transform: Transform | str = Transform.AUTO,
    source: str = "project",
    auto_skew: float = 0.1,
    mad_floor_rel: float = 0.01,
    mad_floor_abs: float = 1e-6,
    point_mass_share: float = 0.2,
    side: Side | str = Side.BOTH,
) -> RobustScale:
    """Median and floored 1.4826·MAD of the finite ``values`` (module docstring for the rules).

    Raises:
        ValueError: If no value is finite, or ``transform`` is not a :class:`Transform`.
    """
    x = finite_values(values)
    if x.size == 0:
        raise ValueError(f"measure {measure!r}: no finite values to fit a scale on")
    n = int(x.size)
    mass, share = _point_mass(x, point_mass_share)
    if mass is not None:
        x = x[x != mass]
    kind = Transform(transform)
    if kind is Transform.AUTO:
        kind = choose_transform(x, auto_skew=auto_skew)
    t = _forward(x, kind)
    median = float(np.median(t))
    mad_sd = MAD_TO_SD * float(np.median(np.abs(t - median)))
    floor = max(mad_floor_rel * abs(median), mad_floor_abs)
    scale = max(mad_sd, floor)
    return RobustScale(
        measure, kind, median, scale, n, source, mad_sd < floor, mass, share, Side(side)
    )


def _point_mass(x: Floats, share: float) -> tuple[float | None, float]:
    """The most frequent value and its share, when it holds at least ``share`` of ``x`` and
    leaves 3 or more other values; else ``(None, 0.0)``."""
    found, counts = np.unique(x, return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] < 2 or counts[top] < share * x.size or x.size - counts[top] < 3:
        return None, 0.0
    return float(found[top]), float(counts[top] / x.size)


def histogram(
    values: ArrayLike, bins: int | Sequence[float] = 20
) -> tuple[Floats, NDArray[np.int64]]:
    """Counts of the finite ``values`` in ``bins`` (a count or edges); ``(edges, counts)``.

    Raises:
        ValueError: If ``bins`` is a count below 1.
    """
    if isinstance(bins, int) and bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    counts, edges = np.histogram(finite_values(values), bins=bins)
    return edges.astype(np.float64), counts.astype(np.int64)


def bin_opacity(counts: ArrayLike) -> Floats:
    """Opacity (= luminance) per bin in [0, 1]: ``log1p(count) / log1p(max count)``, 0 if empty.

    The log keeps a bin with one value visible next to a bin with hundreds.
    """
    c = np.asarray(counts, dtype=np.float64)
    if (c < 0).any():
        raise ValueError("counts must not be negative")
    top = float(c.max()) if c.size else 0.0
    return np.log1p(c) / np.log1p(top) if top > 0 else np.zeros_like(c)


def bin_index(edges: ArrayLike, value: float) -> int | None:
    """The bin of ``value`` (the last bin includes its right edge), or None if outside."""
    e = np.asarray(edges, dtype=np.float64)
    if not np.isfinite(value) or e.size < 2 or value < e[0] or value > e[-1]:
        return None
    return min(int(np.searchsorted(e, value, side="right")) - 1, e.size - 2)
