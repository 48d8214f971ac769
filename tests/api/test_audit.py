"""The audit trail: what is recorded, who may read it, and that editing or deleting a row is caught and named."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys

import pytest
from sqlalchemy import delete, select, text, update

from nvr.models import AuditEvent, AuditHead
from tests.api.conftest import PASSWORD


def _nvr(env, *args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "nvr", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def trail(api):
    """A few real events: a login, an admin change, a denial, a camera read."""
    api.camera("cam-a", segments=2)
    api.user("root", ["admin"])
    api.user("audra", ["auditor"])
    with api.client() as c:
        assert c.post("/api/v1/auth/login", json={"username": "root", "password": PASSWORD}).status_code == 201
        assert c.post("/api/v1/auth/login", json={"username": "root", "password": "wrong password"}).status_code == 401
    with api.client("root") as c:
        assert c.patch("/api/v1/cameras/cam-a", json={"name": "Gate"}).status_code == 200
        assert c.get("/api/v1/cameras/cam-a").status_code == 200
    with api.client("audra") as c:
        assert c.get("/api/v1/cameras/cam-a").status_code == 404
    return api


def test_every_decision_is_an_event_with_who_what_where(trail) -> None:
    api = trail
    with api.rt.db.session() as s:
        events = list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [(e.action, e.outcome, e.reason) for e in events]
    assert ("auth.login", "allowed", None) in kinds
    assert ("auth.login", "denied", "login_failed") in kinds
    (update,) = [e for e in events if e.action == "camera.update"]
    assert update.outcome == "ok" and re.fullmatch(r"name; record sha256 [0-9a-f]{64}", update.reason)
    assert ("camera.read", "denied", "camera_not_found") in kinds
    denied_login = next(e for e in events if e.action == "auth.login" and e.outcome == "denied")
    assert denied_login.actor_id is None and denied_login.object_id == "username:root"
    read = next(e for e in events if e.action == "camera.read" and e.outcome == "allowed")
    assert (read.actor_roles, read.actor_unit, read.camera_id) == ("admin", "Unit A", "cam-a")
    assert read.client_addr == "127.0.0.1" and read.user_agent.startswith("python-httpx") and read.request_id


def test_only_auditors_read_the_trail_as_json_or_csv_and_reading_is_audited(trail) -> None:
    api = trail
    with api.client("root") as c:
        r = c.get("/api/v1/audit")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "role_forbidden")
    with api.client("audra") as c:
        page = c.get("/api/v1/audit", params={"action": "auth.login", "limit": 1}).json()
        assert len(page["events"]) == 1 and page["events"][0]["action"] == "auth.login"
        nxt = c.get("/api/v1/audit", params={"action": "auth.login", "after_seq": page["next_after_seq"]}).json()
        assert [e["outcome"] for e in nxt["events"]] == ["denied"]
        r = c.get("/api/v1/audit", params={"format": "csv", "camera_id": "cam-a"})
        assert r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert rows and all(row["camera_id"] == "cam-a" for row in rows)
        assert {"seq", "at", "actor_name", "purpose", "destination", "hash", "prev_hash"} <= set(rows[0])
        verify = c.get("/api/v1/audit/verify").json()
        assert verify["ok"] is True and verify["checked"] > 5
    with api.rt.db.session() as s:
        reads = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "audit.read")))
    assert [(e.actor_id, e.outcome) for e in reads] == [(api.ids["root"], "denied")] + [
        (api.ids["audra"], "allowed")
    ] * 3


@pytest.mark.parametrize("tamper", ["edit", "delete_middle", "delete_newest", "swap"])
def test_nvr_audit_verify_names_the_first_tampered_event(trail, nvr_env, tamper) -> None:
    api = trail
    ok = _nvr(nvr_env, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "intact" in ok.stdout
    with api.rt.db.session() as s:
        n = s.scalar(select(AuditHead.seq))
        if tamper == "edit":
            s.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(reason="nothing to see"))
            expected = "event 3: edited"
        elif tamper == "delete_middle":
            s.execute(delete(AuditEvent).where(AuditEvent.seq == 4))
            expected = "event 4: missing"
        elif tamper == "delete_newest":
            s.execute(delete(AuditEvent).where(AuditEvent.seq == n))
            expected = f"event {n}: missing"
        else:  # swap the contents of 2 and 3 but keep their numbers: a reordering
            a, b = (s.get(AuditEvent, k) for k in (2, 3))
            fields = ("at_us", "action", "outcome", "reason", "actor_id", "actor_name", "object_id", "camera_id")
            va, vb = ({f: getattr(x, f) for f in fields} for x in (a, b))
            s.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(**vb))
            s.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(**va))
            expected = "event 2: edited"
    bad = _nvr(nvr_env, "audit", "verify")
    assert bad.returncode == 1
    assert expected in bad.stdout, bad.stdout
    as_json = _nvr(nvr_env, "audit", "verify", "--json")
    assert as_json.returncode == 1 and '"ok": false' in as_json.stdout


def test_no_code_path_deletes_or_updates_audit_events() -> None:
    """The only writes to audit_events are inserts (api.audit.record); the test greps the product's sources."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    offenders = []
    for pkg in ("api", "nvr", "storage", "retention", "integrity"):
        for path in (root / pkg).rglob("*.py"):
            src = path.read_text(encoding="utf-8")
            for needle in ("delete(AuditEvent", "update(AuditEvent", "DELETE FROM audit_events", "UPDATE audit_events"):
                if needle in src:
                    offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []


def test_first_admin_comes_from_the_cli_and_there_is_no_default_account(api, nvr_env) -> None:
    with api.client() as c:
        for user, pw in (("admin", "admin"), ("root", "root"), ("admin", "password")):
            assert c.post("/api/v1/auth/login", json={"username": user, "password": pw}).status_code == 401
    made = _nvr(
        nvr_env,
        "user", "create", "--username", "chief", "--name", "Chief Admin", "--staff-number", "A-1",
        "--unit", "HQ", "--role", "admin", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    weak = _nvr(
        nvr_env,
        "user", "create", "--username", "weak", "--name", "W", "--staff-number", "A-2", "--unit", "HQ",
        "--role", "admin", "--password-stdin",
        stdin="short\n",
    )  # fmt: skip
    assert weak.returncode == 2 and "password_weak" in weak.stderr
    with api.client() as c:
        r = c.post("/api/v1/auth/login", json={"username": "chief", "password": PASSWORD})
        assert r.status_code == 201 and r.json()["user"]["roles"] == ["admin"]
    with api.rt.db.session() as s:
        ev = s.execute(text("SELECT actor_name, action FROM audit_events WHERE action = 'user.create'")).one()
    assert ev.actor_name.startswith("cli:")


def test_concurrent_requests_never_fork_the_chain(trail) -> None:
    """Many clients at once (the API's thread pool, and on PostgreSQL real row locks): seq has no holes and the
    chain verifies."""
    from concurrent.futures import ThreadPoolExecutor

    from api import audit

    api = trail

    def burst(i: int) -> list[int]:
        who = "root" if i % 2 else "audra"
        with api.client(who) as c:
            return [c.get("/api/v1/cameras/cam-a").status_code for _ in range(10)]

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = [s for batch in pool.map(burst, range(12)) for s in batch]
    assert sorted(set(statuses)) == [200, 404]
    with api.rt.db.session() as s:
        seqs = list(s.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))
        checked, problem = audit.verify(s)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 120
    assert problem is None and checked == len(seqs)
