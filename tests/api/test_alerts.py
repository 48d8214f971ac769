"""Abnormal-use detection: each rule fires on its own trigger and not below it; a suspending rule stops the user's
footage from the next request on; an approver's review (API or CLI) restores it; nobody clears their own alert."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
import zoneinfo
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from nvr.clock import iso
from nvr.models import Alert, AuditEvent, Grant
from tests.api.conftest import PASSWORD, Api

SEC = 1_000_000
V1 = "/api/v1"
CAMS = ["cam-a", "cam-b", "cam-c", "cam-d"]
# Every rule out of the way: each test turns on the one it is about.
QUIET = {
    "alert_footage_hours_per_hour": 10_000.0,
    "alert_cameras_per_hour": 10_000,
    "alert_denials_per_hour": 10_000,
    "alert_destinations_per_day": 10_000,
    "alert_off_hours": "",
    "alert_unusual_cameras_per_hour": 10_000,
}


def _quiet(api: Api, **rules: Any) -> None:
    for key, value in {**QUIET, **rules}.items():
        setattr(api.rt.settings, key, value)


def _world(api: Api, cams: list[str] = CAMS, max_streams: int = 2) -> dict[str, Any]:
    """Cameras with 12 s of footage each (a day ago), approvers, an officer with one grant on them all, and one
    person of each reading role."""
    starts = {cam: api.camera(cam, segments=6) for cam in cams}
    for name, roles in {
        "boss": ["approver"],
        "bess": ["approver"],
        "olga": ["officer"],
        "audrey": ["auditor"],
        "root": ["admin"],
        "opal": ["operator"],
        "vic": ["viewer"],
    }.items():
        api.user(name, roles)
    grant = api.grant("boss", "olga", cams, max_streams=max_streams)
    return {"s0": starts[cams[0]][0], "grant": grant}


def _play(api: Api, who: str, cam: str, start_us: int, end_us: int) -> tuple[int, str | None]:
    with api.client(who) as c:
        r = c.get(f"{V1}/cameras/{cam}/playback", params={"start": iso(start_us), "end": iso(end_us), "purpose": "x"})
    return r.status_code, (r.json()["error"]["code"] if r.status_code != 200 else None)


def _alerts(api: Api, rule: str | None = None) -> list[Alert]:
    with api.rt.db.session() as s:
        q = select(Alert).order_by(Alert.id)
        return list(s.scalars(q.where(Alert.rule == rule) if rule else q))


def _events(api: Api, action: str) -> list[AuditEvent]:
    with api.rt.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def _grant_state(api: Api, grant_id: int) -> tuple[str, str | None]:
    with api.rt.db.session() as s:
        g = s.get(Grant, grant_id)
        assert g is not None
        return g.state, g.state_reason


def _review(api: Api, who: str, alert_id: int, decision: str = "restore", note: str = "checked with the unit"):
    with api.client(who) as c:
        return c.post(f"{V1}/alerts/{alert_id}/review", json={"decision": decision, "note": note})


def _code(r) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def _refused_twice(api: Api, who: str) -> None:
    with api.client(who) as c:
        for _ in range(2):
            assert _code(c.get(f"{V1}/users")) == (403, "role_forbidden")


def _advance_to(api: Api, tz: zoneinfo.ZoneInfo, hhmm: str) -> None:
    """Move the clock to the next time the site's wall clock shows ``hhmm`` (whatever daylight saving does)."""
    now = dt.datetime.fromtimestamp(api.clock.now_us() / SEC, tz)
    h, m = map(int, hhmm.split(":"))
    target = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if target <= now:
        target = (now + dt.timedelta(days=1)).replace(hour=h, minute=m, second=0, microsecond=0)
    api.clock.advance((int(target.timestamp()) * SEC - api.clock.now_us()) / SEC + 0.5)  # half a second past
    assert dt.datetime.fromtimestamp(api.clock.now_us() / SEC, tz).strftime("%H:%M") == hhmm


