"""Retention policies through the real API and CLI: the floor and max/min refusals (audited, nothing changed), what
raising and lowering a policy does to existing and later segments' retain_until, assignment, the floor setting, and
that every camera always has exactly one policy."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from sqlalchemy import select, update

from nvr.models import AuditEvent, Segment, SweepBatch
from tests.api import conftest as api_tests
from tests.support import footage

api = api_tests.api  # the real-server fixture of the API tests, shared by name
DAY_US = api_tests.DAY_US
POLICIES = "/api/v1/retention/policies"


def _call(api, who: str, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    with api.client(who) as c:
        r = c.request(method, path, json=body)
    return r.status_code, (r.json() if r.content else None)


def _policies(api) -> dict[str, dict[str, Any]]:
    status, body = _call(api, "auditor", "GET", POLICIES)
    assert status == 200, body
    return {p["name"]: p for p in body["policies"]}


def _retention(api, camera_id: str) -> dict[int, tuple[int, int]]:
    """seq -> (end_us, retain_until_us) of the camera's segments."""
    with api.rt.db.session() as s:
        rows = s.execute(
            select(Segment.seq, Segment.end_us, Segment.retain_until_us).where(Segment.camera_id == camera_id)
        )
        return {seq: (end, until) for seq, end, until in rows}


def _kept_days(api, camera_id: str) -> dict[int, float]:
    return {seq: (until - end) / DAY_US for seq, (end, until) in _retention(api, camera_id).items()}


def _last_event(api, action: str) -> AuditEvent:
    with api.rt.db.session() as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq.desc())).first()
    assert ev is not None, action
    return ev


