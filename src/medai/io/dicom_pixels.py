"""DICOM pixel data: native data read straight from the file, compressed frames decoded
by pydicom's plugins (in threads when there are several), every failure an
:class:`ImageReadError` naming the file and, for multi-frame data, the frame.

Native (uncompressed) monochrome data with 8, 16 or 32 bits allocated is viewed
directly from the file's bytes, with the same unused-bit correction pydicom applies;
everything else (colour, palette, 1-bit, float pixel data, compressed syntaxes) goes
through :func:`pydicom.pixels.pixel_array`. Compressed frames are decoded one at a time
so a failure names its frame; the decoders release the GIL, so several frames are
decoded at once on a machine with several cores.

Decoders written in Rust (pylibjpeg-rle) report a corrupt stream by panicking; pyo3
turns the panic into ``PanicException``, which derives from :class:`BaseException` and
escapes ``except Exception``. It is caught here like any other decoder error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from medai.errors import ImageReadError
from medai.io._dicom_values import header_value
from medai.io._guard import PASS_THROUGH, describe, file_errors

__all__ = ["decode_frames", "decode_many"]

#: At most this many threads decode compressed frames.
MAX_DECODE_THREADS = 8

_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: Attributes pydicom's decoder reads; converted before frames are decoded in threads.
_DECODER_KEYWORDS = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
)


def _failure(path: Path, exc: BaseException, frame: int | None) -> ImageReadError:
    text = str(exc)
    cut = "less than expected" in text or "insufficient" in text
    where = "pixel data" if frame is None else f"frame {frame} of the pixel data"
    what = "is truncated" if cut else "cannot be decoded"
    return ImageReadError(path, f"{where} {what} ({describe(exc)}); the file is damaged")


def _int(ds: Dataset, keyword: str, default: int) -> int:
    value = header_value(ds, keyword)
    return default if value in (None, "") else int(value)


def _syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return syntax if isinstance(syntax, UID) and syntax.is_transfer_syntax else None


def _native_dtype(ds: Dataset, syntax: UID) -> tuple[np.dtype[Any], int] | None:
    """The dtype and bits stored of native monochrome data read as a plain view, or None."""
    if syntax.is_encapsulated:
        return None
    if header_value(ds, "PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    if _int(ds, "SamplesPerPixel", 1) != 1:
        return None
    allocated = _int(ds, "BitsAllocated", 0)
    stored = _int(ds, "BitsStored", allocated)
    signed = _int(ds, "PixelRepresentation", 0)
    if allocated not in (8, 16, 32) or not 1 <= stored <= allocated or signed not in (0, 1):
        return None
    if allocated == 8 and not syntax.is_little_endian:
        return None  # 8-bit OW big endian: pydicom swaps byte pairs
    order = "<" if syntax.is_little_endian else ">"
    return np.dtype(f"{order}{'i' if signed else 'u'}{allocated // 8}"), stored


def _pixel_bytes(ds: Dataset, path: Path, syntax: UID, needed: int) -> bytes | None:
    """The first ``needed`` bytes of the pixel data (read from the file when deferred)."""
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.value is None:
        if raw.length == _UNDEFINED_LENGTH or syntax == DeflatedExplicitVRLittleEndian:
            return None
        with path.open("rb") as handle:
            handle.seek(raw.value_tell)
            return handle.read(min(needed, raw.length))
    value = ds.get("PixelData")
    return value if isinstance(value, bytes) else None


def _native_frames(ds: Dataset, path: Path, syntax: UID) -> NDArray[Any] | None:
    """``(frames, rows, columns, 1)`` of native monochrome data, or None when pydicom is
    needed (another layout, or fewer bytes than the header needs: pydicom says why)."""
    layout = _native_dtype(ds, syntax)
    rows, columns = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    frames = _int(ds, "NumberOfFrames", 1)
    if layout is None or min(rows, columns, frames) < 1:
        return None
    dtype, stored = layout
    count = rows * columns * frames
    data = _pixel_bytes(ds, path, syntax, count * dtype.itemsize)
    if data is None or len(data) < count * dtype.itemsize:
        return None
    array = np.frombuffer(data, dtype=dtype, count=count).reshape(frames, rows, columns, 1)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    shift = 8 * dtype.itemsize - stored
    if shift:  # unused high bits: ignored, and the sign taken from bit `stored - 1`
        array = array.copy() if not array.flags.writeable else array
        np.left_shift(array, shift, out=array)
        np.right_shift(array, shift, out=array)
    return array


def _check_pixels(ds: Dataset, path: Path) -> None:
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        sop = getattr(ds.get("SOPClassUID"), "name", None) or "unknown SOP class"
        raise ImageReadError(path, f"DICOM file has no pixel data ({sop}); it is not an image")


def _as_4d(array: NDArray[Any], ds: Dataset, path: Path, frames: int) -> NDArray[Any]:
    """Pydicom's array as ``(frames, rows, columns, samples)`` in native byte order."""
    palette = ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    colour = int(ds.get("SamplesPerPixel", 1) or 1) > 1 or palette
    if colour and array.ndim == 3:
        array = array[np.newaxis]
    elif not colour and array.ndim in (2, 3):
        array = array.reshape(frames, *array.shape[-2:], 1)
    if array.ndim != 4:
        raise ImageReadError(path, f"unexpected pixel array shape {array.shape}")
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _palette(array: NDArray[Any], ds: Dataset, path: Path) -> NDArray[Any]:
    if ds.get("PhotometricInterpretation") != "PALETTE COLOR":
        return array
    with file_errors(path, "palette colour lookup table cannot be applied"):
        return np.asarray(pydicom.pixels.apply_color_lut(array, _little_endian_palette(ds)))