# --- footage volume: the whole cycle -------------------------------------------------------------------------------
def test_footage_volume_suspends_from_the_next_request_and_an_approvers_review_restores(api: Api) -> None:
    _quiet(api, alert_footage_hours_per_hour=15 / 3600)  # 15 s of footage in any hour
    w = _world(api)
    s0, gid = w["s0"], w["grant"]["id"]
    assert _play(api, "olga", "cam-a", s0, s0 + 10 * SEC) == (200, None)
    assert _play(api, "olga", "cam-a", s0, s0 + 10 * SEC) == (200, None)  # the same footage again: still 10 s
    assert _play(api, "olga", "cam-b", s0, s0 + 5 * SEC) == (200, None)  # 15 s: at the limit, not above it
    assert _alerts(api) == []
    assert _play(api, "olga", "cam-b", s0 + 5 * SEC, s0 + 6 * SEC) == (200, None)  # 16 s: this one trips, completes
    (alert,) = _alerts(api)
    assert (alert.rule, alert.user_id, alert.state) == ("footage_volume", api.ids["olga"], "open")
    assert alert.suspended_grants == str(gid)
    assert alert.detail.startswith("0:00:16 (h:mm:ss) of footage") and "limit 0:00:15" in alert.detail
    assert _grant_state(api, gid) == ("suspended", f"alert:{alert.id} footage_volume")
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (403, "grant_suspended")  # the very next request

    (raised,) = _events(api, "alert.raise")
    assert raised.actor_name == "system" and raised.object_id == f"alert:{alert.id}"
    assert f"user {api.ids['olga']}: footage_volume" in (raised.reason or "")
    (suspended,) = [e for e in _events(api, "grant.suspend") if e.object_id == f"grant:{gid}"]
    assert suspended.seq == raised.seq + 1 and suspended.actor_name == "system"
    trip = [e for e in _events(api, "playback.start") if e.seq < raised.seq][-1]
    assert trip.request_id == raised.request_id  # the same request, the same transaction

    with api.client() as c:
        health = c.get(f"{V1}/health").json()
        assert health["status"] == "degraded" and "abnormal_use" in health["alarms"]
    with api.client("root") as c:
        detail = c.get(f"{V1}/system/health").json()
        assert detail["alerts"]["open"] == 1 and detail["alerts"]["by_rule"]["footage_volume"] == 1
        assert "abnormal_use" in detail["alarms"]
        metrics = c.get(f"{V1}/metrics").text
    assert 'nvr_alerts_open{rule="footage_volume"} 1.0' in metrics
    assert 'nvr_alerts_open{rule="camera_spread"} 0.0' in metrics

    assert _code(_review(api, "olga", alert.id)) == (403, "role_forbidden")  # not an approver
    assert _code(_review(api, "boss", alert.id, decision="maybe")) == (422, "alert_decision_invalid")
    assert _code(_review(api, "boss", alert.id, note="  ")) == (422, "note_invalid")
    r = _review(api, "boss", alert.id)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["alert"]["state"] == "restored" and body["alert"]["reviewed_by"]["username"] == "boss"
    assert (body["resumed_grants"], body["still_suspended"], body["held_by_alert"]) == ([gid], [], None)
    assert _grant_state(api, gid) == ("active", None)
    assert _code(_review(api, "bess", alert.id, decision="uphold")) == (409, "alert_reviewed")
    with api.client() as c:
        assert "abnormal_use" not in c.get(f"{V1}/health").json()["alarms"]

    # The review settled what came before it: the next request works, although the hour still holds 16 s.
    assert _play(api, "olga", "cam-a", s0, s0 + 10 * SEC) == (200, None)
    assert len(_alerts(api)) == 1
    # New excess after the review fires again.
    assert _play(api, "olga", "cam-b", s0, s0 + 6 * SEC) == (200, None)
    assert [(a.rule, a.state) for a in _alerts(api)] == [("footage_volume", "restored"), ("footage_volume", "open")]
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (403, "grant_suspended")
    reviews = [e for e in _events(api, "alert.review") if e.outcome == "ok"]
    assert [e.actor_name for e in reviews] == ["Boss (boss)"]
    assert [e.object_id for e in _events(api, "grant.resume")] == [f"grant:{gid}"]


