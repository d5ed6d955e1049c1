"""A real Chromium driven by Playwright: one browser per session, a fresh context and page per test.

The browser is the one installed on the machine (`LEDGER_CHROMIUM`, else `chromium`,
`google-chrome` on PATH); Playwright's own browser downloads are never used. Without a browser
(or without the playwright package) the browser tests skip with one line saying why, except
under CI (`CI` set, as `.ci/run` does), where a console that was never tested in a browser is a
failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

# Names looked up on PATH, in order, when LEDGER_CHROMIUM is unset.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Every Playwright wait (a click, a selector, a navigation) is bounded by this.
ACTION_TIMEOUT_MS = 10_000
LAUNCH_TIMEOUT_MS = 30_000

# Playwright never fetches a browser of its own here (only `playwright install` would).
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    executable, why = find_chromium()
    if executable is None:
        return why
    try:
        import playwright.async_api  # noqa: F401 (only whether it imports)
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


def pytest_collection_modifyitems(config, items) -> None:
    """Outside CI, mark the browser tests skipped before they start: pytest -ra then folds them
    into one line per file saying why (a skip raised inside a fixture is one line per test)."""
    needing = [item for item in items if "browser" in getattr(item, "fixturenames", ())]
    why = browser_missing() if needing and not os.environ.get("CI") else None
    if why is not None:
        for item in needing:
            item.add_marker(pytest.mark.skip(reason=f"browser tests skipped: {why}"))


def find_chromium() -> tuple[str | None, str]:
    """The browser's path, or None and why there is none."""
    configured = os.environ.get("LEDGER_CHROMIUM")
    if configured:
        if os.access(configured, os.X_OK):
            return configured, ""
        return None, f"LEDGER_CHROMIUM={configured} is not an executable file"
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found, ""
    return None, f"no Chromium: set LEDGER_CHROMIUM or put one of {', '.join(CHROMIUM_NAMES)} on PATH"


def no_browser(why: str) -> None:
    """Fail under CI, skip elsewhere; pytest -ra folds the skips into one line with this reason."""
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run under CI: {why}", pytrace=False)
    pytest.skip(f"browser tests skipped: {why}")


@pytest_asyncio.fixture(scope="session")
async def browser() -> AsyncIterator:
    """The session's headless Chromium (a playwright.async_api.Browser)."""
    why = browser_missing()
    if why is not None:
        no_browser(why)
    from playwright.async_api import async_playwright

    executable, _ = find_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, headless=True,
                                                    timeout=LAUNCH_TIMEOUT_MS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture
async def browser_context(browser) -> AsyncIterator:
    """A fresh context (own cookies and storage) per test, its waits bounded."""
    context = await browser.new_context()
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    try:
        yield context
    finally:
        await context.close()


@pytest_asyncio.fixture
async def page(browser_context) -> AsyncIterator:
    """A page in the test's own context; console messages and page errors are kept on
    `page.console_lines` so that a failing test can show what the page said."""
    opened = await browser_context.new_page()
    opened.console_lines = []
    opened.on("console", lambda message: opened.console_lines.append(f"{message.type}: {message.text}"))
    opened.on("pageerror", lambda error: opened.console_lines.append(f"pageerror: {error}"))
    yield opened
