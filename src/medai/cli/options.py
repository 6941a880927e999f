"""Checks of command-line values that the library does not see as such.

Each raises a :class:`~medai.errors.ConfigError` naming the option, the value and what
is accepted, before any slow work starts.
"""

from __future__ import annotations

import re

from medai.data import Split
from medai.errors import ConfigError

__all__ = ["parse_device", "parse_eval_split"]

_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps")


def parse_device(device: str | None) -> str | None:
    """``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (``None``: the default).

    Raises:
        ConfigError: For any other value.
    """
    if device is None:
        return None
    text = device.strip().lower()
    if not _DEVICE.fullmatch(text):
        raise ConfigError(f"--device {device!r}: use cpu, cuda, cuda:N (e.g. cuda:1) or mps")
    return text


def parse_eval_split(split: str) -> Split:
    """``--split`` of a command that scores a model: any split but ``train``.

    Raises:
        ConfigError: If ``split`` names no split, or names the training split.
    """
    chosen = Split.parse(split)
    if chosen is Split.TRAIN:
        raise ConfigError(
            "--split train would score the model on its own training cases; "
            "use test, validation or external"
        )
    return chosen