def test_the_hour_slides(api: Api) -> None:
    _quiet(api, alert_footage_hours_per_hour=15 / 3600)
    s0 = _world(api)["s0"]
    assert _play(api, "olga", "cam-a", s0, s0 + 10 * SEC) == (200, None)
    api.clock.advance(3601)
    assert _play(api, "olga", "cam-b", s0, s0 + 10 * SEC) == (200, None)  # the first 10 s left the hour
    assert _alerts(api) == []
    api.clock.advance(1800)
    assert _play(api, "olga", "cam-c", s0, s0 + 6 * SEC) == (200, None)  # 16 s within the last hour
    assert [a.rule for a in _alerts(api)] == ["footage_volume"]


# --- the other rules, each on its own trigger -----------------------------------------------------------------------
def test_camera_spread_fires_above_the_number_of_cameras(api: Api) -> None:
    _quiet(api, alert_cameras_per_hour=2)
    w = _world(api)
    s0 = w["s0"]
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (200, None)
    assert _play(api, "olga", "cam-b", s0, s0 + SEC) == (200, None)
    assert _play(api, "olga", "cam-a", s0 + SEC, s0 + 2 * SEC) == (200, None)
    assert _alerts(api) == []
    assert _play(api, "olga", "cam-c", s0, s0 + SEC) == (200, None)
    (alert,) = _alerts(api)
    assert alert.rule == "camera_spread" and alert.detail.startswith("3 cameras")
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (403, "grant_suspended")


def test_repeated_denials_fire_above_the_limit_and_suspend(api: Api) -> None:
    _quiet(api, alert_denials_per_hour=3)
    w = _world(api)
    s0 = w["s0"]
    with api.client("olga") as c:
        for _ in range(3):
            assert _code(c.get(f"{V1}/users")) == (403, "role_forbidden")
    assert _alerts(api) == []
    with api.client("olga") as c:
        assert _code(c.get(f"{V1}/cameras/not-mine/recordings", params={"start": iso(s0), "end": iso(s0 + SEC)})) == (
            404,
            "camera_not_found",
        )
    (alert,) = _alerts(api)
    assert alert.rule == "repeated_denials" and alert.detail.startswith("4 refused")
    assert _grant_state(api, w["grant"]["id"])[0] == "suspended"
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (403, "grant_suspended")
    # Anonymous refusals are nobody's: they never raise an alert about a user.
    with api.client() as c:
        for _ in range(5):
            assert c.get(f"{V1}/alerts").status_code == 401
    assert len(_alerts(api)) == 1


def test_off_hours_uses_the_site_time_zone_once_a_night(api: Api) -> None:
    tz = zoneinfo.ZoneInfo("Europe/Berlin")
    _quiet(api, alert_off_hours="22-06")
    api.rt.settings.site_timezone = "Europe/Berlin"
    _advance_to(api, tz, "21:30")
    s0 = _world(api)["s0"]
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (200, None)  # 21:30 site time: the working day
    assert _alerts(api) == []
    _advance_to(api, tz, "22:15")
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (200, None)
    (alert,) = _alerts(api)
    assert alert.rule == "off_hours" and "22:15 site time (Europe/Berlin)" in alert.detail
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (200, None)  # off_hours does not suspend by default
    _advance_to(api, tz, "23:30")  # the same night
    assert _play(api, "olga", "cam-b", s0, s0 + SEC) == (200, None)
    assert len(_alerts(api)) == 1
    assert _review(api, "boss", alert.id, decision="uphold").status_code == 200
    _advance_to(api, tz, "00:00")  # still the same night: one alert per night, reviewed or not
    assert _play(api, "olga", "cam-b", s0, s0 + SEC) == (200, None)
    assert len(_alerts(api)) == 1
    _advance_to(api, tz, "06:30")  # the working day again
    assert _play(api, "olga", "cam-b", s0, s0 + SEC) == (200, None)
    assert len(_alerts(api)) == 1
    _advance_to(api, tz, "22:30")  # the next night
    assert _play(api, "olga", "cam-b", s0, s0 + SEC) == (200, None)
    assert [(a.rule, a.state) for a in _alerts(api)] == [("off_hours", "upheld"), ("off_hours", "open")]


