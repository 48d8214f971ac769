"""Live view in the console, in a real browser: the real recorder records the demo RTSP camera beside the API
(tests/support/live.py, as ``nvr serve``), the officer opens the camera's live screen and the video plays (its
``currentTime`` advances); an approver suspends the grant and the console shows the stream ended, with the API's
reason in the banner."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from tests.api.test_live import PURPOSE, camera, pattern, site  # noqa: F401  - the fixtures
from tests.console.conftest import Console, _shots
from tests.support.browser import chromium, poll
from tests.support.live import LiveSite

VIDEO = "const v = document.getElementById('live'); return {t: v.currentTime, ready: v.readyState, w: v.videoWidth};"


def test_live_view_plays_and_ends_when_the_grant_is_suspended(site: LiveSite, tmp_path: Path) -> None:  # noqa: F811
    g = site.grant("boss", "olga", ["cam1"], actions=["live", "playback"])
    with chromium(tmp_path / "profile") as driver:
        console = Console(cast(Any, site), driver, _shots(tmp_path))
        console.login("olga")
        console.js(f"sessionStorage.setItem('nvr.purpose.{site.ids['olga']}', arguments[0])", PURPOSE["purpose"])
        console.open("/cameras/cam1")
        console.find("#go-live").click()
        console.find("#live-state[data-state='playing']")
        first = poll(lambda: (v := console.js(VIDEO))["ready"] >= 2 and v["w"] > 0 and v, "a decoded live frame")
        assert first["w"] == 320
        # It is live: the playing position moves on by more than a second.
        poll(lambda: console.js(VIDEO)["t"] > first["t"] + 1.0, "currentTime to advance", timeout=15)
        console.screenshot("officer-live")
        (start,) = site.events("live.start")
        assert (start.outcome, start.purpose, start.actor_id) == ("allowed", PURPOSE["purpose"], site.ids["olga"])

        with site.client("boss") as c:
            suspended_ms = time.time() * 1000
            assert c.post(f"/api/v1/grants/{g['id']}/suspend", json={"reason": "review"}).status_code == 200
        ended = console.find("#live-state[data-ended-at]", timeout=10)
        ended_after_s = (int(ended.get_attribute("data-ended-at") or 0) - suspended_ms) / 1000
        print(f"the console showed the live stream ended {ended_after_s:.2f} s after the suspension")
        assert ended_after_s <= 2.5
        assert "grant_suspended" in console.error_text()
        assert console.find("#live-state").get_attribute("data-state") == "ended"
    ends = site.events("live.end")
    assert [(e.outcome, e.reason) for e in ends] == [("terminated", "grant_suspended")]
