"""De-identification of DICOM files: the PS3.15 Annex E basic profile, with keyed pseudonyms.

The action table (``deid_profile.csv`` next to this module) encodes the basic profile
column of PS3.15 Table E.1-1; rows marked ``medai`` are extra removals. Choices where
the standard leaves one open, applied the same way everywhere (sequences included):

* ``X`` removes; ``Z`` and ``X/Z`` empty the value; ``D``, ``Z/D``, ``X/D``, ``X/Z/D`` and
  ``C`` put a dummy of the right VR; ``U`` maps each UID to ``2.25.<n>`` where ``n`` is a
  UUID built from an HMAC of the UID under the project key (same key, same mapping).
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
import re
import secrets
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.utils import get_expected_length
from pydicom.sequence import Sequence

from medai.fsutil import atomic_path, atomic_write_text

__all__ = [
    "KEY_ENV_VAR",
    "Change",
    "DeidReport",
    "deidentify_dataset",
    "deidentify_path",
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


@dataclass
class DeidReport:
    """What :func:`deidentify_path` did.

    Attributes:
        written: Output files written, in input order.
        skipped: Input files that are not DICOM, with the reason.
        failed: Input files that could not be de-identified, with the reason.
        warnings: Files written that need a human look, with the reason.
        changes: Every change made, in order.
        audit_csv: Where the audit CSV was written.
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[tuple[Path, str]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    audit_csv: Path | None = None

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed


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


def _key_bytes(key: str | bytes) -> bytes:
    if isinstance(key, str):
        key = key.strip().encode("utf-8")
    if not isinstance(key, bytes):
        raise TypeError(f"key must be str or bytes, got {type(key).__name__}")
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(
            f"de-identification key is too short ({len(key)} bytes); use at least "
            f"{_MIN_KEY_BYTES}, e.g. one made by `medai deid --generate-key --key-file F`"
        )
    return key


def load_key(key_file: str | Path | None = None) -> bytes:
    """Read the project key from ``key_file``, else from the ``MEDAI_DEID_KEY`` variable.

    Raises:
        ValueError: No key anywhere, or a key that is too short; the message says what
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
        return _key_bytes(path.read_text(encoding="utf-8"))
    env = os.environ.get(KEY_ENV_VAR)
    if env:
        return _key_bytes(env)
    raise ValueError(
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
    raw = bytearray(_digest(_key_bytes(key), "uid", uid.strip())[:16])
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
    ctx = _make_ctx(ds, _key_bytes(key), file_label, allow_private)
    out = copy.deepcopy(ds)
    _clean(out, ctx, "")
    meta = getattr(out, "file_meta", None)
    if isinstance(meta, FileMetaDataset):
        _clean(meta, ctx, "")
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
    elif action in _EMPTY_ACTIONS or keyword == "PatientBirthDate":
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
    value = elem.value if elem.VR != "SQ" else Sequence()
    ctx.record(prefix + _tag_str(elem.tag), elem, "X", value if value else "", "")
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


# --------------------------------------------------------------------------- files

_AUDIT_NAME = "deid_audit.csv"
_AUDIT_COLUMNS = ("file", "tag", "keyword", "action", "old", "new")


def _plan(src: Path, dst: Path) -> list[tuple[Path, Path, str]]:
    """(input, output, label) for every input file; refuses an output inside the input."""
    if not src.exists():
        raise FileNotFoundError(f"input {src} does not exist")
    if src.is_file():
        target = dst / src.name if dst.is_dir() else dst
        if target.resolve() == src.resolve():
            raise ValueError(f"output {dst} is the input file; choose another OUT")
        return [(src, target, src.name)]
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"input {src} is a folder but output {dst} is a file; give a folder")
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise ValueError(f"output {dst} lies inside input {src}; choose a folder outside it")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    return [(p, dst / p.relative_to(src), p.relative_to(src).as_posix()) for p in files]


def _read(path: Path) -> Dataset | str:
    """The dataset, or the reason the file is not DICOM.

    A file without the 128-byte preamble is accepted when it parses as a dataset that
    names its SOP instance (old files written without the file meta information).
    """
    try:
        return pydicom.dcmread(path, force=False)
    except InvalidDicomError:
        pass
    try:
        ds = pydicom.dcmread(path, force=True)
        if ds.get("SOPInstanceUID") and ds.get("SOPClassUID"):
            return ds
    except Exception:  # forced parsing of arbitrary bytes fails in many ways
        log.debug("%s: forced DICOM parse failed", path, exc_info=True)
    return "not a DICOM file (no 'DICM' marker and no parsable SOP instance)"


def _check_complete(ds: Dataset) -> None:
    """An element whose value is shorter than its declared length means a cut file."""
    for elem in ds.elements():
        length = getattr(elem, "length", 0)
        value = elem.value
        if isinstance(value, bytes) and length != 0xFFFFFFFF and len(value) < length:
            raise ValueError(
                f"file is truncated: element {_tag_str(elem.tag)} declares {length} bytes "
                f"but only {len(value)} remain"
            )


def _check_pixel_length(ds: Dataset) -> None:
    """Native (uncompressed) pixel data shorter than its header says means a cut file."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    pixels = ds.get("PixelData")
    if not isinstance(pixels, bytes) or (syntax is not None and syntax.is_encapsulated):
        return
    try:
        expected = int(get_expected_length(ds, unit="bytes"))
    except (AttributeError, TypeError, ValueError, KeyError):
        return  # header too incomplete to tell; the image readers will say what is wrong
    if len(pixels) < expected:
        raise ValueError(
            f"pixel data is truncated: {len(pixels)} bytes where the header "
            f"(rows, columns, frames, bits) needs {expected}"
        )


def _deid_one(
    src: Path, dst: Path, label: str, key: bytes, allow: AllowPrivate, report: DeidReport
) -> None:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = _read(src)
            if isinstance(ds, str):
                report.skipped.append((src, ds))
                return
            messages = list(dict.fromkeys(_redact(str(w.message)) for w in caught))
            cut = [m for m in messages if "End of file" in m]
            if cut:  # pydicom reads on past a cut file; the output would hide the damage
                raise ValueError(f"file is truncated ({cut[0]})")
            _check_complete(ds)
            _check_pixel_length(ds)
            out, changes = deidentify_dataset(ds, key=key, allow_private=allow, file_label=label)
            with atomic_path(dst) as tmp:
                out.save_as(tmp, enforce_file_format=False)
            messages = list(dict.fromkeys(_redact(str(w.message)) for w in caught))
    except Exception as exc:  # a corrupt file must not stop the run: report it, go on
        reason = _redact(f"{type(exc).__name__}: {exc}")
        log.warning("%s: de-identification failed: %s", src, reason)
        report.failed.append((src, reason))
        return
    report.written.append(dst)
    report.changes.extend(changes)
    report.warnings.extend((dst, f"pydicom: {m}") for m in messages)
    if str(out.get("BurnedInAnnotation", "")).upper() == "YES":
        report.warnings.append(
            (dst, "BurnedInAnnotation is YES: pixels may show identifying text; review them")
        )


def _redact(message: str) -> str:
    """A reader's message without the attribute values it quotes (they may identify)."""
    return re.sub(r":\s*'[^']*'", ": '…'", message)


def _write_audit(path: Path, changes: list[Change]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_AUDIT_COLUMNS)
    for c in changes:
        writer.writerow((c.file, c.path, c.keyword, c.action, c.old, c.new))
    atomic_write_text(path, buffer.getvalue())


def deidentify_path(
    src: str | Path,
    dst: str | Path,
    *,
    key: str | bytes,
    allow_private: AllowPrivate = (),
    audit_csv: str | Path | None = None,
    on_file: Callable[[Path], None] | None = None,
) -> DeidReport:
    """De-identify a DICOM file, or every DICOM file under a folder, into ``dst``.

    A folder is walked recursively and its layout mirrored under ``dst``. The input is
    never modified; each output is written atomically. Files that are not DICOM are
    skipped and files that fail are reported; the run goes on either way.

    Args:
        src: A DICOM file or a folder.
        dst: The output file (or folder) for a file; the output folder for a folder.
        key: The project's secret key (see :func:`load_key`).
        allow_private: ``(private creator, element byte)`` pairs to keep.
        audit_csv: Where to write the audit of every change; by default
            ``dst/deid_audit.csv`` for a folder, ``<dst>.audit.csv`` for a file.
        on_file: Called with each input file once it is done (for progress bars).

    Returns:
        A :class:`DeidReport`.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: A short key, or an output that overlaps the input.
    """
    src, dst = Path(src), Path(dst)
    key_b = _key_bytes(key)
    allow = tuple(allow_private)
    plan = _plan(src, dst)
    report = DeidReport()
    for file_in, file_out, label in plan:
        _deid_one(file_in, file_out, label, key_b, allow, report)
        if on_file is not None:
            on_file(file_in)
    if audit_csv is None:
        audit_csv = dst / _AUDIT_NAME if src.is_dir() else Path(f"{plan[0][1]}.audit.csv")
    report.audit_csv = Path(audit_csv)
    _write_audit(report.audit_csv, report.changes)
    return report
