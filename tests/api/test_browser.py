"""A real browser plays a playback ticket URL: headless Chromium (Debian's chromium and chromium-driver packages,
installed by scripts/install-system-deps) driven by Selenium, with nothing downloaded.

The page is a ``<video muted autoplay playsinline>`` written into a document of the API's own origin
(``/api/v1/health``): loopback page, loopback media, so no data:/opaque-origin, mixed-content or local-network
access rules can get in the way, and no second web server is needed. Without Chromium the test is skipped, unless
``REQUIRE_BROWSER=1`` or ``REQUIRE_GSTREAMER=1`` (set in CI) is set, in which case it fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from sqlalchemy import select

from nvr.clock import iso
from nvr.models import AuditEvent, ReadPin
from tests.support.browser import chromium
from tests.support.footage import CLIP_SECONDS

SEG_US = CLIP_SECONDS * 1_000_000

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
    seeking: v.seeking,
    ended: v.ended,
    buffered: v.buffered.length ? v.buffered.end(v.buffered.length - 1) : 0,
    playRejected: window.playRejected || null,
};
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path / "chromium-profile", size=(640, 480)) as driver:
        yield driver


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
    # Chromium asks with Range requests (the answer says Accept-Ranges: bytes): however many it sends, they are one
    # playback session, one playback.start (tests/api/test_range.py; the seek test below).
    (ev,) = started
    assert (ev.outcome, ev.actor_id) == ("allowed", api.ids["olga"])
    assert (ev.camera_id, ev.window_start_us, ev.window_end_us) == ("cam-a", start, end)
    assert ev.purpose == "browser playback check" and ev.case_ref == "CASE-2026-042"
    assert ev.user_agent == user_agent and "Chrome" in user_agent
    with api.client() as anon:  # a request without Range never joins the session: the ticket is used
        again = anon.get(url, headers={"User-Agent": user_agent})
        assert (again.status_code, again.json()["error"]["code"]) == (401, "ticket_used")
    print(f"playback.start events: {len(started)}; user agent: {user_agent}")


def test_headless_chromium_seeks_within_one_audited_session(api, browser) -> None:
    starts = api.camera("cam-a", segments=400)  # 800 s, ~30 MB: more than Chromium buffers ahead
    api.user("boss", ["approver"])
    api.user("olga", ["officer"])
    api.grant("boss", "olga", ["cam-a"], max_streams=1)  # every range request of the session is the one stream
    start, end = starts[0], starts[-1] + SEG_US
    body = {"start": iso(start), "end": iso(end), "purpose": "browser seek check"}
    with api.client("olga") as c:
        t = c.post("/api/v1/cameras/cam-a/playback-tickets", json=body)
    assert t.status_code == 201, t.text
    url = api.url + t.json()["url"]

    browser.get(api.url + "/api/v1/health")
    browser.execute_script(PAGE, url)
    _wait(browser, lambda s: s["readyState"] >= 2 and s["videoWidth"] > 0, "decoded frames")
    target = 600.0
    browser.execute_script("document.getElementById('v').currentTime = arguments[0];", target)
    state = _wait(
        browser,
        lambda s: s["readyState"] >= 2 and abs(s["currentTime"] - target) < 3.0 and not s.get("seeking"),
        "the seek to land",
    )
    assert abs(state["currentTime"] - target) < 3.0, state
    with api.rt.db.session() as s:
        (pin,) = s.scalars(select(ReadPin))
        started = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "playback.start")))
    print(f"session after the seek: {pin.requests} request(s) answered, {pin.active} running, {pin.bytes_sent} bytes")
    # The seek was a new Range request of the same URL: it joined the session; one playback.start for the ticket.
    assert pin.kind == "session" and pin.requests + pin.active > 1
    (ev,) = started
    assert ev.outcome == "allowed" and ev.reason.endswith(f"; session; ticket {pin.ticket_id}")
