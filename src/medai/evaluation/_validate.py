"""Input checks shared by the evaluation modules (private)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray


def as_labels(values: ArrayLike, *, name: str) -> NDArray[np.int64]:
    """A 1-D array of non-negative integer class labels."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per case); got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one case")
    if array.dtype == bool:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must hold finite integer class labels; got dtype {array.dtype}")
    labels = array.astype(np.int64)
    if not np.array_equal(labels, array):
        raise ValueError(f"{name} must hold whole-number class labels such as 0/1; got {array[:5]}")
    if labels.min() < 0:
        raise ValueError(f"{name} must hold labels >= 0; got minimum {labels.min()}")
    return labels


def as_scores(values: ArrayLike, *, name: str, n: int) -> NDArray[np.float64]:
    """Finite float scores: ``(n,)`` for binary or ``(n, K)`` for multi-class."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) or ({n}, n_classes) to match y_true; got {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinity; drop or fix those cases first")
    return array


def as_values(values: ArrayLike, *, name: str) -> NDArray[np.float64]:
    """A non-empty 1-D float array (NaN allowed; callers decide)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per case); got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; need at least one case")
    return array


def same_length(**arrays: Any) -> int:
    """The common first-axis length of named arrays, or a ValueError naming them."""
    lengths = {key: len(value) for key, value in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have one entry per case each; got lengths {lengths}")
    return next(iter(lengths.values()))


_E = TypeVar("_E", bound=StrEnum)


def check_average(average: str, allowed: tuple[_E, ...]) -> _E:
    """The member of ``allowed`` equal to ``average`` (a member or its string value)."""
    for option in allowed:
        if average == option:
            return option
    choices = tuple(option.value for option in allowed)
    raise ValueError(f"average must be one of {choices}; got {average!r}")


def check_probabilities(prob: NDArray[np.float64], *, name: str) -> None:
    if prob.min() < 0.0 or prob.max() > 1.0:
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; got range "
            f"[{prob.min():.3g}, {prob.max():.3g}] (apply a sigmoid/softmax first)"
        )
