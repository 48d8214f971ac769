"""The web console in a real browser: the API server of tests/api/conftest.py (real uvicorn, fresh database, a clock
the test moves) serving the console at /, and headless Chromium driving it like a user."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.api.conftest import Api, api  # noqa: F401  (the fixture, for the console tests)
from tests.support.api_server import PASSWORD
from tests.support.browser import chromium, poll

DOCS_SCREENS = Path(__file__).resolve().parents[2] / "docs" / "console"
"""Where ``NVR_CONSOLE_SCREENSHOTS=1`` (scripts/console-screenshots) saves the screens for docs/console.md; other
runs save them under the test's temporary folder, so the suite never changes files of the checkout."""


@dataclass
class Console:
    """One browser on the console of ``api``'s server."""

    api: Api
    driver: webdriver.Chrome
    shots: Path

    def open(self, path: str = "/") -> None:
        """Open a console screen by its hash path ("/cameras"), or the start page."""
        self.driver.get(f"{self.api.url}/#{path}" if path != "/" else f"{self.api.url}/")

    def find(self, css: str, timeout: float = 20.0) -> WebElement:
        return poll(lambda: self._visible(css), f"an element {css!r}", timeout)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def _visible(self, css: str) -> WebElement | None:
        for el in self.driver.find_elements(By.CSS_SELECTOR, css):
            if el.is_displayed():
                return el
        return None

    def text_appears(self, text: str, css: str = "body", timeout: float = 20.0) -> WebElement:
        def found() -> WebElement | None:
            for el in self.driver.find_elements(By.CSS_SELECTOR, css):
                if text in el.text:
                    return el
            return None

        return poll(found, f"{text!r} in {css!r}", timeout)

    def login(self, username: str, password: str = PASSWORD) -> None:
        self.open("/")
        form = self.find("#login-form")
        form.find_element(By.NAME, "username").send_keys(username)
        form.find_element(By.NAME, "password").send_keys(password)
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        self.find("#who")

    def logout(self) -> None:
        self.find("#logout").click()
        self.find("#login-form")

    def error_text(self, timeout: float = 10.0) -> str:
        """The error banner's text (every API failure is shown there)."""
        return self.find("#banner.error .error-text", timeout).text

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def screenshot(self, name: str) -> Path:
        """Save the current screen as <shots>/<name>.png (docs/console/ with NVR_CONSOLE_SCREENSHOTS=1)."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture
def console(api: Api, tmp_path: Path) -> Iterator[Console]:  # noqa: F811  (api is the fixture imported above)
    with chromium(tmp_path / "profile") as driver:
        yield Console(api, driver, _shots(tmp_path))


@pytest.fixture
def console_zh(api: Api, tmp_path: Path) -> Iterator[Console]:  # noqa: F811
    """A browser that asks for Simplified Chinese first."""
    with chromium(tmp_path / "profile-zh", lang="zh-CN,zh") as driver:
        yield Console(api, driver, _shots(tmp_path))


def _shots(tmp_path: Path) -> Path:
    return DOCS_SCREENS if os.environ.get("NVR_CONSOLE_SCREENSHOTS") == "1" else tmp_path / "screens"
