"""Issuing grants: who may grant which camera to whom, for how long, with which actions."""

from __future__ import annotations

import pytest

from nvr.clock import iso
from tests.api.conftest import DAY_US


@pytest.fixture
def units(api):
    api.camera("open-cam", unit="Unit A", share_class="unconditional")
    api.camera("auth-cam", unit="Unit A", share_class="authorized")
    api.camera("private-cam", unit="Unit A", share_class="non_shared")
    api.user("appr-a", ["approver"], unit="Unit A")
    api.user("appr-b", ["approver"], unit="Unit B")
    api.user("off-a", ["officer"], unit="Unit A")
    api.user("off-b", ["officer"], unit="Unit B")
    api.user("view-b", ["viewer"], unit="Unit B")
    api.user("oper-a", ["operator"], unit="Unit A")
    api.user("aud", ["auditor"], unit="Unit A")
    return api


def _try(api, approver, grantee, cameras, **over):
    now = api.clock.now_us()
    body = {
        "user_id": api.ids[grantee],
        "cameras": cameras,
        "actions": ["playback"],
        "window": {"last_days": 7},
        "valid_until": iso(now + 30 * DAY_US),
        "purpose": "case work",
        "case_ref": "C-1",
    }
    body.update(over)
    with api.client(approver) as c:
        r = c.post("/api/v1/grants", json=body)
    return r.status_code, (r.json()["error"]["code"] if r.status_code >= 400 else r.json())


@pytest.mark.parametrize(
    ("approver", "grantee", "camera", "expected"),
    [
        ("appr-b", "off-b", "open-cam", 201),  # unconditional: any approver
        ("appr-b", "off-b", "auth-cam", "grant_unit_mismatch"),  # authorized: approver of the owning unit
        ("appr-a", "off-b", "auth-cam", 201),
        ("appr-a", "off-a", "private-cam", 201),  # non_shared: owning unit only, both sides
        ("appr-a", "off-b", "private-cam", "camera_not_shared"),
        ("appr-b", "off-b", "private-cam", "grant_unit_mismatch"),
    ],
)
def test_share_classes_decide_who_may_grant(units, approver, grantee, camera, expected) -> None:
    status, body = _try(units, approver, grantee, [camera])
    if expected == 201:
        assert status == 201 and body["cameras"] == [camera] and body["state"] == "active"
    else:
        assert (status, body) == (403, expected)


def test_validity_is_capped_at_365_days(units) -> None:
    now = units.clock.now_us()
    ok = _try(units, "appr-a", "off-a", ["auth-cam"], valid_until=iso(now + 365 * DAY_US))
    assert ok[0] == 201
    assert _try(units, "appr-a", "off-a", ["auth-cam"], valid_until=iso(now + 366 * DAY_US)) == (
        422,
        "grant_validity_too_long",
    )
    from_later = {"valid_from": iso(now + 10 * DAY_US), "valid_until": iso(now + 376 * DAY_US)}
    assert _try(units, "appr-a", "off-a", ["auth-cam"], **from_later) == (422, "grant_validity_too_long")


@pytest.mark.parametrize(
    ("grantee", "actions", "expected"),
    [
        ("view-b", ["playback", "export"], "viewer_cannot_export"),
        ("view-b", ["live", "playback"], 201),
        ("oper-a", ["export"], "grant_action_not_permitted"),
        ("off-a", ["live", "playback", "export"], 201),
        ("aud", ["playback"], "grant_action_not_permitted"),  # auditors never see footage
        ("off-a", ["download"], "grant_actions_invalid"),
    ],
)
def test_roles_limit_the_actions_a_grant_may_carry(units, grantee, actions, expected) -> None:
    status, body = _try(units, "appr-a", grantee, ["open-cam"], actions=actions)
    if expected == 201:
        assert status == 201 and body["actions"] == actions
    else:
        assert (status, body) == (422, expected)


def test_nobody_grants_themselves_and_only_approvers_grant(units) -> None:
    units.user("both", ["approver", "officer"], unit="Unit A")
    assert _try(units, "both", "both", ["open-cam"]) == (403, "grant_self")
    assert _try(units, "off-a", "off-b", ["open-cam"]) == (403, "role_forbidden")


