"""The CLI's voice: one rich console, progress bars, and clean error exits."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
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


def _one_line(exc: BaseException) -> str:
    """The error as one line (a message that spans lines is joined with "; ")."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn what a user can cause into one red line and exit code 2.

    That is a :class:`~medai.errors.MedaiError` (bad input, a bad file, a bad setting)
    or an ``OSError`` (a path that is missing, unreadable or not writable). Anything
    else, bare ``ValueError`` and ``TypeError`` included, is a programming error and
    shows its traceback.
    """
    try:
        yield
    except (MedaiError, OSError) as exc:
        err_console.print(
            f"[bold red]error:[/] {escape(_one_line(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(code=2) from exc
