"""The web page in a real browser: Debian's Chromium driven by Playwright, no mocks.

Chromium is the system package (/usr/bin/chromium, or $TTS_CHROMIUM); Playwright's own
browser download is never used. Each test gets a fresh browser context (its own storage),
and records what a page must never do: console errors, uncaught exceptions, CSP violations
and dialogs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("TTS_CHROMIUM", "/usr/bin/chromium"))
# Headless and quiet: without the background-networking flags Chromium keeps calling home
# (and the test machine's network is loopback only).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 860}

# Runs before the page's own scripts (and outside its CSP): remembers every violation.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""
FAILED_RESOURCE = re.compile(
    r"Failed to load resource: the server responded with a status of (\d+)"
)
NETWORK_ERROR = re.compile(r"Failed to load resource: net::ERR_[A-Z_]+")


def missing_browser_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install 'playwright>=1.49')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    return None


@dataclass
class PageSession:
    """One browser context and page, with everything it logged."""

    page: Any
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        found = [m for m in self.console_errors if "Content Security Policy" in m]
        return found + list(self.page.evaluate("() => window.__cspViolations || []"))

    def assert_clean(
        self, expected_statuses: frozenset[int] = frozenset(), network_errors: bool = False
    ) -> None:
        """No CSP violation, script error or dialog. The console may only report the failed
        requests a test provokes: HTTP statuses it expects, or broken connections."""
        assert self.csp_violations() == []
        assert self.page_errors == []
        assert self.dialogs == []
        unexpected = []
        for message in self.console_errors:
            status = FAILED_RESOURCE.search(message)
            if status is not None and int(status.group(1)) in expected_statuses:
                continue
            if network_errors and NETWORK_ERROR.search(message):
                continue
            unexpected.append(message)
        assert unexpected == []


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per module; Playwright gives it a fresh temporary user data dir."""
    reason = missing_browser_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., PageSession]]:
    """Factory: a fresh context (own storage) and page on the server's web page."""
    contexts: list[Any] = []

    def open_(url: str, locale: str = "en-US", goto: bool = True, **options: Any) -> PageSession:
        context = browser.new_context(viewport=VIEWPORT, locale=locale, **options)
        context.set_default_timeout(20_000)
        context.add_init_script(script=RECORD_CSP_VIOLATIONS)
        contexts.append(context)
        page = context.new_page()
        session = PageSession(page)
        page.on(
            "console",
            lambda message: (
                session.console_errors.append(message.text) if message.type == "error" else None
            ),
        )
        page.on("pageerror", lambda error: session.page_errors.append(str(error)))

        def on_dialog(dialog: Any) -> None:
            session.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        if goto:
            page.goto(url + "/")
        return session

    yield open_
    for context in contexts:
        context.close()
