"""Headless Chromium for the browser tests: Debian's chromium and chromium-driver (installed by
scripts/install-system-deps), driven by Selenium, with nothing downloaded. Without them a test is skipped, unless
``REQUIRE_BROWSER=1`` or ``REQUIRE_GSTREAMER=1`` (set in CI), in which case it fails."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
    "--mute-audio",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
T = TypeVar("T")


def require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    reason = f"headless Chromium unavailable: {', '.join(missing)} missing (install with scripts/install-system-deps)"
    required = [v for v in ("REQUIRE_BROWSER", "REQUIRE_GSTREAMER") if os.environ.get(v) == "1"]
    if required:
        pytest.fail(f"{'/'.join(required)}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def chromium(profile: Path, size: tuple[int, int] = (1280, 900), lang: str = "en-US") -> Iterator[webdriver.Chrome]:
    """A headless Chromium whose every process is gone when the block ends. ``lang``: what the browser asks for
    (``--lang`` and Accept-Language / navigator.languages)."""
    require_browser()
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never reach for the network
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    options.add_argument(f"--lang={lang}")
    options.add_experimental_option("prefs", {"intl.accept_languages": lang})
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(str(CHROMEDRIVER), log_output=str(profile.parent / f"{profile.name}-chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    spawned: list[psutil.Process] = []
    try:
        spawned = psutil.Process(driver.service.process.pid).children(recursive=True)
        yield driver
    finally:
        driver.quit()
    _gone, alive = psutil.wait_procs(spawned, timeout=10)
    alive = [p for p in alive if _running(p)]
    assert not alive, f"browser processes outlived driver.quit(): {alive}"


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def poll(fn: Callable[[], T | None], what: str, timeout: float = 20.0, interval: float = 0.1) -> T:
    """Call ``fn`` until it returns something truthy (returned); fail at the deadline naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
        except Exception as exc:  # a stale element between renders: try again
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
        time.sleep(interval)
