"""Open a rendered report in headless Chromium: find broken images, take a screenshot.

Uses the ``playwright`` Python package driving the system Chromium (Debian package
``chromium``, ``/usr/bin/chromium``); no browser is downloaded. Both are optional:
functions raise :class:`BrowserUnavailableError` when either is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medai.errors import MedaiError
from medai.fsutil import atomic_path

__all__ = [
    "DEFAULT_CHROMIUM",
    "BrowserUnavailableError",
    "find_broken_images",
    "find_chromium",
    "screenshot_report",
]

DEFAULT_CHROMIUM = "/usr/bin/chromium"
_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# naturalWidth is 0 for an image that failed to load or decode
_BROKEN_IMAGES_JS = """() => Array.from(document.images)
    .filter(img => !img.complete || img.naturalWidth === 0)
    .map(img => (img.getAttribute('src') || '').slice(0, 80))"""


class BrowserUnavailableError(MedaiError, RuntimeError):
    """Chromium or the playwright package is not installed."""


def find_chromium(executable: str | Path | None = None) -> Path:
    """The Chromium binary to use: ``executable``, else /usr/bin/chromium, else on PATH."""
    candidates = [executable] if executable else [DEFAULT_CHROMIUM, shutil.which("chromium")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise BrowserUnavailableError(
        f"Chromium not found (tried {[str(c) for c in candidates if c]}); "
        "install it with `apt-get install chromium`"
    )


@contextmanager
def _page(html_path: Path, executable: str | Path | None, width: int) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        raise BrowserUnavailableError("the playwright package is not installed") from error
    if not html_path.is_file():
        raise FileNotFoundError(f"report not found: {html_path}")
    binary = find_chromium(executable)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(binary), args=_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            yield page
        finally:
            browser.close()


def find_broken_images(
    html_path: str | Path, *, executable: str | Path | None = None
) -> tuple[int, list[str]]:
    """Load a report in headless Chromium and list images that did not render.

    Returns:
        ``(number of <img> elements, start of the src of each broken one)``.
    """
    with _page(Path(html_path), executable, 1280) as page:
        count = int(page.evaluate("() => document.images.length"))
        broken = [str(src) for src in page.evaluate(_BROKEN_IMAGES_JS)]
    return count, broken


def screenshot_report(
    html_path: str | Path,
    png_path: str | Path,
    *,
    width: int = 1280,
    full_page: bool = False,
    executable: str | Path | None = None,
) -> Path:
    """Save a PNG screenshot of a rendered report (e.g. for the README); atomic write."""
    target = Path(png_path)
    with _page(Path(html_path), executable, width) as page, atomic_path(target) as tmp:
        page.screenshot(path=str(tmp), full_page=full_page)
    return target
