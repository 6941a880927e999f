"""Turning whatever a damaged file makes a reader raise into :class:`ImageReadError`.

Readers parse bytes with libraries (pydicom and its decoders, nibabel, SimpleITK,
Pillow, tifffile) that signal a bad file with many exception types, and decoders
written in Rust (pylibjpeg-rle) panic: pyo3 turns the panic into ``PanicException``,
which derives from :class:`BaseException` and escapes ``except Exception``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medai.errors import ImageReadError, MedaiError

__all__ = ["PASS_THROUGH", "describe", "file_errors"]

#: Exceptions never turned into a read error: the user or the interpreter asked to stop.
#: (``MemoryError`` is turned into one: a damaged length or size field makes a parser
#: allocate whatever the file claims.)
PASS_THROUGH: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, GeneratorExit)

_MEMORY = (
    "ran out of memory; a damaged header can declare far more data than the file holds, "
    "and a whole volume may not fit in this machine's memory"
)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, with a useful message for ``MemoryError``."""
    if isinstance(exc, MemoryError):
        return f"MemoryError: {_MEMORY}"
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def file_errors(path: str | Path, what: str) -> Iterator[None]:
    """Turn any exception raised in the block into ``ImageReadError(path, ...)``.

    :class:`MedaiError` and :data:`PASS_THROUGH` propagate unchanged; anything else,
    ``BaseException`` subclasses such as pyo3's ``PanicException`` included, becomes
    ``ImageReadError(path, f"{what} ({type}: {message})")``.

    Example:
        >>> with file_errors(path, "not a readable NIfTI file"):  # doctest: +SKIP
        ...     data = nib.load(path).get_fdata()
    """
    try:
        yield
    except MedaiError:
        raise
    except PASS_THROUGH:
        raise
    except BaseException as exc:  # a decoder's panic derives from BaseException
        raise ImageReadError(path, f"{what} ({describe(exc)})") from exc
