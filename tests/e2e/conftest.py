"""Browser fixtures: a real server with demo data, and Debian's Chromium driven by Playwright.

Playwright's Python wheel bundles its driver; the browser is the system's ``chromium`` (apt
package, listed in .ci/apt-packages.d/ui.txt), never one downloaded by ``playwright install``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, sync_playwright

from tests.conftest import BIN, Server, start_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEMO_TRACES = 400


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real ``observatory serve`` for the module, filled by ``observatory demo``."""
    server = start_server(
        tmp_path_factory.mktemp("ui-server"), env={"OBSERVATORY_GRPC_ENABLED": "false"}
    )
    try:
        result = subprocess.run(
            [
                str(BIN / "observatory"),
                "demo",
                "--url",
                server.base_url,
                "--data-dir",
                str(server.data_dir),
                "--traces",
                str(DEMO_TRACES),
                "--days",
                "1",
                "--seed",
                "42",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert f"sent {DEMO_TRACES} traces" in result.stdout
        yield server
    finally:
        server.stop()


# Module scope: Playwright's sync API keeps an asyncio loop running in the main thread while it
# is open, which would break later tests that call asyncio.run().
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (see .ci/apt-packages.d)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


class Watched:
    """A page plus the JavaScript errors and CSP violations it reported."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("console", self._console)
        page.on("dialog", self._dialog)
        page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        # Documents answered 401/403/404 on purpose (a refused sign-in, a missing trace) are
        # logged by the browser as failed loads; missing assets are caught in _response.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console: {message.text}")

    def _response(self, response: Response) -> None:
        if "/static/" in response.url and response.status >= 400:
            self.problems.append(f"asset {response.url} answered {response.status}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.accept()


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="light")
    context.set_default_timeout(15_000)
    try:
        yield Watched(context.new_page())
    finally:
        context.close()


def sign_in(page: Page, base_url: str, key: str, path: str = "/") -> None:
    page.goto(base_url + "/login?next=" + path)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/login" not in url)


def shot(page: Page, directory: Path, name: str, full_page: bool = True) -> Path:
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 10_000, f"{name}.png looks empty"
    return path
