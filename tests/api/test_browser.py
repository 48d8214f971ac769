"""A real browser plays a playback ticket URL: headless Chromium (Debian's chromium and chromium-driver packages,
installed by scripts/install-system-deps) driven by Selenium, with nothing downloaded.

The page is a ``<video muted autoplay playsinline>`` written into a document of the API's own origin
(``/api/v1/health``): loopback page, loopback media, so no data:/opaque-origin, mixed-content or local-network
access rules can get in the way, and no second web server is needed. Without Chromium the test is skipped, unless
``REQUIRE_BROWSER=1`` or ``REQUIRE_GSTREAMER=1`` (set in CI) is set, in which case it fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from sqlalchemy import select

from nvr.clock import iso
from nvr.models import AuditEvent
from tests.support.footage import CLIP_SECONDS

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SEG_US = CLIP_SECONDS * 1_000_000
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
    "--window-size=640,480",
)

PAGE = """
document.open();
document.write('<!doctype html><title>playback</title><body style="margin:0">'
    + '<video id="v" muted autoplay playsinline width="160" height="120"></video></body>');
document.close();
const v = document.getElementById('v');
v.muted = true;
v.src = arguments[0];
const p = v.play();
if (p) p.catch(e => { window.playRejected = String(e); });
"""

STATE = """
const v = document.getElementById('v');
if (!v) return null;
return {
    error: v.error ? {code: v.error.code, message: v.error.message} : null,
    readyState: v.readyState,
    networkState: v.networkState,
    videoWidth: v.videoWidth,
    videoHeight: v.videoHeight,
    currentTime: v.currentTime,
    paused: v.paused,
    ended: v.ended,
    buffered: v.buffered.length ? v.buffered.end(v.buffered.length - 1) : 0,
    playRejected: window.playRejected || null,
};
"""


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    reason = f"headless Chromium unavailable: {', '.join(missing)} missing (install with scripts/install-system-deps)"
    required = [v for v in ("REQUIRE_BROWSER", "REQUIRE_GSTREAMER") if os.environ.get(v) == "1"]
    if required:
        pytest.fail(f"{'/'.join(required)}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    _require_browser()
    # The driver and browser are given by path, so Selenium Manager has nothing to resolve; offline mode makes
    # sure it never reaches for the network should it be consulted anyway.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)  # quits itself if the session cannot start
    spawned: list[psutil.Process] = []
    try:
        spawned = psutil.Process(driver.service.process.pid).children(recursive=True)
        yield driver
    finally:
        driver.quit()
    # quit() ends chromedriver and the browser; make sure no browser process outlived it.
    _gone, alive = psutil.wait_procs(spawned, timeout=10)
    alive = [p for p in alive if _running(p)]
    assert not alive, f"browser processes outlived driver.quit(): {alive}"


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE  # an orphan waits for init to reap it: it has ended
    except psutil.NoSuchProcess:
        return False


def _state(driver: webdriver.Chrome) -> dict[str, Any]:
    state = driver.execute_script(STATE)
    assert state is not None, "the video element is gone"
    return state


def _wait(driver: webdriver.Chrome, ready: Any, what: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll the video's state until ``ready(state)``; fail at once on a media error, or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        state = _state(driver)
        assert state["error"] is None, f"the video failed while waiting for {what}: {state}"
        if ready(state):
            return state
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {state}"
        time.sleep(0.1)


def test_headless_chromium_plays_a_playback_ticket_url_and_it_is_audited(api, browser) -> None:
    starts = api.camera("cam-a", segments=10)
    api.user("boss", ["approver"])
    api.user("olga", ["officer"])
    api.grant("boss", "olga", ["cam-a"])
    start, end = starts[0], starts[-1] + SEG_US
    body = {"start": iso(start), "end": iso(end), "purpose": "browser playback check"}
    with api.client("olga") as c:
        t = c.post("/api/v1/cameras/cam-a/playback-tickets", json=body)
    assert t.status_code == 201, t.text
    url = api.url + t.json()["url"]

    browser.get(api.url + "/api/v1/health")
    browser.execute_script(PAGE, url)
    state = _wait(browser, lambda s: s["readyState"] >= 2 and s["videoWidth"] > 0, "decoded frames")
    assert (state["videoWidth"], state["videoHeight"]) == (160, 120), state

    # currentTime must advance in real time: > 1 s of media over at least 1.5 s of wall clock.
    t0, m0 = _state(browser)["currentTime"], time.monotonic()
    samples = [(0.0, t0)]

    def advanced(s: dict[str, Any]) -> bool:
        elapsed = time.monotonic() - m0
        samples.append((round(elapsed, 2), s["currentTime"]))
        return elapsed >= 1.5 and s["currentTime"] - t0 > 1.0

    state = _wait(browser, advanced, "currentTime to advance", timeout=15)
    assert not state["paused"] and state["playRejected"] is None, state
    print(f"currentTime samples (wall s, media s): {samples}")

    user_agent = browser.execute_script("return navigator.userAgent")
    with api.rt.db.session() as s:
        started = list(
            s.scalars(select(AuditEvent).where(AuditEvent.action == "playback.start").order_by(AuditEvent.seq))
        )
    # Chromium plays the whole URL with one request (the answer says Accept-Ranges: none, so it asks for no range and
    # seeks within what it buffered): the single-use ticket is enough for it, and it is used up.
    (ev,) = started
    assert (ev.outcome, ev.actor_id) == ("allowed", api.ids["olga"])
    assert (ev.camera_id, ev.window_start_us, ev.window_end_us) == ("cam-a", start, end)
    assert ev.purpose == "browser playback check" and ev.case_ref == "CASE-2026-042"
    assert ev.user_agent == user_agent and "Chrome" in user_agent
    with api.client() as anon:
        again = anon.get(url, headers={"User-Agent": user_agent})
        assert (again.status_code, again.json()["error"]["code"]) == (401, "ticket_used")
    print(f"playback.start events: {len(started)}; user agent: {user_agent}")