def test_unusual_cameras_are_those_not_retrieved_in_the_usual_days(api: Api) -> None:
    _quiet(api)
    s0 = _world(api, cams=[*CAMS, "cam-e"])["s0"]
    for cam in ("cam-a", "cam-b"):  # the usual set (a newcomer's every camera is unusual: see the docs)
        assert _play(api, "olga", cam, s0, s0 + SEC) == (200, None)
    api.clock.advance(2 * 3600)
    _quiet(api, alert_unusual_cameras_per_hour=1, alert_usual_days=30)
    for cam in ("cam-a", "cam-b", "cam-c"):  # cam-c: one camera outside the usual set, at the limit
        assert _play(api, "olga", cam, s0, s0 + SEC) == (200, None)
    assert _alerts(api) == []
    assert _play(api, "olga", "cam-d", s0, s0 + SEC) == (200, None)  # the second
    (alert,) = _alerts(api)
    assert alert.rule == "unusual_cameras" and "cam-c, cam-d" in alert.detail and "cam-a" not in alert.detail
    assert _play(api, "olga", "cam-e", s0, s0 + SEC) == (200, None)  # an alert, not a suspension, by default
    assert len(_alerts(api)) == 1


def _bundle(api: Api) -> tuple[int, int]:
    """An approved, finished export of cam-a filed by off1 (co-signed by off2, approved by boss)."""
    api.rt.settings.export_max_downloads = 20
    starts = api.camera("cam-a", segments=2)
    api.user("off1", ["officer"])
    api.user("off2", ["officer"])
    api.user("boss", ["approver"])
    grant = api.grant("boss", "off1", ["cam-a"])
    body = {
        "cameras": ["cam-a"],
        "start": iso(starts[0]),
        "end": iso(starts[0] + 2 * SEC),
        "purpose": "robbery at the north gate",
        "case_ref": "CASE-7",
        "legal_basis": "letter 7",
        "recipient": "City Court",
        "destination": "sealed USB drive 4",
    }
    with api.client("off1") as c:
        rid = c.post(f"{V1}/exports", json=body).json()["id"]
    with api.client("off2") as c:
        assert c.post(f"{V1}/exports/{rid}/cosign").status_code == 200
    with api.client("boss") as c:
        assert c.post(f"{V1}/exports/{rid}/approve", json={"reason": "ok"}).json()["state"] == "approved"
    with api.client("off1") as c:
        assert c.post(f"{V1}/exports/{rid}/job").status_code == 202
        deadline = time.monotonic() + 60
        while c.get(f"{V1}/exports/{rid}").json()["job"]["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    return rid, grant["id"]


def test_many_download_destinations(api: Api) -> None:
    _quiet(api, alert_destinations_per_day=1)
    rid, gid = _bundle(api)
    with api.client("off1") as c:
        for dest in ("Sealed USB drive 4", "  sealed usb   DRIVE 4 "):  # one destination, written twice
            assert c.get(f"{V1}/exports/{rid}/bundle", params={"destination": dest}).status_code == 200
        assert _alerts(api) == []
        assert c.get(f"{V1}/exports/{rid}/bundle", params={"destination": "my laptop"}).status_code == 200
    (alert,) = _alerts(api)
    assert alert.rule == "many_destinations" and alert.detail.startswith("2 download destinations")
    assert _grant_state(api, gid)[0] == "suspended"


# --- who may see and decide; what a hostile user cannot do ----------------------------------------------------------
def test_who_reads_alerts(api: Api) -> None:
    _quiet(api, alert_denials_per_hour=1)
    _world(api)
    _refused_twice(api, "olga")
    (alert,) = _alerts(api)
    _quiet(api)  # the readers' own refusals below would raise alerts about them
    for who in ("boss", "audrey", "root"):
        with api.client(who) as c:
            listed = c.get(f"{V1}/alerts", params={"state": "open"})
            assert listed.status_code == 200, (who, listed.text)
            assert [a["id"] for a in listed.json()["alerts"]] == [alert.id]
            one = c.get(f"{V1}/alerts/{alert.id}").json()
            assert one["user"]["username"] == "olga" and one["suspends"] is True
            assert _code(c.get(f"{V1}/alerts/{alert.id + 1}")) == (404, "alert_not_found")
            assert _code(c.get(f"{V1}/alerts/99999999999999999999")) == (404, "alert_not_found")
            assert _code(c.get(f"{V1}/alerts", params={"state": "closed"})) == (422, "alert_state_invalid")
    for who in ("olga", "opal", "vic"):
        with api.client(who) as c:
            assert _code(c.get(f"{V1}/alerts")) == (403, "role_forbidden")
            assert _code(c.get(f"{V1}/alerts/{alert.id}")) == (403, "role_forbidden")
    for who in ("audrey", "root"):  # readers, not deciders
        assert _code(_review(api, who, alert.id)) == (403, "role_forbidden")
    assert {e.actor_name for e in _events(api, "alert.list") if e.outcome == "allowed"} == {
        "Boss (boss)",
        "Audrey (audrey)",
        "Root (root)",
    }


def test_a_user_cannot_clear_or_dodge_their_own_alert(api: Api) -> None:
    _quiet(api, alert_cameras_per_hour=1)
    w = _world(api)
    s0, gid = w["s0"], w["grant"]["id"]
    api.user("ann", ["approver", "officer"])  # an approver who also uses footage
    ann_grant = api.grant("boss", "ann", ["cam-a", "cam-b"])["id"]
    assert _play(api, "ann", "cam-a", s0, s0 + SEC) == (200, None)
    assert _play(api, "ann", "cam-b", s0, s0 + SEC) == (200, None)
    (alert,) = _alerts(api)
    assert alert.user_id == api.ids["ann"]
    assert _code(_review(api, "ann", alert.id)) == (403, "alert_self_review")
    with api.client("ann") as c:
        assert _code(c.post(f"{V1}/grants/{ann_grant}/resume")) == (403, "grant_self")
    assert _grant_state(api, ann_grant)[0] == "suspended"
    assert _alerts(api)[0].state == "open"

    # A grant issued while the alert is open is suspended into it at its first use.
    new = api.grant("bess", "ann", ["cam-c"])["id"]
    assert _play(api, "ann", "cam-c", s0, s0 + SEC) == (200, None)
    assert _play(api, "ann", "cam-c", s0, s0 + SEC) == (403, "grant_suspended")
    assert _grant_state(api, new) == ("suspended", f"alert:{alert.id} camera_spread")
    r = _review(api, "bess", alert.id)
    assert r.status_code == 200 and sorted(r.json()["resumed_grants"]) == sorted([ann_grant, new])
    assert _play(api, "ann", "cam-c", s0, s0 + SEC) == (200, None)
    assert _grant_state(api, gid)[0] == "active"  # olga's grant was never touched


def test_restore_resumes_only_what_the_alert_still_holds(api: Api) -> None:
    _quiet(api, alert_denials_per_hour=1)
    w = _world(api)
    s0, gid = w["s0"], w["grant"]["id"]
    other = api.grant("boss", "olga", ["cam-a"])["id"]
    gone = api.grant("boss", "olga", ["cam-b"])["id"]
    _refused_twice(api, "olga")
    (alert,) = _alerts(api)
    assert sorted(int(x) for x in alert.suspended_grants.split(",")) == sorted([gid, other, gone])
    with api.client("boss") as c:
        assert c.post(f"{V1}/grants/{gone}/revoke", json={"reason": "case closed"}).status_code == 200
        assert c.post(f"{V1}/grants/{other}/resume").status_code == 200  # resumed by hand...
        assert c.post(f"{V1}/grants/{other}/suspend", json={"reason": "by hand"}).status_code == 200  # ...and again
    r = _review(api, "bess", alert.id)
    assert r.status_code == 200 and r.json()["resumed_grants"] == [gid]
    assert _grant_state(api, gone)[0] == "revoked"
    assert _grant_state(api, other) == ("suspended", "by hand")
    assert _play(api, "olga", "cam-c", s0, s0 + SEC) == (200, None)


def test_restoring_one_alert_hands_the_grants_to_another_open_one(api: Api) -> None:
    _quiet(api, alert_denials_per_hour=1, alert_cameras_per_hour=1)
    w = _world(api)
    s0, gid = w["s0"], w["grant"]["id"]
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (200, None)
    assert _play(api, "olga", "cam-b", s0, s0 + SEC) == (200, None)  # camera_spread: suspends
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (403, "grant_suspended")
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (403, "grant_suspended")  # repeated_denials
    spread, denials = _alerts(api)
    assert (spread.rule, denials.rule) == ("camera_spread", "repeated_denials")
    r = _review(api, "boss", spread.id).json()
    assert (r["resumed_grants"], r["still_suspended"], r["held_by_alert"]) == ([], [gid], denials.id)
    assert _grant_state(api, gid) == ("suspended", f"alert:{denials.id} repeated_denials")
    r = _review(api, "boss", denials.id).json()
    assert r["resumed_grants"] == [gid]
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (200, None)


# --- concurrency ---------------------------------------------------------------------------------------------------
def test_parallel_reviews_of_one_alert_exactly_one_wins(api: Api) -> None:
    _quiet(api, alert_denials_per_hour=1)
    w = _world(api)
    _refused_twice(api, "olga")
    (alert,) = _alerts(api)
    _quiet(api)  # the losers' 409s are refusals too
    barrier = threading.Barrier(24)

    def go(i: int) -> int:
        with api.client("boss" if i % 2 else "bess") as c:
            barrier.wait()
            body = {"decision": "restore" if i % 3 else "uphold", "note": f"review {i}"}
            return c.post(f"{V1}/alerts/{alert.id}/review", json=body).status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        codes = list(pool.map(go, range(24)))
    assert sorted(codes) == [200] + [409] * 23
    reviews = [e for e in _events(api, "alert.review") if e.outcome == "ok"]
    assert len(reviews) == 1
    (final,) = _alerts(api)
    resumed = _events(api, "grant.resume")
    if final.state == "restored":
        assert [e.object_id for e in resumed] == [f"grant:{w['grant']['id']}"]
    else:
        assert final.state == "upheld" and resumed == []


def test_parallel_refusals_raise_one_alert(api: Api) -> None:
    _quiet(api, alert_denials_per_hour=5)
    _world(api)
    barrier = threading.Barrier(24)

    def go(_: int) -> int:
        with api.client("olga") as c:
            barrier.wait()
            return c.get(f"{V1}/users").status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        assert set(pool.map(go, range(24))) == {403}
    (alert,) = _alerts(api)
    assert alert.rule == "repeated_denials"
    assert len(_events(api, "alert.raise")) == 1


def test_parallel_retrievals_cannot_slip_under_a_limit(api: Api) -> None:
    """Each request is judged after all the user's earlier ones: parallel requests are counted one by one, so the
    fourth camera trips the rule whatever the timing. Requests whose grant check had passed may finish; the others,
    and the next one, are refused."""
    cams = [f"cam-{i}" for i in range(8)]
    _quiet(api, alert_cameras_per_hour=3)
    s0 = _world(api, cams=cams, max_streams=16)["s0"]
    barrier = threading.Barrier(16)

    def go(i: int) -> tuple[int, str | None]:
        barrier.wait()
        return _play(api, "olga", cams[i % 8], s0, s0 + SEC)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(go, range(16)))
    assert {r for r in results if r[0] != 200} <= {(403, "grant_suspended"), (429, "stream_limit")}
    (alert,) = _alerts(api, "camera_spread")
    assert alert.detail.startswith("4 cameras")  # judged one at a time: exactly the fourth camera trips it
    assert _play(api, "olga", cams[0], s0, s0 + SEC) == (403, "grant_suspended")
    served = [e for e in _events(api, "playback.start") if e.outcome == "allowed"]
    assert len(served) >= 4 and len({e.camera_id for e in served}) >= 4


