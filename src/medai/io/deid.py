"""De-identification of DICOM files: the PS3.15 Annex E basic profile, with keyed pseudonyms.

The action table (``deid_profile.csv`` next to this module) encodes the basic profile
column of PS3.15 Table E.1-1 (2023 edition, ~590 rows, repeating groups included); rows
marked ``medai`` are not in that column (some come from older editions) and are extra
removals or UID replacements. Choices where the standard leaves one open, applied the
same way everywhere (sequences included):

* ``X`` removes; ``Z`` and ``X/Z`` empty the value; ``D``, ``Z/D``, ``X/D``, ``X/Z/D`` and
  ``C`` put a dummy of the right VR (binary VRs get a zero-length value); ``U`` maps
  each UID to ``2.25.<n>`` where ``n`` is a UUID built from an HMAC of the UID under
  the project key (same key, same mapping).
* A sequence under ``X/Z/U*`` (references to images) is kept and cleaned item by item,
  so references stay valid; any other replaced sequence becomes empty.
* Dates (DA, and the date part of DT) are shifted by a per-patient number of days drawn
  from the key and the original Patient ID (Retain Longitudinal Temporal Information
  with Modified Dates, DCM 113107); times (TM) are kept so intervals survive.
  Patient's Birth Date is emptied, never shifted.
* Patient ID and Patient's Name become a keyed pseudonym of the original Patient ID.
* Private elements are removed unless ``(creator, element)`` is allow-listed.
* Pixel data is never touched.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import functools
import hashlib
import hmac
import io
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from medai.errors import ConfigError

__all__ = [
    "KEY_ENV_VAR",
    "Change",
    "check_key",
    "deidentify_dataset",
    "deidentify_uid",
    "generate_key",
    "load_key",
    "profile_action",
]

log = logging.getLogger(__name__)

KEY_ENV_VAR = "MEDAI_DEID_KEY"
_MIN_KEY_BYTES = 16
_MAX_SHIFT_DAYS = 3650
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_PN = "ANONYMOUS"
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_DUMMY_ACTIONS = frozenset({"D", "Z/D", "X/D", "X/Z/D", "C"})
_EMPTY_ACTIONS = frozenset({"Z", "X/Z"})
_METHOD = "medai deid: PS3.15 E basic profile, shifted dates, keyed UIDs"
_METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
_SAFE_PRIVATE_CODE = ("113111", "Retain Safe Private Option")

AllowPrivate = Iterable[tuple[str, int]]


@dataclass(frozen=True)
class Change:
    """One change made to one attribute; never holds an original identifying value.

    Attributes:
        file: The file (relative to the input root) or dataset label.
        path: Where, e.g. ``(0008,1140)[0].(0008,1155)``.
        keyword: The attribute keyword (empty for private elements).
        action: The action applied (``X``, ``Z``, ``D``, ``U``, ``shift``, ``pseudonym``, ``set``).
        old: A keyed hash of the old value (``hmac:<16 hex>``), ``present`` or empty.
        new: The new value (a replacement, never the original).
    """

    file: str
    path: str
    keyword: str
    action: str
    old: str
    new: str


# --------------------------------------------------------------------------- profile


@functools.cache
def _profile() -> tuple[dict[int, str], tuple[tuple[int, int, str], ...]]:
    """The action table: exact tags, and (mask, value, action) for repeating groups."""
    text = resources.files("medai.io").joinpath("deid_profile.csv").read_text("utf-8")
    exact: dict[int, str] = {}
    masks: list[tuple[int, int, str]] = []
    for row in csv.DictReader(io.StringIO(text)):
        tag, action = row["tag"], row["action"]
        if "x" in tag:
            mask = int("".join("0" if c == "x" else "F" for c in tag), 16)
            masks.append((mask, int(tag.replace("x", "0"), 16), action))
        else:
            exact[int(tag, 16)] = action
    return exact, tuple(masks)


def profile_action(tag: int) -> str | None:
    """The basic-profile action code for a (non-private) tag, or None when not listed.

    Example:
        >>> profile_action(0x00100010)
        'Z'
    """
    exact, masks = _profile()
    if tag in exact:
        return exact[tag]
    for mask, value, action in masks:
        if tag & mask == value:
            return action
    return None


# --------------------------------------------------------------------------- keys


def generate_key() -> str:
    """A fresh random project key (64 hex characters)."""
    return secrets.token_hex(32)


def check_key(key: str | bytes) -> bytes:
    """The key as bytes, after checking its type and length (≥ 16 bytes)."""
    if isinstance(key, str):
        key = key.strip().encode("utf-8")
    if not isinstance(key, bytes):
        raise TypeError(f"key must be str or bytes, got {type(key).__name__}")
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(
            f"de-identification key is too short ({len(key)} bytes); use at least "
            f"{_MIN_KEY_BYTES}, e.g. one made by `medai deid --generate-key --key-file F`"
        )
    return key


def load_key(key_file: str | Path | None = None) -> bytes:
    """Read the project key from ``key_file``, else from the ``MEDAI_DEID_KEY`` variable.

    Raises:
        ConfigError: No key anywhere, or a key that is too short; the message says what
            to do.
        FileNotFoundError: ``key_file`` does not exist.
    """
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"key file {path} not found; create one with "
                f"`medai deid IN OUT --generate-key --key-file {path}`"
            )
        return check_key(path.read_text(encoding="utf-8"))
    env = os.environ.get(KEY_ENV_VAR)
    if env:
        return check_key(env)
    raise ConfigError(
        "no de-identification key: pass --key-file F (a file holding the project's "
        f"secret key) or set {KEY_ENV_VAR}; to create a key, add --generate-key. Keep the "
        "key secret and reuse it for the whole project, so that UIDs, pseudonyms and date "
        "shifts stay consistent"
    )


def _digest(key: bytes, purpose: str, value: str | bytes) -> bytes:
    data = value if isinstance(value, bytes) else value.encode("utf-8")
    return hmac.new(key, purpose.encode("ascii") + b"\x00" + data, hashlib.sha256).digest()


def deidentify_uid(uid: str, *, key: str | bytes) -> str:
    """The replacement of one UID: ``2.25.`` + a keyed, UUID-shaped integer (≤ 44 chars).

    Example:
        >>> deidentify_uid("1.2.3", key="0123456789abcdef").startswith("2.25.")
        True
    """
    raw = bytearray(_digest(check_key(key), "uid", uid.strip())[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # UUID version 8 (custom)
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return f"2.25.{int.from_bytes(raw, 'big')}"


# --------------------------------------------------------------------------- one dataset


@dataclass
class _Ctx:
    key: bytes
    file: str
    shift: dt.timedelta
    pseudonym: str
    allow: frozenset[tuple[str, int]]
    changes: list[Change] = field(default_factory=list)

    def record(self, path: str, elem: DataElement, action: str, old: object, new: str) -> None:
        self.changes.append(Change(self.file, path, elem.keyword, action, self.hash(old), new))

    def hash(self, value: object) -> str:
        if value is None or value == "" or value == b"":
            return ""
        if isinstance(value, Sequence):
            return "present"
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        return "hmac:" + _digest(self.key, "audit", raw)[:8].hex()


def _patient_seed(ds: Dataset) -> str:
    for keyword in ("PatientID", "PatientName"):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return value
    return ""


def _make_ctx(ds: Dataset, key: bytes, file: str, allow: AllowPrivate) -> _Ctx:
    seed = _patient_seed(ds)
    days = int.from_bytes(_digest(key, "date-shift", seed)[:8], "big") % _MAX_SHIFT_DAYS + 1
    pseudonym = "ANON" + _digest(key, "patient", seed)[:6].hex().upper()
    allowed = frozenset((str(c).strip(), int(e) & 0xFF) for c, e in allow)
    return _Ctx(key, file, dt.timedelta(days=-days), pseudonym, allowed)


def deidentify_dataset(
    ds: Dataset,
    *,
    key: str | bytes,
    allow_private: AllowPrivate = (),
    file_label: str = "",
) -> tuple[Dataset, list[Change]]:
    """De-identify a copy of ``ds`` with the basic profile; ``ds`` itself is not changed.

    Args:
        ds: The dataset (its ``file_meta``, when present, is cleaned too).
        key: The project's secret key (≥ 16 bytes); same key, same output.
        allow_private: ``(private creator, element byte)`` pairs to keep, e.g.
            ``[("SIEMENS CSA HEADER", 0x10)]``; every other private element goes.
        file_label: Name recorded in each :class:`Change`.

    Returns:
        The de-identified copy and the list of changes made.
    """
    ctx = _make_ctx(ds, check_key(key), file_label, allow_private)
    out = copy.deepcopy(ds)
    _clean(out, ctx, "")
    meta = getattr(out, "file_meta", None)
    if isinstance(meta, FileMetaDataset):
        _clean(meta, ctx, "")
    preamble = getattr(out, "preamble", None)
    if preamble and any(preamble):  # a preamble may carry another format's header
        out.preamble = bytes(128)
        ctx.changes.append(Change(file_label, "preamble", "", "Z", ctx.hash(preamble), ""))
    _mark(out, ctx)
    return out, ctx.changes


def _tag_str(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _clean(ds: Dataset, ctx: _Ctx, prefix: str) -> None:
    _drop_private(ds, ctx, prefix)
    for elem in list(ds):
        path = prefix + _tag_str(elem.tag)
        if elem.tag.is_private:
            if elem.VR == "SQ":
                _clean_items(elem, ctx, path)
            continue
        action = profile_action(elem.tag)
        if elem.tag.element == 0 and elem.tag.group != 0x0002:
            action = "X"  # retired group length: stale once elements are removed
        if elem.VR == "SQ":
            _clean_sequence(ds, elem, action, ctx, path)
        elif action == "X":
            ctx.record(path, elem, "X", elem.value, "")
            del ds[elem.tag]
        elif (action is not None and action != "K") or elem.VR in ("DA", "DT"):
            _replace(elem, action, ctx, path)


def _clean_items(elem: DataElement, ctx: _Ctx, path: str) -> None:
    for i, item in enumerate(elem.value):
        _clean(item, ctx, f"{path}[{i}].")


def _clean_sequence(
    ds: Dataset, elem: DataElement, action: str | None, ctx: _Ctx, path: str
) -> None:
    if action in (None, "K", "U", "X/Z/U*"):
        _clean_items(elem, ctx, path)
    elif action == "X":
        ctx.record(path, elem, "X", elem.value, "")
        del ds[elem.tag]
    elif len(elem.value):
        ctx.record(path, elem, "Z", elem.value, "")
        elem.value = Sequence()


def _replace(elem: DataElement, action: str | None, ctx: _Ctx, path: str) -> None:
    """Apply a value-changing action (or a date shift) to one non-sequence element."""
    old = elem.value
    if old is None or old == "" or old == b"":
        return
    keyword = elem.keyword
    new: object
    if keyword in ("PatientID", "PatientName"):
        new, done = ctx.pseudonym, "pseudonym"
    elif action == "U" or (action == "X/Z/U*" and elem.VR == "UI"):
        new, done = _map_values(old, lambda v: deidentify_uid(v, key=ctx.key)), "U"
    elif elem.VR in ("DA", "DT") and keyword != "PatientBirthDate":
        new, done = _map_values(old, lambda v: _shift(v, elem.VR, ctx.shift)), "shift"
    elif elem.VR == "TM":
        return  # times of day are kept: with shifted dates they identify nobody
    elif action in _EMPTY_ACTIONS or action == "X/Z/U*" or keyword == "PatientBirthDate":
        new, done = _empty(elem.VR), "Z"
    elif action in _DUMMY_ACTIONS:
        new, done = _dummy(elem.VR), "D"
    else:
        raise ValueError(f"{ctx.file}: unknown action {action!r} for {path}")
    elem.value = new
    ctx.record(path, elem, done, old, _show(new))


def _map_values(value: object, fn: Callable[[str], str]) -> object:
    if isinstance(value, MultiValue | list | tuple):
        return [fn(str(v)) for v in value]
    if isinstance(value, bytes):  # UN: text stored as bytes
        return fn(value.decode("ascii", "replace").strip("\x00 ")).encode("ascii")
    return fn(str(value))


def _shift(value: str, vr: str, shift: dt.timedelta) -> str:
    """Shift the date part of a DA/DT value; unparseable or partial dates become empty."""
    text = value.strip().replace(".", "") if vr == "DA" else value.strip()
    try:
        day = dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    return (day + shift).strftime("%Y%m%d") + text[8:]


def _empty(vr: str) -> object:
    if vr in _BINARY_VRS:
        return b""
    return None if vr in _NUMERIC_VRS else ""


def _dummy(vr: str) -> object:
    if vr == "PN":
        return _DUMMY_PN
    if vr in ("DS", "IS"):
        return "0"
    if vr == "AS":
        return "000D"
    if vr in _NUMERIC_VRS:
        return 0
    if vr in ("UI", "UR", "AT", "DA", "DT", "TM") or vr in _BINARY_VRS:
        return _empty(vr)
    return _DUMMY_TEXT


def _show(value: object) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>" if value else ""
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def _drop_private(ds: Dataset, ctx: _Ctx, prefix: str) -> None:
    """Remove private elements not allow-listed, and creators left with no element."""
    creators = {
        (e.tag.group, e.tag.element): str(e.value).strip() for e in ds if e.tag.is_private_creator
    }
    kept_blocks: set[tuple[int, int]] = set()
    for elem in list(ds):
        tag = elem.tag
        if not tag.is_private or tag.is_private_creator:
            continue
        block = (tag.group, tag.element >> 8)
        allowed = tag.element >= 0x1000 and (creators.get(block, ""), tag.element & 0xFF)
        if allowed in ctx.allow:
            kept_blocks.add(block)
        else:
            _remove(ds, elem, ctx, prefix)
    for block in creators:
        if block not in kept_blocks:
            _remove(ds, ds[block[0] << 16 | block[1]], ctx, prefix)


def _remove(ds: Dataset, elem: DataElement, ctx: _Ctx, prefix: str) -> None:
    ctx.record(prefix + _tag_str(elem.tag), elem, "X", elem.value, "")
    del ds[elem.tag]


def _mark(ds: Dataset, ctx: _Ctx) -> None:
    """Record in the dataset that and how it was de-identified (PS3.3 C.7.1.1)."""
    codes = list(_METHOD_CODES)
    if ctx.allow:
        codes.append(_SAFE_PRIVATE_CODE)
    items = Sequence()
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = _METHOD
    ds.DeidentificationMethodCodeSequence = items
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethod"):
        elem = ds[keyword]
        ctx.record(_tag_str(elem.tag), elem, "set", None, str(elem.value))
    if not ds.get("PatientID"):
        ds.PatientID = ctx.pseudonym
        ctx.record(_tag_str(ds["PatientID"].tag), ds["PatientID"], "set", None, ctx.pseudonym)
