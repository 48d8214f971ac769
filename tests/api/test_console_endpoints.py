"""Read-only endpoints the web console needs beyond the rest of the API: ``GET /system/cameras``, each camera's
recording status as ``nvr status`` shows it, with its recording completeness and online rate."""

from __future__ import annotations

from nvr.models import Gap
from tests.api.conftest import Api
from tests.support import footage

SEC = 1_000_000
URL = "/api/v1/system/cameras"


def _active_camera_with_an_outage(api: Api, camera_id: str, reason: str) -> None:
    """Active from now: 10 s recorded, then a 10 s gap of ``reason``, then 20 s with nothing (40 s in all)."""
    api.camera(camera_id)
    with api.client("chief") as c:
        r = c.post(f"/api/v1/cameras/{camera_id}/state", json={"state": "active", "reason": "installed"})
        assert r.status_code == 200, r.text
    t0 = api.clock.now_us()
    footage.add_segments(api.rt, camera_id, t0, 10 // footage.CLIP_SECONDS)
    with api.rt.db.session() as s:
        s.add(Gap(camera_id=camera_id, start_us=t0 + 10 * SEC, end_us=t0 + 20 * SEC, reason=reason, detail="test"))
        s.commit()


def _status(api: Api, who: str) -> dict[str, dict]:
    with api.client(who) as c:
        r = c.get(URL)
    assert r.status_code == 200, r.text
    return {row["camera_id"]: row for row in r.json()["cameras"]}


def test_anonymous_is_refused(api: Api) -> None:
    with api.client() as c:
        r = c.get(URL)
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth_required"


def test_roles_without_system_monitor_are_refused(api: Api) -> None:
    for role in ("auditor", "approver", "officer", "viewer"):
        api.user(role, [role])
        with api.client(role) as c:
            r = c.get(URL)
        assert r.status_code == 403 and r.json()["error"]["code"] == "role_forbidden", role


def test_admin_sees_completeness_and_online_rate_of_every_camera(api: Api) -> None:
    api.user("chief", ["admin"])
    _active_camera_with_an_outage(api, "cam-net", "disconnected")
    _active_camera_with_an_outage(api, "cam-disk", "storage_full")
    api.camera("cam-new")  # registered, never active: no shares to give
    api.clock.advance(40)
    rows = _status(api, "chief")
    assert sorted(rows) == ["cam-disk", "cam-net", "cam-new"]
    net, disk, new = rows["cam-net"], rows["cam-disk"], rows["cam-new"]
    # 10 s of 40 recorded; the camera dropped off the network for 10 s of them.
    assert net["recorded_share_24h"] == 0.25 and net["online_share_24h"] == 0.75
    assert [g["reason"] for g in net["gaps_24h"]] == ["disconnected"]
    # A full disk is this side's fault: the camera stayed reachable, only the recording is incomplete.
    assert disk["recorded_share_24h"] == 0.25 and disk["online_share_24h"] == 1.0
    assert new["camera_state"] == "registered" and new["state"] == "offline"
    assert new["recorded_share_24h"] is None and new["online_share_24h"] is None
    with api.client("chief") as c:
        events = c.get("/api/v1/audit", params={"action": "system.cameras"})
    assert events.status_code == 403  # admins do not read the audit trail; an auditor does
    api.user("aud", ["auditor"])
    with api.client("aud") as c:
        events = c.get("/api/v1/audit", params={"action": "system.cameras"}).json()["events"]
    assert [(e["actor_id"], e["outcome"], e["reason"]) for e in events] == [
        (api.ids["chief"], "allowed", "3 camera(s)")
    ]


def test_an_operator_sees_only_the_cameras_a_grant_covers(api: Api) -> None:
    api.user("chief", ["admin"])
    api.user("boss", ["approver"])
    api.user("op", ["operator"])
    api.camera("cam-a")
    api.camera("cam-b")
    api.grant("boss", "op", ["cam-a"])
    assert sorted(_status(api, "op")) == ["cam-a"]
    assert sorted(_status(api, "chief")) == ["cam-a", "cam-b"]