# --- the command line, through the same service functions ---------------------------------------------------------
def _nvr(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nvr", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def test_cli_lists_and_reviews_with_the_same_rules(api: Api, nvr_env: dict[str, str]) -> None:
    _quiet(api, alert_cameras_per_hour=1)
    w = _world(api)
    s0, gid = w["s0"], w["grant"]["id"]
    api.user("ann", ["approver", "officer"])
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (200, None)
    assert _play(api, "olga", "cam-b", s0, s0 + SEC) == (200, None)
    (alert,) = _alerts(api)

    listed = _nvr(nvr_env, "alerts", "list", "--state", "open", "--json")
    assert listed.returncode == 0, listed.stderr
    (shown,) = json.loads(listed.stdout)["alerts"]
    assert (shown["id"], shown["rule"], shown["user"]["username"]) == (alert.id, "camera_spread", "olga")
    assert shown["suspended_grants"] == [gid]

    review = ["alerts", "review", str(alert.id), "--decision", "restore", "--note", "spoke to olga", "--password-stdin"]
    bad = _nvr(nvr_env, *review, "--as", "boss", stdin="wrong password\n")
    assert bad.returncode != 0 and "login_failed" in bad.stderr
    officer = _nvr(nvr_env, *review, "--as", "olga", stdin=PASSWORD + "\n")
    assert officer.returncode != 0 and "role_forbidden" in officer.stderr
    assert _alerts(api)[0].state == "open" and _grant_state(api, gid)[0] == "suspended"

    ok = _nvr(nvr_env, *review, "--as", "boss", "--json", stdin=PASSWORD + "\n")
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["alert"]["state"] == "restored" and out["resumed_grants"] == [gid]
    again = _nvr(nvr_env, *review, "--as", "ann", stdin=PASSWORD + "\n")
    assert again.returncode != 0 and "alert_reviewed" in again.stderr
    assert _play(api, "olga", "cam-a", s0, s0 + SEC) == (200, None)

    # The same review through the API and through the CLI leaves the same audit events.
    (cli_review,) = [e for e in _events(api, "alert.review") if e.outcome == "ok"]
    assert (cli_review.actor_id, cli_review.actor_name, cli_review.user_agent) == (
        api.ids["boss"],
        "Boss (boss)",
        "nvr-cli",
    )
    assert cli_review.object_id == f"alert:{alert.id}" and cli_review.reason.startswith("restore: spoke to olga")
    assert [e.object_id for e in _events(api, "grant.resume")] == [f"grant:{gid}"]


def test_cli_refuses_a_self_review(api: Api, nvr_env: dict[str, str]) -> None:
    _quiet(api, alert_cameras_per_hour=1)
    s0 = _world(api)["s0"]
    api.user("ann", ["approver", "officer"])
    api.grant("boss", "ann", ["cam-a", "cam-b"])
    assert _play(api, "ann", "cam-a", s0, s0 + SEC) == (200, None)
    assert _play(api, "ann", "cam-b", s0, s0 + SEC) == (200, None)
    (alert,) = _alerts(api)
    args = ["alerts", "review", str(alert.id), "--decision", "restore", "--note", "mine", "--as", "ann"]
    own = _nvr(nvr_env, *args, "--password-stdin", stdin=PASSWORD + "\n")
    assert own.returncode != 0 and "alert_self_review" in own.stderr
    assert _alerts(api)[0].state == "open"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("site_timezone", "Mars/Olympus", "not an IANA time zone"),
        ("alert_off_hours", "22-30", "whole local hours"),
        ("alert_suspend_rules", '["footage_volume", "camera_sprad"]', "unknown rule(s) camera_sprad"),
    ],
)
def test_bad_alert_settings_are_refused_at_start(nvr_env: dict[str, str], key: str, value: str, message: str) -> None:
    out = _nvr({**nvr_env, f"NVR_{key.upper()}": value}, "alerts", "list")
    assert out.returncode == 2 and message in out.stderr


