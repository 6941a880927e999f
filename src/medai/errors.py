"""Errors raised by medai.

Every error a user can meet says what went wrong, where (file, argument) and,
when there is one, what to do about it. All derive from :class:`MedaiError`, so a
command-line front end can catch them and print one clean line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedaiError(Exception):
    """Base class of every error medai raises on purpose."""


class ImageReadError(MedaiError, ValueError):
    """A file or folder could not be read as an image.

    Args:
        path: The file or folder that failed.
        reason: What is wrong with it, in words a user understands.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class GeometryError(MedaiError, ValueError):
    """Images or slices whose geometry does not fit together."""


class DatasetError(MedaiError, ValueError):
    """A dataset, manifest or case that is inconsistent or incomplete."""