def _little_endian_palette(ds: Dataset) -> Dataset:
    """``ds`` with 16-bit palette tables byte-swapped to little endian when it was read
    from a big-endian file (pydicom reads non-segmented tables as little endian)."""
    if ds.original_encoding[1] is not False:
        return ds
    for colour in ("Red", "Green", "Blue"):
        data = ds.get(f"{colour}PaletteColorLookupTableData")
        descriptor = ds.get(f"{colour}PaletteColorLookupTableDescriptor")
        if data is None or descriptor is None or int(descriptor[2]) != 16:
            continue
        table = np.frombuffer(bytes(data), dtype=">u2").astype("<u2")
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.tobytes())
    return ds


def _decode(ds: Dataset, path: Path, frames: int, index: int | None) -> NDArray[Any]:
    """Pydicom's decoding of one frame (``index``) or of all frames (``None``)."""
    try:
        return np.asarray(pixel_array(ds, index=index))
    except PASS_THROUGH:
        raise
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        raise _failure(path, exc, index if frames > 1 else None) from exc


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under ``taskset``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextmanager
def _pool(tasks: int, threads: int | None) -> Iterator[Callable[..., Iterator[Any]]]:
    """``map`` over threads when there are several tasks and several threads allowed."""
    allowed = min(MAX_DECODE_THREADS, usable_cores()) if threads is None else threads
    workers = min(allowed, tasks)
    if workers <= 1:
        yield map
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medai-decode") as pool:
        yield pool.map


def _plan(ds: Dataset, path: Path) -> tuple[NDArray[Any] | None, int, bool]:
    """(native frames or None, number of frames, decode frame by frame)."""
    _check_pixels(ds, path)
    syntax = _syntax(ds)
    with file_errors(path, "unreadable pixel data attributes"):
        native = _native_frames(ds, path, syntax) if syntax is not None else None
        frames = max(_int(ds, "NumberOfFrames", 1), 1)
        encapsulated = syntax is not None and syntax.is_encapsulated
        if encapsulated and native is None:
            for keyword in _DECODER_KEYWORDS:  # convert now, not concurrently in threads
                ds.get(keyword)
            _ = ds.PixelData
    return native, frames, encapsulated


def decode_many(
    items: Sequence[tuple[Path, Dataset]], *, threads: int | None = None
) -> list[NDArray[Any]]:
    """The frames of every file, each ``(frames, rows, columns, samples)`` (RGB for colour).

    Native data is read directly; compressed frames are decoded in ``threads`` threads
    (by default one per usable core, at most :data:`MAX_DECODE_THREADS`).

    Raises:
        ImageReadError: If a file has no pixel data or a frame cannot be decoded; the
            message names the file, and the frame of a multi-frame file.
    """
    plans = [_plan(ds, path) for path, ds in items]
    jobs = [
        (i, index)
        for i, (native, frames, by_frame) in enumerate(plans)
        if native is None and by_frame
        for index in range(frames)
    ]

    def run(job: tuple[int, int]) -> NDArray[Any]:
        i, index = job
        path, ds = items[i]
        return _decode(ds, path, plans[i][1], index)

    decoded: dict[int, list[NDArray[Any]]] = {}
    with _pool(len(jobs), threads) as mapper:
        for (i, _index), frame in zip(jobs, mapper(run, jobs), strict=True):
            decoded.setdefault(i, []).append(frame)
    out = []
    for i, ((path, ds), (native, frames, by_frame)) in enumerate(zip(items, plans, strict=True)):
        if native is not None:
            out.append(native)
            continue
        with file_errors(path, "decoded pixel data do not fit the header"):
            array = np.stack(decoded[i]) if by_frame else _decode(ds, path, frames, None)
            out.append(_as_4d(_palette(array, ds, path), ds, path, frames))
    return out


def decode_frames(ds: Dataset, path: Path) -> NDArray[Any]:
    """All frames of one file as ``(frames, rows, columns, samples)`` (RGB for colour).

    Raises:
        ImageReadError: If there is no pixel data or it cannot be decoded.
    """
    return decode_many([(path, ds)])[0]