def test_footage_volume_counts_overlapping_windows_once(api: Api) -> None:
    _quiet(api, alert_footage_hours_per_hour=12.5 / 3600)
    s0 = _world(api)["s0"]
    for a, b in ((0, 10), (5, 12), (11, 12)):  # the union is 0..12 s
        assert _play(api, "olga", "cam-a", s0 + a * SEC, s0 + b * SEC) == (200, None)
    assert _alerts(api) == []
    assert _play(api, "olga", "cam-b", s0, s0 + SEC) == (200, None)  # 13 s
    (alert,) = _alerts(api)
    assert alert.rule == "footage_volume" and alert.detail.startswith("0:00:13")


def test_a_suspension_never_deadlocks_against_a_grant_changed_by_hand(api: Api) -> None:
    """A person changing a grant locks it, then appends the audit event; a judgement holds the audit head, then
    suspends the grants. Crossed, they would deadlock (PostgreSQL aborts one after a second: a 500). The judgement
    waits briefly for a locked grant, then leaves it to the sweep of the user's next request."""
    from sqlalchemy import update

    from api import alerts, audit, people

    _quiet(api, alert_denials_per_hour=1)
    gid = _world(api)["grant"]["id"]
    settings, db, now = api.rt.settings, api.rt.db, api.clock.now_us()
    with db.session() as s:
        olga = people.user_actor(people.get_user(s, api.ids["olga"]))
        boss = people.user_actor(people.get_user(s, api.ids["boss"]))
    meta = audit.RequestMeta("10.0.0.9", "test", "r")

    def refused() -> None:
        with db.session() as s:
            alerts.record(s, settings, now, olga, meta, audit.Event("playback.start", "denied", reason="x"))

    refused()
    errors: list[BaseException] = []

    def judge() -> None:
        try:
            refused()  # the second refusal: repeated_denials fires and suspends
        except BaseException as exc:
            errors.append(exc)

    by_hand = db._sessions()
    try:
        by_hand.execute(update(Grant).where(Grant.id == gid).values(updated_us=Grant.updated_us))  # the grant's lock
        worker = threading.Thread(target=judge)
        worker.start()
        time.sleep(0.5)  # PostgreSQL: the judgement holds the audit head and waits for the grant
        audit.record(by_hand, now, boss, meta, audit.Event("grant.suspend", "ok", object_id=f"grant:{gid}"))
        by_hand.commit()
    finally:
        by_hand.close()
    worker.join(timeout=30)
    assert not worker.is_alive() and errors == []
    (alert,) = _alerts(api)
    assert alert.rule == "repeated_denials"
    refused()  # the user's next request: whatever was left active is swept into the open alert
    assert _grant_state(api, gid) == ("suspended", f"alert:{alert.id} repeated_denials")
    assert _alerts(api)[0].suspended_grants == str(gid)
