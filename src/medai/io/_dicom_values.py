"""Fast reading of the few DICOM attributes a series read needs for every file.

pydicom converts a raw element into a value object on first access, with validation,
at some tens of microseconds per attribute; for the dozen numbers geometry, sorting
and decoding need that is a large share of reading a 200-file series. Here
single-byte-character numbers and codes (DS, IS, CS, UI) and binary integers (US, SS,
UL, SL) still in raw form are parsed straight from their bytes; anything else, and
anything that does not parse cleanly, goes through pydicom as before, so the values
and their failures are pydicom's.
"""

from __future__ import annotations

import struct
from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

__all__ = ["header_value"]

_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i"}
_NUMBER_TEXT = {"DS": float, "IS": int}
_CODE_TEXT = ("CS", "UI")


class _Unparsed:
    """Marker: leave this element to pydicom."""


_UNPARSED = _Unparsed()


@cache
def _tag_and_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword!r} is not a DICOM keyword")
    return tag, dictionary_VR(tag)


def _numbers(data: bytes, vr: str) -> Any:
    text = data.decode("ascii").strip(" \x00")
    if not text:
        return None
    convert = _NUMBER_TEXT[vr]
    values = [convert(part) for part in text.split("\\")]
    return values[0] if len(values) == 1 else values


def _binary(data: bytes, vr: str, little: bool) -> Any:
    code = _BINARY[vr]
    size = struct.calcsize(code)
    if not data:
        return None
    if len(data) % size:
        return _UNPARSED
    values = struct.unpack(f"{'<' if little else '>'}{len(data) // size}{code}", data)
    return values[0] if len(values) == 1 else list(values)


def _parse(elem: RawDataElement, vr: str) -> Any:
    data = elem.value
    if not isinstance(data, bytes):
        return _UNPARSED
    try:
        if vr in _NUMBER_TEXT:
            return _numbers(data, vr)
        if vr in _BINARY:
            return _binary(data, vr, bool(elem.is_little_endian))
        if vr in _CODE_TEXT:
            text = data.decode("ascii").rstrip(" \x00")
            return _UNPARSED if "\\" in text else text
    except (UnicodeDecodeError, ValueError, OverflowError):
        pass
    return _UNPARSED


def header_value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """The value of top-level attribute ``keyword`` in ``ds``, or ``default`` when absent.

    Numbers come back as ``float``/``int`` (a list when multi-valued), codes and UIDs
    as ``str``; an empty value is ``None``. Elements pydicom has already converted,
    other value representations, and values that do not parse are pydicom's
    (``ds.get``).
    """
    tag, vr = _tag_and_vr(keyword)
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None:
        return default
    if isinstance(elem, RawDataElement):
        if elem.VR not in (None, vr):  # the file's VR disagrees with the dictionary
            return ds.get(keyword, default)
        value = _parse(elem, vr)
        if value is not _UNPARSED:
            return value
    return ds.get(keyword, default)
