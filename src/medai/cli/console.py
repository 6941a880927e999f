"""The CLI's voice: one rich console, progress bars, and clean error exits."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from medai.errors import MedaiError

console = Console()
err_console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )
    # Third-party libraries warn about every odd header; medai reports what matters.
    for noisy in ("pydicom", "highdicom", "nibabel", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)


def progress() -> Progress:
    """A progress bar with count, elapsed time and ETA."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn medai's own errors (and bad values) into one red line and exit code 2."""
    try:
        yield
    except (MedaiError, ValueError, TypeError, FileNotFoundError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2) from exc
