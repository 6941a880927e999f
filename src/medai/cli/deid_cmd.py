"""``medai deid``: de-identify DICOM files with the PS3.15 basic profile and a project key."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import typer
from rich.table import Table

from medai.cli.console import console, err_console, progress, user_errors
from medai.errors import ConfigError
from medai.fsutil import write_secret_text
from medai.io.deid import KEY_ENV_VAR, generate_key, load_key
from medai.io.deid_files import DeidReport, deidentify_path

_MAX_LISTED = 20


def _parse_allow(values: list[str]) -> list[tuple[str, int]]:
    """``CREATOR:ELEMENT`` (element byte in hex, e.g. ``SIEMENS CSA HEADER:10``)."""
    pairs = []
    for value in values:
        creator, sep, element = value.rpartition(":")
        try:
            byte = int(element, 16)
        except ValueError:
            byte = -1
        if not sep or not creator.strip() or not 0 <= byte <= 0xFF:
            raise ConfigError(
                f"--allow-private {value!r}: expected CREATOR:ELEMENT with ELEMENT the "
                "element byte in hex, e.g. 'SIEMENS CSA HEADER:10'"
            )
        pairs.append((creator.strip(), byte))
    return pairs


def _new_key_file(path: Path | None) -> Path:
    if path is None:
        raise ConfigError("--generate-key needs --key-file F: the file to write the new key to")
    if path.exists():
        raise ConfigError(
            f"key file {path} already exists; drop --generate-key to use it, or choose "
            "another path (never overwrite a project key: earlier outputs depend on it)"
        )
    write_secret_text(path, generate_key() + "\n")  # 0600 from the start, atomic, no overwrite
    err_console.print(f"[yellow]wrote a new project key to {path}: keep it secret and safe[/]")
    return path


def _summary(report: DeidReport) -> Table:
    table = Table(title="De-identification")
    table.add_column("What")
    table.add_column("Count", justify="right")
    table.add_row("files written", str(len(report.written)))
    table.add_row("skipped (not DICOM)", str(len(report.skipped)))
    table.add_row("failed", str(len(report.failed)), style="red" if report.failed else None)
    table.add_row("files with warnings", str(len({p for p, _ in report.warnings})))
    names = {"X": "removed", "Z": "emptied", "D": "dummy value", "U": "UIDs replaced"}
    for action, count in sorted(Counter(c.action for c in report.changes).items()):
        table.add_row(f"attributes: {names.get(action, action)}", str(count))
    return table


def _problems(report: DeidReport) -> None:
    for title, rows, style in (
        ("skipped", report.skipped, "yellow"),
        ("failed", report.failed, "red"),
        ("warning", report.warnings, "yellow"),
    ):
        for path, reason in rows[:_MAX_LISTED]:
            console.print(f"[{style}]{title}:[/] {path}: {reason}")
        if len(rows) > _MAX_LISTED:
            console.print(f"[{style}]… and {len(rows) - _MAX_LISTED} more {title}[/]")


def deid(
    src: Path = typer.Argument(
        ..., metavar="IN", help="A DICOM file or a folder (walked recursively)."
    ),
    dst: Path = typer.Argument(
        ..., metavar="OUT", help="Output file or folder (the input layout is mirrored)."
    ),
    key_file: Path | None = typer.Option(
        None, "--key-file", help=f"File holding the project's secret key (else ${KEY_ENV_VAR})."
    ),
    new_key: bool = typer.Option(
        False, "--generate-key", help="Create a new key and write it to --key-file first."
    ),
    allow_private: list[str] = typer.Option(
        [], "--allow-private", help="Keep a private element: 'CREATOR:ELEMENT' (hex byte)."
    ),
    audit: Path | None = typer.Option(
        None, "--audit", help="Audit CSV path (default: OUT/deid_audit.csv)."
    ),
) -> None:
    """De-identify DICOM files (PS3.15 Annex E basic profile); the input is never modified.

    UIDs and the patient pseudonym come from a keyed hash, and dates move by a
    per-patient offset: the same key always gives the same output.
    """
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    with user_errors():
        if new_key:
            key_file = _new_key_file(key_file)
        key = load_key(key_file)
        allow = _parse_allow(allow_private)
        if not src.exists():
            raise FileNotFoundError(f"input {src} does not exist")
        total = sum(1 for p in src.rglob("*") if p.is_file()) if src.is_dir() else 1
        with progress() as bar:
            task = bar.add_task("de-identifying", total=total)
            report = deidentify_path(
                src,
                dst,
                key=key,
                allow_private=allow,
                audit_csv=audit,
                on_file=lambda _p: bar.advance(task),
            )
    console.print(_summary(report))
    _problems(report)
    console.print(f"audit of every change: {report.audit_csv}")
    if report.failed:
        raise typer.Exit(code=1)
