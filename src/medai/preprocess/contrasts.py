"""Missing contrasts: a study that lacks some of the model's channels, declared.

A model trained with channel dropout (``train.shift.channel_dropout`` > 0; training
zeroes whole channels of the z-scored patch) predicts from any non-empty subset of its
channels. The missing ones must be *declared*: an empty channel that was not declared
is refused, so a failed series transfer is never silently read as "no FLAIR". A
declared missing channel is filled with zeros, which preprocessing (z-score inside the
brain; a constant channel has no spread) keeps at exactly zero: the value training's
dropout gives it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medai.errors import DatasetError
from medai.image import ScalarImage
from medai.preprocess.plan import Plan

__all__ = ["canonical_contrast", "complete_contrasts", "resolve_missing"]

#: Names that mean the same contrast (compared after lower-casing).
_SYNONYMS = {
    "t1w": "t1",
    "t1ce": "t1gd",
    "t1c": "t1gd",
    "t1+c": "t1gd",
    "t1-gd": "t1gd",
    "t2w": "t2",
    "t2-flair": "flair",
    "t2flair": "flair",
}


def canonical_contrast(name: str) -> str:
    """``"T1ce"``, ``"t1gd"`` and ``"T1c"`` → ``"t1gd"``; ``"T1w"`` → ``"t1"``; etc."""
    key = name.strip().lower()
    return _SYNONYMS.get(key, key)


def resolve_missing(channels: Sequence[str], missing: Sequence[str]) -> list[str]:
    """The plan's names of the declared ``missing`` contrasts, in channel order.

    Raises:
        DatasetError: If a name matches no channel, or every channel is declared missing.
    """
    by_name = {canonical_contrast(c): c for c in channels}
    unknown = [m for m in missing if canonical_contrast(m) not in by_name]
    if unknown:
        raise DatasetError(
            f"missing contrast {', '.join(map(repr, unknown))} is not one of the model's "
            f"channels ({', '.join(channels)}); name them as the model does"
        )
    wanted = {by_name[canonical_contrast(m)] for m in missing}
    if len(wanted) == len(channels):
        raise DatasetError(
            f"every channel ({', '.join(channels)}) is declared missing; at least one "
            "contrast is needed to predict"
        )
    return [c for c in channels if c in wanted]


def _empty(channel: np.ndarray) -> bool:
    """No signal: the same value everywhere (zero-filled or blank series)."""
    flat = channel.reshape(-1)
    return bool(flat.size == 0 or np.all(flat == flat[0]))


def complete_contrasts(
    image: ScalarImage,
    plan: Plan,
    *,
    missing: Sequence[str] = (),
    require_dropout: bool = True,
) -> ScalarImage:
    """The study as the model's full channel stack, missing contrasts zero-filled.

    ``image`` holds either all the plan's channels (the declared missing ones are
    zeroed whatever they hold) or only the present ones, in plan order. The result's
    ``meta`` gains ``contrasts_used`` and ``contrasts_missing`` (plan names), which the
    prediction's label map carries.

    Args:
        image: The study.
        plan: The model's plan (``channels``; ``train.shift.channel_dropout``).
        missing: Contrasts the study lacks (plan names or common synonyms).
        require_dropout: Refuse missing contrasts for a model trained without channel
            dropout (it never saw one; its predictions would not mean much).

    Raises:
        DatasetError: On an undeclared empty channel, a wrong channel count, an unknown
            or all-missing declaration, or a model trained without channel dropout.
    """
    channels = list(plan.channels)
    gone = resolve_missing(channels, missing)
    present = [c for c in channels if c not in gone]
    if gone and require_dropout and plan.train.shift.channel_dropout <= 0:
        raise DatasetError(
            f"this model was trained without channel dropout (train.shift.channel_dropout "
            f"= 0), so it cannot predict without {', '.join(gone)}; retrain it with "
            "train.shift.enabled=true train.shift.channel_dropout=0.2, or supply the contrast"
        )
    data = np.asarray(image.array, dtype=np.float32)
    if image.num_channels == len(channels):
        full = data.copy()
    elif image.num_channels == len(present):
        full = np.zeros((len(channels), *data.shape[1:]), dtype=np.float32)
        for k, name in enumerate(present):
            full[channels.index(name)] = data[k]
    else:
        declared = f" ({len(present)} present, {', '.join(gone)} declared missing)" if gone else ""
        raise DatasetError(
            f"image has {image.num_channels} channels; the model needs {len(channels)} "
            f"({', '.join(channels)}) in that order, or only the present ones{declared}; "
            "declare a contrast the study lacks as missing"
        )
    for name in gone:
        full[channels.index(name)] = 0.0
    empty = [c for c in present if _empty(full[channels.index(c)])]
    if empty:
        raise DatasetError(
            f"channel {', '.join(empty)} holds no signal (one value everywhere) but is not "
            f"declared missing; if the study lacks it, declare it (missing={empty!r}), "
            "else check the series"
        )
    meta = {**image.meta, "contrasts_used": present, "contrasts_missing": gone}
    return ScalarImage(full, image.affine, meta=meta)
