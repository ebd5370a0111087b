"""Fixtures for real WebRTC peers: headless Chromium (Playwright) and aiortc.

Everything stays on loopback: the server listens on 127.0.0.1, pages get no
ICE servers, and aiortc gathers 127.0.0.1 only.  ``.ci/run`` runs these tests
in a network namespace that has nothing but ``lo``.

Under ``CI=true`` a missing Chromium, Playwright or aiortc fails the test,
so these tests cannot silently drop out of CI; elsewhere they are skipped
with the reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest

from .peers import CHROMIUM_FLAGS, DemoPage


def missing(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the WebRTC tests")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One headless Chromium (Debian's package) for the session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed: pip install '.[test]'")
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if path is None:
        missing("no chromium on PATH: apt-get install chromium (or set CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_FLAGS, timeout=30_000
        )
        yield browser
        browser.close()


@pytest.fixture
def open_page(chromium: Any) -> Iterator[Callable[[str], DemoPage]]:
    """Open demo pages in a fresh browser context; close them after the test."""
    context = chromium.new_context(viewport={"width": 1280, "height": 720})
    pages: list[DemoPage] = []

    def open_(url: str, init_script: str | None = None) -> DemoPage:
        page = context.new_page()
        if init_script:
            page.add_init_script(init_script)
        demo = DemoPage(page)
        page.goto(url)
        pages.append(demo)
        return demo

    yield open_
    context.close()
    errors = [error for demo in pages for error in demo.page_errors]
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def aiortc_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make aiortc gather 127.0.0.1 only (it skips loopback by default)."""
    try:
        import aioice.ice
        import aiortc  # noqa: F401
    except ImportError:
        missing("aiortc is not installed: pip install '.[test]'")
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
