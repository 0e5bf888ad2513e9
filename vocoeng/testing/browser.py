"""Drive Debian's chromium with Playwright for the browser tests.

Playwright cannot download its own browsers here, so it launches the system
chromium (``/usr/bin/chromium``, installed by ``make test``'s set-up).

Playwright's sync API leaves its event loop marked as running in the thread
that uses it, and Django then refuses ORM calls in that thread
(SynchronousOnlyOperation) for the rest of the session. So the browser lives in
a thread of its own: tests hand it steps to run (``BrowserPage.run``) and keep
the main thread, and its database access, untouched, without turning off
Django's guard with DJANGO_ALLOW_ASYNC_UNSAFE.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from playwright.sync_api import Locator, Page, expect

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
# No sandbox (tests run as root in containers), nothing that phones home.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
INSTALL_HINT = (
    "install Debian's chromium as root (`make test` does this when it runs as "
    "root: DEBIAN_FRONTEND=noninteractive apt-get install -y "
    "--no-install-recommends chromium chromium-driver), or point CHROMIUM_PATH "
    "at a chromium binary"
)
# Page operations give up after this long: the pages are local and small, so
# a missing element fails the test in seconds instead of hanging it.
STEP_TIMEOUT_MS = 10_000
CALL_TIMEOUT_S = 120.0


class ChromiumMissing(RuntimeError):
    """Raise when no chromium binary can be found to launch."""


def chromium_path() -> str:
    """Return the chromium binary to launch, or raise ChromiumMissing."""
    path = os.environ.get("CHROMIUM_PATH") or CHROMIUM
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ChromiumMissing(f"no chromium at {path}: {INSTALL_HINT}")
    return path


class Chromium:
    """Own Playwright and one headless chromium in a dedicated thread."""

    def __init__(self, *, artifacts: Path) -> None:
        self.artifacts = artifacts
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="chromium")
        self._playwright: Any = None
        self._browser: Any = None

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the browser's thread and return its result."""
        return self._thread.submit(fn, *args).result(timeout=CALL_TIMEOUT_S)

    def start(self) -> Chromium:
        executable = chromium_path()
        self.artifacts.mkdir(parents=True, exist_ok=True)
        for old in self.artifacts.glob("*.png"):
            old.unlink()
        try:
            self.call(self._launch, executable)
        except BaseException:
            self.stop()  # the Playwright driver may be up without a browser
            raise
        return self

    def _launch(self, executable: str) -> None:
        from playwright.sync_api import sync_playwright

        # expect() waits 5 s by default, short for a page load on a busy CI core.
        expect.set_options(timeout=STEP_TIMEOUT_MS)
        self._playwright = sync_playwright().start()
        # launch() gives chromium a fresh temporary profile (user data dir) and
        # removes it on close: nothing is kept from an earlier run or a user.
        self._browser = self._playwright.chromium.launch(
            executable_path=executable, headless=True, args=list(CHROMIUM_ARGS)
        )

    def open(self, *, base_url: str, name: str) -> BrowserPage:
        """Open a new context (its own cookies) with one page on ``base_url``."""
        page = self.call(self._new_page, base_url)
        return BrowserPage(self, page, base_url=base_url, name=name)

    def _new_page(self, base_url: str) -> Any:
        context = self._browser.new_context(
            base_url=base_url, viewport={"width": 1280, "height": 900}
        )
        context.set_default_timeout(STEP_TIMEOUT_MS)
        return context.new_page()

    def stop(self) -> None:
        def close() -> None:
            if self._browser is not None:
                self._browser.close()
            if self._playwright is not None:
                self._playwright.stop()

        try:
            self.call(close)
        finally:
            self._thread.shutdown(wait=True)


class BrowserPage:
    """One page in a fresh browser context, driven from a test."""

    def __init__(self, chromium: Chromium, page: Any, *, base_url: str, name: str):
        self.chromium, self.page, self.base_url = chromium, page, base_url
        self.name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")

    def run(self, steps: Callable[[Any], T]) -> T:
        """Run ``steps(page)`` in the browser's thread.

        On failure a screenshot of the page as it was goes to the artifacts
        as ``<test>-failed.png``, then the error is raised here.
        """

        def guarded(page: Any) -> T:
            try:
                return steps(page)
            except BaseException:
                self._save(page, f"{self.name}-failed")
                raise

        return self.chromium.call(guarded, self.page)

    def screenshot(self, page: Any, label: str) -> Path:
        """Save a full-page screenshot as ``<test>-<label>.png`` (inside run)."""
        return self._save(page, f"{self.name}-{label}")

    def _save(self, page: Any, stem: str) -> Path:
        path = self.chromium.artifacts / f"{stem}.png"
        try:
            page.screenshot(path=str(path), full_page=True)
        except Exception:  # noqa: S110 - a failing screenshot must not hide the error
            pass
        return path

    def close(self) -> None:
        self.chromium.call(lambda: self.page.context.close())


def login_form_submit(page: Page, *, username: str, password: str) -> None:
    """Fill in and submit the admin login form on the current page."""
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("#login-form [type=submit]")


def admin_login(page: Page, *, username: str, password: str) -> None:
    """Log in through the admin's login form and wait for the admin index."""
    page.goto("/admin/login/?next=/admin/")
    login_form_submit(page, username=username, password=password)
    page.wait_for_url("**/admin/")


def changelist_from_index(page: Page, *, app: str, model: str) -> Locator:
    """Open ``app.model``'s list through its link on the admin index; return rows."""
    page.goto("/admin/")
    page.locator(f"tr.model-{model} th a").click()
    expect(page).to_have_url(re.compile(rf"/admin/{app}/{model}/$"))
    return page.locator("#result_list tbody tr")


def admin_action(page: Page, *, action: str, pks: list[Any]) -> None:
    """Tick the rows of ``pks`` on a change list and run ``action`` on them."""
    for pk in pks:
        page.check(f'input.action-select[value="{pk}"]')
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")


def expect_no_add_row(page: Page, *, inline: str) -> None:
    """Check that the ``inline`` group (its prefix) offers no blank row to add."""
    group = page.locator(f"#{inline}-group")
    expect(group).to_be_visible()
    expect(group.get_by_text("Add another")).to_be_hidden()
    expect(group.locator("tr.empty-form")).to_have_count(0)
