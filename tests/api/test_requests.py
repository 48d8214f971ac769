"""An officer asks for footage for a case; an approver of the camera's unit approves, which issues a grant."""

from __future__ import annotations

from nvr.clock import iso
from tests.api.conftest import DAY_US


def _ask(api, who, cameras, **over):
    now = api.clock.now_us()
    body = {
        "cameras": cameras,
        "actions": ["playback", "export"],
        "window": {"start": iso(now - 2 * DAY_US), "end": iso(now)},
        "valid_until": iso(now + 14 * DAY_US),
        "purpose": "burglary at the north gate",
        "case_ref": "CASE-77",
    }
    body.update(over)
    with api.client(who) as c:
        return c.post("/api/v1/access-requests", json=body)


def test_request_approve_then_play(api) -> None:
    starts = api.camera("cam-a", segments=3, unit="Unit A")
    api.user("off", ["officer"], unit="Unit B")
    api.user("appr-a", ["approver"], unit="Unit A")
    api.user("appr-b", ["approver"], unit="Unit B")
    r = _ask(api, "off", ["cam-a"])
    assert r.status_code == 201 and r.json()["state"] == "pending"
    rid = r.json()["id"]
    with api.client("off") as c:
        before = c.get("/api/v1/cameras/cam-a/recordings", params={"start": iso(starts[0]), "end": iso(starts[1])})
        assert (before.status_code, before.json()["error"]["code"]) == (404, "camera_not_found")  # nothing yet
        own = c.post(f"/api/v1/access-requests/{rid}/approve")
        assert (own.status_code, own.json()["error"]["code"]) == (403, "role_forbidden")
    with api.client("appr-b") as c:  # authorized camera of Unit A: Unit B's approver may not
        r = c.post(f"/api/v1/access-requests/{rid}/approve")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "grant_unit_mismatch")
        assert c.get("/api/v1/access-requests", params={"state": "pending"}).json()["requests"][0]["id"] == rid
    with api.client("appr-a") as c:
        r = c.post(f"/api/v1/access-requests/{rid}/approve", json={"reason": "case verified"})
        assert r.status_code == 200, r.text
        assert r.json()["request"]["state"] == "approved"
        assert r.json()["grant"]["user_id"] == api.ids["off"] and r.json()["grant"]["case_ref"] == "CASE-77"
        again = c.post(f"/api/v1/access-requests/{rid}/approve")
        assert (again.status_code, again.json()["error"]["code"]) == (409, "request_state_invalid")
    with api.client("off") as c:
        after = c.get("/api/v1/cameras/cam-a/recordings", params={"start": iso(starts[0]), "end": iso(starts[1])})
        assert after.status_code == 200 and after.json()["segments"] == 1


def test_who_may_request_and_what(api) -> None:
    api.camera("cam-a")
    api.user("oper", ["operator"])
    api.user("view", ["viewer"])
    api.user("off", ["officer"])
    assert _ask(api, "oper", ["cam-a"]).json()["error"]["code"] == "role_forbidden"
    assert _ask(api, "view", ["cam-a"]).json()["error"]["code"] == "role_forbidden"
    too_long = _ask(api, "off", ["cam-a"], valid_until=iso(api.clock.now_us() + 400 * DAY_US))
    assert (too_long.status_code, too_long.json()["error"]["code"]) == (422, "grant_validity_too_long")
    ghost = _ask(api, "off", ["ghost"])
    assert (ghost.status_code, ghost.json()["error"]["code"]) == (404, "camera_not_found")


def test_reject_and_withdraw(api) -> None:
    api.camera("cam-a")
    api.user("off", ["officer"])
    api.user("other", ["officer"])
    api.user("appr", ["approver"])
    first, second = (_ask(api, "off", ["cam-a"]).json()["id"] for _ in range(2))
    with api.client("appr") as c:
        r = c.post(f"/api/v1/access-requests/{first}/reject", json={"reason": "no case number on file"})
        assert r.json()["state"] == "rejected" and r.json()["decision_reason"] == "no case number on file"
    with api.client("other") as c:
        r = c.post(f"/api/v1/access-requests/{second}/withdraw")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "request_not_found")  # not theirs to see
    with api.client("off") as c:
        assert c.post(f"/api/v1/access-requests/{second}/withdraw").json()["state"] == "withdrawn"
        assert [x["state"] for x in c.get("/api/v1/access-requests").json()["requests"]] == ["rejected", "withdrawn"]


def test_parallel_approvals_issue_one_grant(api) -> None:
    """20 approvals of one request at once (two approvers of the unit): exactly one issues a grant, 19 find the
    request decided; one grant exists and one approval is audited. A withdrawal racing them loses or wins whole."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from sqlalchemy import func, select

    from nvr.models import AuditEvent, Grant

    api.camera("cam-a", unit="Unit A")
    api.user("off", ["officer"], unit="Unit A")
    api.user("appr-1", ["approver"], unit="Unit A")
    api.user("appr-2", ["approver"], unit="Unit A")
    rid = _ask(api, "off", ["cam-a"]).json()["id"]
    who = ["appr-1", "appr-2"] * 10 + ["off"]
    gate = Barrier(len(who))

    def one(user: str) -> tuple[str, int, str]:
        step = "withdraw" if user == "off" else "approve"
        with api.client(user) as c:
            gate.wait()
            r = c.post(f"/api/v1/access-requests/{rid}/{step}")
        return step, r.status_code, "" if r.status_code == 200 else r.json()["error"]["code"]

    with ThreadPoolExecutor(len(who)) as pool:
        out = list(pool.map(one, who))
    won = [step for step, status, _ in out if status == 200]
    assert len(won) == 1, out
    assert [code for _, status, code in out if status != 200] == ["request_state_invalid"] * 20
    with api.rt.db.session() as s:
        grants = s.scalar(select(func.count()).select_from(Grant).where(Grant.user_id == api.ids["off"]))
        decisions = s.scalar(
            select(func.count()).where(
                AuditEvent.object_id == f"request:{rid}",
                AuditEvent.outcome == "ok",
                AuditEvent.action.in_(("request.approve", "request.withdraw")),
            )
        )
    assert (grants, decisions) == ((1, 1) if won == ["approve"] else (0, 1))
    with api.client("off") as c:
        assert c.get(f"/api/v1/access-requests/{rid}").json()["state"] == (
            "approved" if won == ["approve"] else "withdrawn"
        )