def test_bad_windows_and_unknown_cameras_are_refused(units) -> None:
    now = units.clock.now_us()
    both = {"window": {"start": iso(now - DAY_US), "end": iso(now), "last_days": 3}}
    assert _try(units, "appr-a", "off-a", ["open-cam"], **both) == (422, "grant_window_invalid")
    backwards = {"window": {"start": iso(now), "end": iso(now - DAY_US)}}
    assert _try(units, "appr-a", "off-a", ["open-cam"], **backwards) == (422, "grant_window_invalid")
    assert _try(units, "appr-a", "off-a", ["ghost-cam"]) == (404, "camera_not_found")
    assert _try(units, "appr-a", "off-a", ["../etc"]) == (422, "camera_id_invalid")


def test_suspend_resume_revoke_and_who_may(units) -> None:
    _, g = _try(units, "appr-a", "off-a", ["auth-cam"])
    gid = g["id"]
    with units.client("appr-b") as other_unit:
        r = other_unit.post(f"/api/v1/grants/{gid}/suspend")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "grant_unit_mismatch")
    with units.client("off-a") as holder:
        r = holder.post(f"/api/v1/grants/{gid}/suspend")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "role_forbidden")
        assert holder.get(f"/api/v1/grants/{gid}").json()["state"] == "active"
    with units.client("appr-a") as c:
        assert c.post(f"/api/v1/grants/{gid}/suspend", json={"reason": "review"}).json()["state"] == "suspended"
        assert c.post(f"/api/v1/grants/{gid}/resume").json()["state"] == "active"
        assert c.post(f"/api/v1/grants/{gid}/revoke").json()["state"] == "revoked"
        r = c.post(f"/api/v1/grants/{gid}/resume")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "grant_state_invalid")
    with units.client("off-b") as stranger:
        r = stranger.get(f"/api/v1/grants/{gid}")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "grant_not_found")


def test_parallel_state_changes_of_one_grant_take_turns(units) -> None:
    """20 revocations of one grant at once: exactly one succeeds (revoked is final), 19 find it revoked, and the
    audit trail has one revocation. Then resumes, suspensions and revocations at once of a suspended grant: the
    audited changes, in order, are steps the grant's lifecycle allows, one revocation ends them, and every answered
    success is one of them (a resume never revives a revoked grant)."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from sqlalchemy import select

    from nvr.models import AuditEvent

    def race(gid: int, actions: list[str]) -> list[tuple[str, int, str]]:
        gate = Barrier(len(actions))

        def one(action: str) -> tuple[str, int, str]:
            with units.client("appr-a") as c:
                gate.wait()
                r = c.post(f"/api/v1/grants/{gid}/{action}")
            return action, r.status_code, r.json()["state"] if r.status_code == 200 else r.json()["error"]["code"]

        with ThreadPoolExecutor(len(actions)) as pool:
            return list(pool.map(one, actions))

    def audited(gid: int) -> list[str]:
        with units.rt.db.session() as s:
            q = select(AuditEvent.action).where(AuditEvent.outcome == "ok", AuditEvent.object_id == f"grant:{gid}")
            return list(s.scalars(q.order_by(AuditEvent.seq)))

    gid = _try(units, "appr-a", "off-a", ["auth-cam"])[1]["id"]
    out = race(gid, ["revoke"] * 20)
    assert out.count(("revoke", 200, "revoked")) == 1
    assert out.count(("revoke", 409, "grant_state_invalid")) == 19
    assert audited(gid) == ["grant.create", "grant.revoke"]

    gid = _try(units, "appr-a", "off-a", ["auth-cam"])[1]["id"]
    with units.client("appr-a") as c:
        assert c.post(f"/api/v1/grants/{gid}/suspend").status_code == 200
    out = race(gid, ["resume", "suspend"] * 9 + ["revoke", "revoke"])
    steps = audited(gid)
    state = "suspended"
    goes_to = {"grant.resume": "active", "grant.suspend": "suspended", "grant.revoke": "revoked"}
    allowed = {"active": {"suspended", "revoked"}, "suspended": {"active", "revoked"}, "revoked": set()}
    for step in steps[2:]:
        assert goes_to[step] in allowed[state], (state, step, steps)
        state = goes_to[step]
    assert state == "revoked" and steps.count("grant.revoke") == 1
    assert sorted(f"grant.{a}" for a, status, _ in out if status == 200) == sorted(steps[2:])
    with units.client("off-a") as c:
        assert c.get(f"/api/v1/grants/{gid}").json()["state"] == "revoked"
