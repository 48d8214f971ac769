"""Access decisions use the trusted time: a server clock set back does not revive an expired grant or session."""

from __future__ import annotations

from nvr.clock import iso
from tests.api.conftest import DAY_US, Api


def _playback_status(api: Api, who: str, camera: str) -> tuple[int, str | None]:
    now = api.clock.now_us()
    with api.client(who) as c:
        r = c.get(
            f"/api/v1/cameras/{camera}/recordings",
            params={"start": iso(now - DAY_US), "end": iso(now), "purpose": "case work"},
        )
    return r.status_code, (r.json()["error"]["code"] if r.status_code >= 400 else None)


def test_setting_the_clock_back_does_not_revive_an_expired_grant(api: Api) -> None:
    api.camera("cam-1", segments=2)
    api.user("appr", ["approver"])
    api.user("off", ["officer"])
    now = api.clock.now_us()
    api.grant("appr", "off", ["cam-1"], window={"last_days": 30}, valid_until=iso(now + 2 * DAY_US))
    assert _playback_status(api, "off", "cam-1") == (200, None)

    api.clock.advance(3 * 86_400)  # three days pass: the grant has expired
    assert _playback_status(api, "off", "cam-1") == (403, "grant_expired")

    api.clock.step(-3 * 86_400)  # someone sets the wall clock back three days; real (monotonic) time ran on
    assert _playback_status(api, "off", "cam-1") == (403, "grant_expired")


def test_setting_the_clock_back_does_not_revive_an_expired_session(api: Api) -> None:
    api.user("off", ["officer"])
    with api.client("off") as c:
        assert c.get("/api/v1/me").status_code == 200
    api.clock.advance(61 * 86_400)  # the test session lives 60 days
    with api.client("off") as c:
        assert c.get("/api/v1/me").json()["error"]["code"] == "token_expired"
    api.clock.step(-61 * 86_400)
    with api.client("off") as c:
        r = c.get("/api/v1/me")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "token_expired")
