"""The registry is evidence: every change to a camera record or a retention policy, from the CLI and from the API,
is one audit event naming the record's new digest, and ``check_registry`` names a record edited in the database,
against its audit history and against the newest checkpoint's signed digests."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from api import cameras
from integrity.audit_log import CLI, Actor
from integrity.records import camera_digest, policy_digest, registry_digests
from integrity.registry_check import KIND, check_registry, digest_in, with_digest
from nvr.models import AuditEvent, AuditHead, Camera, RetentionPolicy
from nvr.registry import CameraFields
from nvr.runtime import Runtime
from retention import policies
from tests.support import footage
from tests.support.api_server import make_user, running_api

DIGEST = re.compile(r".*; record sha256 [0-9a-f]{64}\Z", re.DOTALL)
ADMIN = Actor(None, "cli:test", None, None)


def _nvr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "nvr", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, (args, out.stderr)
    return out


def _head(rt: Runtime) -> int:
    with rt.db.session() as s:
        return int(s.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0)


def _events_after(rt: Runtime, seq: int) -> list[AuditEvent]:
    with rt.db.session() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.seq > seq).order_by(AuditEvent.seq)))
        s.expunge_all()
    return events


def _camera(rt: Runtime, camera_id: str) -> str:
    with rt.db.session() as s:
        cam = s.get(Camera, camera_id)
        assert cam is not None
        return camera_digest(cam)


def _policy(rt: Runtime, name: str) -> tuple[int, str]:
    with rt.db.session() as s:
        p = s.scalars(select(RetentionPolicy).where(RetentionPolicy.name == name)).one()
        return p.id, policy_digest(p)


def _one_event(rt: Runtime, before: int, action: str, **expected: Any) -> AuditEvent:
    """Exactly one new event, this one, naming a digest."""
    events = _events_after(rt, before)
    assert [(e.action, e.outcome) for e in events] == [(action, "ok")], [(e.action, e.reason) for e in events]
    (ev,) = events
    assert DIGEST.match(ev.reason or ""), ev.reason
    for k, v in expected.items():
        assert getattr(ev, k) == v, (k, getattr(ev, k), v)
    return ev


def _text(ev: AuditEvent) -> str:
    assert ev.reason is not None
    return ev.reason


def _checkpoint_body(rt: Runtime) -> dict[str, Any]:
    """What a checkpoint signs of the registry, with the audit head read first (as integrity.checkpoints does)."""
    with rt.db.session() as s:
        seq, digest = s.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
        return {"created_us": rt.clock.now_us(), "audit": {"seq": seq, "hash": digest}, "registry": registry_digests(s)}


def _check(rt: Runtime, body: dict[str, Any] | None = None) -> list[Any]:
    with rt.db.session() as s:
        return check_registry(s, body)


def _change(rt: Runtime, acknowledge: bool = False) -> policies.Change:
    return policies.Change(rt.settings, rt.clock.now_us(), ADMIN, CLI, acknowledge)


def _add(rt: Runtime, camera_id: str, unit: str = "Unit A") -> None:
    fields = CameraFields(name=f"Camera {camera_id}", stream_url="rtsp://u:p@10.0.0.1/s", managing_unit=unit)
    with rt.db.session() as s:
        cameras.create_camera(s, _change(rt), camera_id, fields)


def _sql(rt: Runtime, statement: str, **params: Any) -> None:
    with rt.db.session() as s:
        s.execute(text(statement), params)


# --- every change is one event with the digest ------------------------------------------------------------------
def test_cli_camera_and_policy_changes_each_write_one_event_with_the_digest(runtime: Runtime, nvr_env) -> None:
    rt = runtime
    url = "rtsp://admin:secret@10.0.0.9/s"
    steps: list[tuple[tuple[str, ...], str, str]] = [
        (("camera", "add", "gate", "--name", "Gate", "--url", url, "--unit", "U"), "camera.create", "policy=default"),
        (("camera", "update", "gate", "--share-class", "unconditional", "--unit", "V"), "camera.update", ""),
        (("camera", "activate", "gate"), "camera.state", "registered → active"),
        (("camera", "suspend", "gate", "--reason", "mast repair"), "camera.state", "active → suspended: mast repair"),
    ]
    for args, action, starts in steps:
        before = _head(rt)
        _nvr(nvr_env, *args)
        ev = _one_event(rt, before, action, camera_id="gate", actor_id=None, user_agent="nvr-cli")
        assert (ev.actor_name or "").startswith("cli:") and _text(ev).startswith(starts), ev.reason
        assert digest_in(ev.reason) == _camera(rt, "gate")
    assert _text(ev).startswith("active → suspended: mast repair; record sha256 ")
    update = [e for e in _events_after(rt, 0) if e.action == "camera.update"]
    assert [_text(e).split(";")[0] for e in update] == ["managing_unit, share_class"]
    assert "secret" not in "".join(e.reason or "" for e in _events_after(rt, 0))

    before = _head(rt)
    _nvr(nvr_env, "retention", "policy", "create", "city", "--min-days", "90")
    city_id, city = _policy(rt, "city")
    ev = _one_event(rt, before, "retention.policy.create", object_id="policy:city", camera_id=None)
    assert ev.reason == f"min_days=90 max_days=none; record sha256 {city}"

    before = _head(rt)
    _nvr(nvr_env, "retention", "policy", "assign", "gate", "city")
    ev = _one_event(rt, before, "retention.policy.assign", object_id="policy:city", camera_id="gate")
    assert digest_in(ev.reason) == _camera(rt, "gate")

    before = _head(rt)
    _nvr(nvr_env, "camera", "update", "gate", "--policy", "default")  # --policy alone: only the assignment
    ev = _one_event(rt, before, "retention.policy.assign", object_id="policy:default", camera_id="gate")
    assert digest_in(ev.reason) == _camera(rt, "gate")

    before = _head(rt)
    _nvr(nvr_env, "retention", "policy", "update", "city", "--min-days", "100")
    ev = _one_event(rt, before, "retention.policy.update", object_id="policy:city")
    assert _text(ev).startswith("min_days 90 → 100; ") and digest_in(ev.reason) == _policy(rt, "city")[1]

    before = _head(rt)
    _nvr(nvr_env, "retention", "policy", "set-default", "city")
    ev = _one_event(rt, before, "retention.policy.default", object_id="policy:city")
    old, new = _policy(rt, "default")[1], _policy(rt, "city")[1]
    assert ev.reason == f"default policy default → city; default record sha256 {old}; record sha256 {new}"

    assert _check(rt) == []
    assert _check(rt, _checkpoint_body(rt)) == []
    assert str(city_id) in _checkpoint_body(rt)["registry"]["policies"]


@pytest.fixture
def admin_api(runtime: Runtime) -> Iterator[httpx.Client]:
    _, token = make_user(runtime, runtime.clock, "root", ["admin"])
    with running_api(runtime, runtime.clock) as url:
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"{url}/api/v1", headers=auth, timeout=30) as c:
            yield c


def test_api_camera_and_policy_changes_each_write_one_event_with_the_digest(runtime: Runtime, admin_api) -> None:
    rt, c = runtime, admin_api
    body = {"id": "cam-1", "name": "N", "stream_url": "rtsp://u:p@10.0.0.1/s", "managing_unit": "Unit A"}

    def call(method: str, path: str, json: dict[str, Any] | None, action: str, **expected: Any) -> AuditEvent:
        before = _head(rt)
        r = c.request(method, path, json=json)
        assert r.status_code in (200, 201), r.text
        return _one_event(rt, before, action, actor_name="Root (root)", **expected)

    ev = call("POST", "/cameras", body, "camera.create", camera_id="cam-1")
    assert _text(ev).startswith("policy=default; ") and digest_in(ev.reason) == _camera(rt, "cam-1")
    ev = call("PATCH", "/cameras/cam-1", {"share_class": "non_shared", "name": "N"}, "camera.update")
    assert _text(ev).startswith("share_class; ") and digest_in(ev.reason) == _camera(rt, "cam-1")
    ev = call("POST", "/cameras/cam-1/state", {"state": "active", "reason": "installed"}, "camera.state")
    assert _text(ev).startswith("registered → active: installed; ") and digest_in(ev.reason) == _camera(rt, "cam-1")
    ev = call("POST", "/retention/policies", {"name": "city", "min_days": 60}, "retention.policy.create")
    assert digest_in(ev.reason) == _policy(rt, "city")[1]
    ev = call("PUT", "/cameras/cam-1/policy", {"policy": "city"}, "retention.policy.assign", camera_id="cam-1")
    assert digest_in(ev.reason) == _camera(rt, "cam-1")
    ev = call("PATCH", "/retention/policies/city", {"max_days": 90}, "retention.policy.update")
    assert digest_in(ev.reason) == _policy(rt, "city")[1]
    ev = call("POST", "/retention/policies/city/default", None, "retention.policy.default")
    assert digest_in(ev.reason) == _policy(rt, "city")[1]

    assert _check(rt) == []
    assert _check(rt, _checkpoint_body(rt)) == []


def test_a_long_reason_is_shortened_so_the_digest_survives(runtime: Runtime) -> None:
    rt = runtime
    _add(rt, "cam-1")
    before = _head(rt)
    with rt.db.session() as s:
        cameras.change_state(s, _change(rt), "cam-1", "active", "x" * 1990)
    (ev,) = _events_after(rt, before)
    assert len(_text(ev)) == 2000 and digest_in(ev.reason) == _camera(rt, "cam-1")
    assert with_digest("y" * 5000, "0" * 64).endswith("…; record sha256 " + "0" * 64)


# --- check_registry ---------------------------------------------------------------------------------------------
def test_an_untouched_registry_is_clean(runtime: Runtime) -> None:
    rt = runtime
    footage.add_camera(rt, "legacy-1")  # made without an audited digest: checked against checkpoints only
    _add(rt, "cam-1")
    _add(rt, "cam-2", unit="Unit B")
    with rt.db.session() as s:
        policies.create(s, _change(rt), "city", 60)
        policies.assign(s, _change(rt), "cam-2", "city")
    assert _check(rt) == []
    body = _checkpoint_body(rt)
    assert _check(rt, body) == []
    assert _check(rt, {k: v for k, v in body.items() if k != "registry"}) == []  # a version 1 body: audit only

    # Audited changes after the checkpoint, a camera added and a policy created and deleted after it: all fine.
    with rt.db.session() as s:
        cameras.update_camera(s, _change(rt), "cam-1", CameraFields(share_class="unconditional"))
        cameras.change_state(s, _change(rt), "cam-1", "active")
        policies.update(s, _change(rt), "city", min_days=90)
        policies.create(s, _change(rt), "short", 30)
        policies.set_default(s, _change(rt), "short")
    with rt.db.session() as s:
        policies.set_default(s, _change(rt), "default")
        policies.delete(s, _change(rt), "short")
    _add(rt, "cam-3")
    assert _check(rt, body) == []


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("share_class", "'unconditional'"),
        ("managing_unit", "'Unit Z'"),
        ("policy_id", "(SELECT max(id) FROM retention_policies)"),
    ],
)
def test_a_camera_edited_by_hand_is_named_against_its_audit_history_and_the_checkpoint(
    runtime: Runtime, column: str, value: str
) -> None:
    rt = runtime
    _add(rt, "cam-1")
    _add(rt, "cam-2")
    with rt.db.session() as s:
        policies.create(s, _change(rt), "long", 365)
    body = _checkpoint_body(rt)
    _sql(rt, f"UPDATE cameras SET {column} = {value} WHERE id = 'cam-1'")

    (p,) = _check(rt)
    assert (p.kind, p.camera_id, p.subject, p.seq) == (KIND, "cam-1", "camera cam-1", None)
    assert "its audit history: audit event" in p.detail and "(camera.create)" in p.detail
    assert "checkpoint" not in p.detail

    (p,) = _check(rt, body)
    assert (p.kind, p.camera_id, p.subject) == (KIND, "cam-1", "camera cam-1")
    assert "the newest checkpoint (signed " in p.detail and "its audit history" in p.detail, p.detail
    assert p.detail.startswith(f"the record sha256 {_camera(rt, 'cam-1')[:16]}… differs from ")

    # Known limit: an audited change made afterwards names the digest of the edited record, so from then on
    # neither source can tell (the events name the digest after a change, not the one before it).
    with rt.db.session() as s:
        cameras.update_camera(s, _change(rt), "cam-1", CameraFields(name="renamed"))
    assert _check(rt) == [] and _check(rt, body) == []


def test_a_camera_without_audited_digest_is_checked_against_the_checkpoint(runtime: Runtime) -> None:
    rt = runtime
    footage.add_camera(rt, "legacy-1")
    body = _checkpoint_body(rt)
    _sql(rt, "UPDATE cameras SET share_class = 'unconditional' WHERE id = 'legacy-1'")
    assert _check(rt) == []  # nothing audited to compare with
    (p,) = _check(rt, body)
    assert (p.kind, p.camera_id) == (KIND, "legacy-1") and "its audit history" not in p.detail
    assert "which signed sha256" in p.detail

    footage.add_camera(rt, "legacy-2")  # added after the checkpoint with no camera.create event
    problems = _check(rt, body)
    assert [q.subject for q in problems] == ["camera legacy-1", "camera legacy-2"]
    assert "has no such camera and no camera.create event after audit event" in problems[1].detail


def test_a_camera_the_checkpoint_signed_that_is_gone_is_named(runtime: Runtime) -> None:
    rt = runtime
    _add(rt, "cam-1")
    body = _checkpoint_body(rt)
    body["registry"]["cameras"]["cam-0"] = "ab" * 32
    (p,) = _check(rt, body)
    assert (p.kind, p.camera_id, p.subject) == (KIND, "cam-0", "camera cam-0")
    assert "the registry has no such camera" in p.detail


def test_a_policy_edited_by_hand_is_named(runtime: Runtime) -> None:
    rt = runtime
    with rt.db.session() as s:
        policies.create(s, _change(rt), "city", 90)
    pid, _ = _policy(rt, "city")
    body = _checkpoint_body(rt)
    _sql(rt, "UPDATE retention_policies SET min_days = 30 WHERE name = 'city'")

    (p,) = _check(rt)
    assert (p.kind, p.camera_id, p.subject) == (KIND, None, f"policy {pid}")
    assert "policy 'city'" in p.detail and "(retention.policy.create)" in p.detail
    (p,) = _check(rt, body)
    assert p.subject == f"policy {pid}" and "the newest checkpoint" in p.detail and "its audit history" in p.detail

    # Moving updated_us away from its event as well does not hide it: the creation was audited with a digest.
    _sql(rt, "UPDATE retention_policies SET updated_us = updated_us + 1 WHERE name = 'city'")
    (p,) = _check(rt)
    assert p.subject == f"policy {pid}" and "no audited change is at its updated time" in p.detail

    # The migration's default policy has no audited digest: the checkpoint catches its edit.
    dpid, _ = _policy(rt, "default")
    _sql(rt, "UPDATE retention_policies SET min_days = 31 WHERE name = 'default'")
    assert [q.subject for q in _check(rt, body)] == [f"policy {dpid}", f"policy {pid}"]


def test_a_policy_removed_without_an_audited_deletion_is_named(runtime: Runtime) -> None:
    rt = runtime
    with rt.db.session() as s:
        policies.create(s, _change(rt), "city", 90)
        policies.create(s, _change(rt), "gone", 90)
    city, _ = _policy(rt, "city")
    gone, _ = _policy(rt, "gone")
    body = _checkpoint_body(rt)
    with rt.db.session() as s:
        policies.delete(s, _change(rt), "city")  # audited: fine
    _sql(rt, "DELETE FROM retention_policies WHERE name = 'gone'")
    (p,) = _check(rt, body)
    assert p.subject == f"policy {gone}" and "no audited deletion after audit event" in p.detail
    with rt.db.session() as s:
        assert s.scalar(select(func.count()).select_from(RetentionPolicy).where(RetentionPolicy.id == city)) == 0


def test_a_hand_edit_is_not_covered_by_the_next_audited_change(runtime: Runtime) -> None:
    """Edited by hand, then changed legitimately before any checkpoint: the audited change would name the digest of
    the edited record. The service notices the record is not what its history says and opens a finding at once;
    it stays open (and nvr verify keeps the alarm) until a person resolves it."""
    from integrity.verify_archive import open_findings

    rt = runtime
    _add(rt, "cam-1")
    _sql(rt, "UPDATE cameras SET share_class = 'unconditional' WHERE id = 'cam-1'")
    with rt.db.session() as s:
        cameras.update_camera(s, _change(rt), "cam-1", CameraFields(name="North gate"))
    assert _check(rt) == []  # the history alone now agrees with the record...
    with rt.db.session() as s:
        (f,) = open_findings(s)  # ...but the edit was caught when the change was made
        assert (f.kind, f.camera_id, f.subject, f.source) == ("registry_mismatch", "cam-1", "camera cam-1", "registry")
    with rt.db.session() as s:  # a second change does not open a second finding
        cameras.change_state(s, _change(rt), "cam-1", "active")
        assert len(open_findings(s)) == 1


def test_a_policy_edited_by_hand_is_caught_by_its_next_audited_change(runtime: Runtime) -> None:
    from integrity.verify_archive import open_findings

    rt = runtime
    with rt.db.session() as s:
        p = policies.create(s, _change(rt), "city", 60).policy
        pid = p.id
    _sql(rt, "UPDATE retention_policies SET max_days = 61 WHERE name = 'city'")
    with rt.db.session() as s:
        policies.update(s, _change(rt), "city", min_days=90, max_days=None)
    with rt.db.session() as s:
        (f,) = open_findings(s)
        assert (f.kind, f.subject, f.source) == ("registry_mismatch", f"policy {pid}", "registry")


def test_parallel_api_changes_of_one_camera_each_name_the_digest_they_left(runtime: Runtime, admin_api) -> None:
    """20 changes of different fields of one camera at once, then 20 decommissions at once: the changes take turns,
    so the last event (in audit order) names the digest of the record as it is, never one computed from a stale
    copy, and exactly one decommission happens (one history row, one event; 19 answers 409)."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from nvr.models import CameraStateChange

    rt = runtime
    body = {"id": "cam-1", "name": "N", "stream_url": "rtsp://u:p@10.0.0.1/s", "managing_unit": "Unit A"}
    assert admin_api.post("/cameras", json=body).status_code == 201

    def race(calls: list[tuple[str, str, dict[str, Any]]]) -> list[httpx.Response]:
        gate = Barrier(len(calls))

        def one(call: tuple[str, str, dict[str, Any]]) -> httpx.Response:
            with httpx.Client(base_url=admin_api.base_url, headers=admin_api.headers, timeout=30) as c:
                gate.wait()
                return c.request(call[0], call[1], json=call[2])

        with ThreadPoolExecutor(len(calls)) as pool:
            return list(pool.map(one, calls))

    before = _head(rt)
    edits = [
        ("PATCH", "/cameras/cam-1", {"name": f"N{i}"} if i % 2 else {"address": f"{i} Gate Rd"}) for i in range(20)
    ]
    assert [r.status_code for r in race(edits)] == [200] * 20
    events = _events_after(rt, before)
    assert [e.action for e in events] == ["camera.update"] * 20
    assert digest_in(events[-1].reason) == _camera(rt, "cam-1")

    answers = race([("POST", "/cameras/cam-1/state", {"state": "decommissioned"})] * 20)
    assert sorted(r.status_code for r in answers) == [200] + [409] * 19
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 409} == {"camera_state_invalid"}
    with rt.db.session() as s:
        rows = s.scalar(
            select(func.count()).where(
                CameraStateChange.camera_id == "cam-1", CameraStateChange.to_state == "decommissioned"
            )
        )
    assert rows == 1
    done = [e for e in _events_after(rt, before)[20:] if e.action == "camera.state" and e.outcome == "ok"]
    assert len(done) == 1 and digest_in(done[0].reason) == _camera(rt, "cam-1")
