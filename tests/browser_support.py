"""Driving the dashboard in a real headless browser (Debian's chromium through Playwright's
`executable_path`): pages watched for Content-Security-Policy violations and uncaught errors, the
login, and screenshots kept as test artifacts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ON_CI
from trainfarm.services.farm import MasterProcess

CHROMIUM = "/usr/bin/chromium"
#: Where screenshots go: $TRAINFARM_TEST_ARTIFACTS, or test-artifacts/ at the repository's root.
ARTIFACTS = Path(
    os.environ.get("TRAINFARM_TEST_ARTIFACTS") or Path(__file__).resolve().parent.parent / "test-artifacts"
)
#: What the page records of every CSP violation; injected before any script of the page runs.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI} (${e.sourceFile}:${e.lineNumber})`);
});
"""


def browser_or_skip() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:  # pragma: no cover - requirements.txt pins it
        problem = f"playwright is not installed ({err})"
    else:
        if shutil.which(CHROMIUM):
            return
        problem = f"{CHROMIUM} not found (scripts/bootstrap installs Debian's chromium as root)"
    if ON_CI:
        pytest.fail(problem)
    pytest.skip(f"LOUD SKIP: {problem}; the browser test did not run")


@dataclass
class PageWatch:
    """What went wrong in a page that was not a failed request: CSP reports and uncaught errors."""

    console_csp: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def check(self, page: Any) -> None:
        events = page.evaluate("window.__csp")
        assert events == [], f"CSP violations (securitypolicyviolation): {events}"
        assert self.console_csp == [], f"CSP violations (console): {self.console_csp}"
        assert self.page_errors == [], f"uncaught errors in the page: {self.page_errors}"


OpenPage = Callable[[str], tuple[Any, PageWatch]]


@contextmanager
def browser_pages() -> Iterator[OpenPage]:
    """A headless chromium; each call opens a fresh context (its own cookies) with a watched page."""
    browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])

        def open_at(url: str) -> tuple[Any, PageWatch]:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(30_000)
            page = context.new_page()
            watch = PageWatch()
            page.add_init_script(RECORD_VIOLATIONS)
            page.on(
                "console",
                lambda m: watch.console_csp.append(m.text) if "Content Security Policy" in m.text else None,
            )
            page.on("pageerror", lambda e: watch.page_errors.append(str(e)))
            page.goto(url)
            return page, watch

        try:
            yield open_at
        finally:
            browser.close()


def log_in(page: Any, name: str, password: str) -> None:
    form = page.locator("#login-form")
    form.locator("input[name=username]").fill(name)
    form.locator("input[name=password]").fill(password)
    form.locator("button[type=submit]").click()


def token_for(master: MasterProcess, name: str, password: str) -> str:
    answer = httpx.post(f"{master.url}/api/auth/login", data={"username": name, "password": password})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def screenshot(page: Any, name: str) -> Path:
    """A full-page screenshot kept under ARTIFACTS; it must have been written, and not be empty."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.is_file() and path.stat().st_size > 0, f"no screenshot at {path}"
    return path
