"""A real browser watches live view: headless Chromium (Selenium, as tests/api/test_browser.py) on a page of the
API's own origin fetches ``/cameras/{id}/live`` with a bearer token and plays it through Media Source Extensions,
the way a browser console would; the real recorder records the demo camera beside the API. Then the grant is
suspended, and the stream must end within 2 s.
"""

from __future__ import annotations

import time
from typing import Any

from selenium import webdriver

from tests.api.test_browser import browser  # noqa: F401  - the fixture
from tests.api.test_live import LIVE, PURPOSE, camera, pattern, site  # noqa: F401  - the fixtures
from tests.support.live import LiveSite
from tests.support.recording import wait_for

PAGE = """
const url = arguments[0], token = arguments[1];
document.open();
document.write('<!doctype html><title>live</title><body style="margin:0">'
    + '<video id="v" muted autoplay playsinline width="160" height="120"></video></body>');
document.close();
const v = document.getElementById('v');
v.muted = true;
window.live = {bytes: 0, endedAt: null, error: null, codecs: null, supported: null};
const ms = new MediaSource();
v.src = URL.createObjectURL(ms);
ms.addEventListener('sourceopen', async () => {
    try {
        const r = await fetch(url, {headers: {Authorization: 'Bearer ' + token}, cache: 'no-store'});
        if (r.status !== 200) throw new Error('status ' + r.status + ': ' + await r.text());
        const type = 'video/mp4; codecs="' + r.headers.get('X-Nvr-Codecs') + '"';
        live.codecs = type;
        live.supported = MediaSource.isTypeSupported(type);
        const sb = ms.addSourceBuffer(type);
        const queue = [];
        const pump = () => { if (!sb.updating && queue.length) sb.appendBuffer(queue.shift()); };
        sb.addEventListener('updateend', () => {
            // A live stream's first fragment is not at time 0: start at what is buffered, keep near the live edge.
            if (v.buffered.length && (v.currentTime < v.buffered.start(0) || v.buffered.end(0) - v.currentTime > 3))
                v.currentTime = v.buffered.start(0) > v.currentTime ? v.buffered.start(0) : v.buffered.end(0) - 0.5;
            pump();
        });
        const reader = r.body.getReader();
        for (;;) {
            const {done, value} = await reader.read();
            if (done) break;
            live.bytes += value.length;
            queue.push(value);
            pump();
        }
    } catch (e) {
        live.error = String(e);
    }
    live.endedAt = Date.now();
});
const p = v.play();
if (p) p.catch(e => { live.playRejected = String(e); });
"""

STATE = """
const v = document.getElementById('v');
return {
    mediaError: v.error ? v.error.code + ' ' + v.error.message : null,
    readyState: v.readyState,
    videoWidth: v.videoWidth,
    currentTime: v.currentTime,
    paused: v.paused,
    live: window.live,
};
"""


def _state(driver: webdriver.Chrome) -> dict[str, Any]:
    state = driver.execute_script(STATE)
    assert state["mediaError"] is None, state
    return state


def test_headless_chromium_plays_live_view_and_a_suspension_ends_it_within_2_s(
    site: LiveSite,  # noqa: F811
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    g = site.grant("boss", "olga", ["cam1"])
    browser.get(site.url + "/api/v1/health")
    browser.execute_script(
        PAGE, site.url + LIVE + "?purpose=" + PURPOSE["purpose"].replace(" ", "%20"), site.tokens["olga"]
    )

    deadline = time.monotonic() + 20
    while True:
        state = _state(browser)
        assert state["live"]["error"] is None, state
        if state["readyState"] >= 2 and state["videoWidth"] > 0:
            break
        assert time.monotonic() < deadline, f"no decoded live frame: {state}"
        time.sleep(0.1)
    assert state["live"]["supported"] is True, state
    assert (state["videoWidth"]) == 320

    # currentTime advances in real time: more than 1 s of media over at least 1.5 s.
    t0, m0 = state["currentTime"], time.monotonic()
    while True:
        state = _state(browser)
        if time.monotonic() - m0 >= 1.5 and state["currentTime"] - t0 > 1.0:
            break
        assert time.monotonic() - m0 < 15, f"currentTime does not advance: {t0} → {state}"
        time.sleep(0.1)
    assert not state["paused"]
    assert state["live"]["endedAt"] is None

    with site.client("boss") as c:
        suspended_ms = time.time() * 1000
        r = c.post(f"/api/v1/grants/{g['id']}/suspend", json={"reason": "review"})
    assert r.status_code == 200, r.text
    wait_for(lambda: _state(browser)["live"]["endedAt"] is not None, 10, "the browser's stream to end")
    state = _state(browser)
    ended_after_s = (state["live"]["endedAt"] - suspended_ms) / 1000
    print(f"live stream ended in the browser {ended_after_s:.2f} s after the suspension; {state['live']}")
    assert ended_after_s <= 2.0, state
    wait_for(lambda: len(site.events("live.end")) == 1, 10, "live.end")
    (end,) = site.events("live.end")
    assert (end.outcome, end.reason) == ("terminated", "grant_suspended")
    assert end.bytes is not None and end.bytes >= state["live"]["bytes"] > 0
    (start,) = site.events("live.start")
    assert "Chrome" in (start.user_agent or "")
