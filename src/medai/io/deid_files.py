"""De-identification of DICOM files and folders: walk, check, write atomically, audit.

The rules applied to each dataset live in :mod:`medai.io.deid`; this module reads the
files, refuses truncated ones, never touches the input, mirrors the folder layout and
writes the audit CSV.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import get_expected_length

from medai.errors import ConfigError
from medai.fsutil import atomic_path, atomic_write_text
from medai.io.deid import AllowPrivate, Change, check_key, deidentify_dataset

__all__ = ["DeidReport", "deidentify_path"]

log = logging.getLogger(__name__)


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


_AUDIT_NAME = "deid_audit.csv"
_AUDIT_COLUMNS = ("file", "tag", "keyword", "action", "old", "new")


def _plan(src: Path, dst: Path) -> list[tuple[Path, Path, str]]:
    """(input, output, label) for every input file; refuses an output inside the input."""
    if not src.exists():
        raise FileNotFoundError(f"input {src} does not exist")
    if src.is_file():
        target = dst / src.name if dst.is_dir() else dst
        if target.resolve() == src.resolve():
            raise ConfigError(f"output {dst} is the input file; choose another OUT")
        return [(src, target, src.name)]
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"input {src} is a folder but output {dst} is a file; give a folder")
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise ConfigError(f"output {dst} lies inside input {src}; choose a folder outside it")
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


_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_DICOMDIR_REASON = (
    "DICOMDIR (media directory) not copied: its byte offsets would no longer match; "
    "rebuild it from the de-identified files if needed"
)


def _is_dicomdir(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    sop_class = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    return sop_class == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds


def _check_complete(ds: Dataset) -> None:
    """An element whose value is shorter than its declared length means a cut file."""
    for elem in ds.elements():
        length = getattr(elem, "length", 0)
        value = elem.value
        if isinstance(value, bytes) and length != 0xFFFFFFFF and len(value) < length:
            raise ValueError(
                f"file is truncated: element {elem.tag} declares {length} bytes "
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
            if _is_dicomdir(ds):
                report.skipped.append((src, _DICOMDIR_REASON))
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
        ConfigError: A short key, or an output that overlaps the input.
    """
    src, dst = Path(src), Path(dst)
    key_b = check_key(key)
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