def test_refusals_are_coded_audited_and_change_nothing(api, nvr_env) -> None:
    api.user("admin", ["admin"])
    api.user("auditor", ["auditor"])
    api.camera("cam-1")
    before = _policies(api)
    assert list(before) == ["default"] and before["default"]["is_default"] and before["default"]["cameras"] == ["cam-1"]

    refusals = [
        ("POST", POLICIES, {"name": "short", "min_days": 29}, 422, "policy_below_floor"),
        ("POST", POLICIES, {"name": "odd", "min_days": 40, "max_days": 35}, 422, "policy_max_below_min"),
        ("POST", POLICIES, {"name": "Not A Slug", "min_days": 40}, 422, "policy_name_invalid"),
        ("POST", POLICIES, {"name": "default", "min_days": 40}, 409, "policy_exists"),
        ("PATCH", f"{POLICIES}/default", {"min_days": 7}, 422, "policy_below_floor"),
        ("PATCH", f"{POLICIES}/default", {"max_days": 20}, 422, "policy_max_below_min"),
        ("PATCH", f"{POLICIES}/nope", {"min_days": 40}, 404, "policy_not_found"),
        ("DELETE", f"{POLICIES}/default", None, 409, "policy_in_use"),
        ("PUT", "/api/v1/cameras/cam-1/policy", {"policy": "nope"}, 404, "policy_not_found"),
        ("PUT", "/api/v1/cameras/no-cam/policy", {"policy": "default"}, 404, "camera_not_found"),
    ]
    for method, path, body, status, code in refusals:
        got, answer = _call(api, "admin", method, path, body)
        assert (got, answer["error"]["code"]) == (status, code), (method, path, answer)
    floor = _call(api, "admin", "POST", POLICIES, {"name": "short", "min_days": 29})[1]["error"]["message"]
    assert "floor of 30 days" in floor
    # Reading is for retention.read (the auditor); changing for retention.manage (the admin) only.
    got, answer = _call(api, "auditor", "POST", POLICIES, {"name": "ok", "min_days": 40})
    assert (got, answer["error"]["code"]) == (403, "role_forbidden")

    denied = _last_event(api, "retention.policy.create")
    assert (denied.outcome, denied.reason) == ("denied", "role_forbidden")
    with api.rt.db.session() as s:
        floor_denials = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.outcome == "denied", AuditEvent.reason == "policy_below_floor")
            .order_by(AuditEvent.seq)
        ).all()
    admin = api.ids["admin"]
    assert [(e.action, e.object_id, e.actor_id) for e in floor_denials] == [
        ("retention.policy.create", "policy:short", admin),
        ("retention.policy.update", "policy:default", admin),
        ("retention.policy.create", "policy:short", admin),
    ]
    assert _policies(api) == before

    cli = subprocess.run(
        [sys.executable, "-m", "nvr", "retention", "policy", "create", "short", "--min-days", "10"],
        env=nvr_env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert cli.returncode != 0 and cli.stderr.startswith("error: policy_below_floor:"), cli.stderr
    assert _policies(api) == before


def test_raising_extends_existing_segments_lowering_only_later_ones(api) -> None:
    api.user("admin", ["admin"])
    api.user("auditor", ["auditor"])
    api.camera("cam-1", segments=3)
    api.camera("cam-2", segments=2)
    assert set(_kept_days(api, "cam-1").values()) == {30}

    # A segment already on the sweeper's garbage list is being deleted: raising leaves it alone.
    with api.rt.db.session() as s:
        batch = SweepBatch(state="marked", reason="max_age", segments=1, bytes=0, started_us=0, actor="test")
        s.add(batch)
        s.flush()
        s.execute(update(Segment).where(Segment.camera_id == "cam-1", Segment.seq == 3).values(sweep_batch_id=batch.id))

    created = _call(api, "admin", "POST", POLICIES, {"name": "roads", "min_days": 30, "description": "arterials"})
    assert created[0] == 201 and created[1]["cameras"] == [], created
    status, moved = _call(api, "admin", "PUT", "/api/v1/cameras/cam-1/policy", {"policy": "roads"})
    assert status == 200 and moved["extended_segments"] == 0, moved
    assert _policies(api)["roads"]["cameras"] == ["cam-1"]

    status, raised = _call(api, "admin", "PATCH", f"{POLICIES}/roads", {"min_days": 60})
    assert status == 200 and raised["min_days"] == 60 and raised["extended_segments"] == 2, raised
    assert _kept_days(api, "cam-1") == {1: 60, 2: 60, 3: 30}
    assert set(_kept_days(api, "cam-2").values()) == {30}  # another policy's camera is untouched
    ev = _last_event(api, "retention.policy.update")
    assert (ev.outcome, ev.object_id) == ("ok", "policy:roads")
    assert "min_days 30 → 60" in ev.reason and "extended on 2 segment(s)" in ev.reason

    status, lowered = _call(api, "admin", "PATCH", f"{POLICIES}/roads", {"min_days": 40, "max_days": 90})
    assert status == 200 and lowered["extended_segments"] == 0 and lowered["max_days"] == 90, lowered
    assert _kept_days(api, "cam-1") == {1: 60, 2: 60, 3: 30}
    footage.add_segments(api.rt, "cam-1", api.clock.now_us() - DAY_US // 2, 1)
    assert _kept_days(api, "cam-1")[4] == 40
    # max_days can be cleared with null; leaving a field out keeps it.
    assert _call(api, "admin", "PATCH", f"{POLICIES}/roads", {"description": ""})[1]["max_days"] == 90
    cleared = _call(api, "admin", "PATCH", f"{POLICIES}/roads", {"max_days": None})[1]
    assert (cleared["max_days"], cleared["min_days"], cleared["description"]) == (None, 40, None)

    # Assigning a camera to a policy keeping footage longer extends it; back to a shorter one changes nothing.
    status, moved = _call(api, "admin", "PUT", "/api/v1/cameras/cam-2/policy", {"policy": "roads"})
    assert status == 200 and moved["extended_segments"] == 2, moved
    assert set(_kept_days(api, "cam-2").values()) == {40}
    ev = _last_event(api, "retention.policy.assign")
    assert (ev.camera_id, ev.object_id) == ("cam-2", "policy:roads")
    assert "default (min_days 30, max_days none) → roads (min_days 40" in ev.reason
    status, answer = _call(api, "admin", "PATCH", "/api/v1/cameras/cam-2", {"policy": "default"})
    assert status == 200 and answer["policy"] == "default", answer
    assert set(_kept_days(api, "cam-2").values()) == {40}

    # A raised floor setting outranks a shorter policy for segments finished from then on.
    api.rt.settings.retention_floor_days = 45
    footage.add_segments(api.rt, "cam-2", api.clock.now_us() - DAY_US // 2, 1)
    assert _kept_days(api, "cam-2")[3] == 45
    assert _policies(api)["default"]["effective_min_days"] == 45
    got, answer = _call(api, "admin", "PATCH", f"{POLICIES}/roads", {"min_days": 44})
    assert (got, answer["error"]["code"]) == (422, "policy_below_floor") and "45 days" in answer["error"]["message"]


def test_every_camera_has_exactly_one_policy(api) -> None:
    api.user("admin", ["admin"])
    api.user("auditor", ["auditor"])
    api.camera("cam-1")
    _call(api, "admin", "POST", POLICIES, {"name": "long", "min_days": 90})
    body = {"name": "N", "stream_url": "rtsp://h/x", "managing_unit": "Unit A"}
    status, made = _call(api, "admin", "POST", "/api/v1/cameras", {"id": "cam-2", **body})
    assert status == 201 and made["policy"] == "default" and made["capacity_warnings"] == [], made
    status, made = _call(api, "admin", "POST", "/api/v1/cameras", {"id": "cam-3", "policy": "long", **body})
    assert status == 201 and made["policy"] == "long", made
    status, answer = _call(api, "admin", "POST", "/api/v1/cameras", {"id": "cam-4", "policy": "nope", **body})
    assert (status, answer["error"]["code"]) == (404, "policy_not_found")
    assert _call(api, "admin", "GET", "/api/v1/cameras/cam-4")[0] == 404

    # The default moves; cameras keep theirs, new ones get the new default; the old default can then go.
    assert _call(api, "admin", "POST", f"{POLICIES}/long/default")[1]["is_default"] is True
    assert _call(api, "admin", "POST", "/api/v1/cameras", {"id": "cam-5", **body})[1]["policy"] == "long"
    assert _call(api, "admin", "DELETE", f"{POLICIES}/default")[1]["error"]["code"] == "policy_in_use"
    for cam in ("cam-1", "cam-2"):
        assert _call(api, "admin", "PUT", f"/api/v1/cameras/{cam}/policy", {"policy": "long"})[0] == 200
    assert _call(api, "admin", "DELETE", f"{POLICIES}/default")[0] == 204
    assert _last_event(api, "retention.policy.delete").object_id == "policy:default"

    found = _policies(api)
    assert [n for n, p in found.items() if p["is_default"]] == ["long"]
    on_policies = sorted(c for p in found.values() for c in p["cameras"])
    assert on_policies == ["cam-1", "cam-2", "cam-3", "cam-5"]  # each camera once, none without
