"""Shared test settings."""

import pytest

from medai.cli import console as cli_console


@pytest.fixture(autouse=True)
def _wide_cli_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps at the terminal width; give CLI tests the same wide, fixed terminal."""
    for con in (cli_console.console, cli_console.err_console):
        monkeypatch.setattr(con, "width", 200)
