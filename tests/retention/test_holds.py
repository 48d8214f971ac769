"""Evidence holds through the real API: what a hold covers (whole segments, the sweeper's own rule), read-only files,
open-ended holds catching new footage, refusals that change nothing, and the two-person release."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from nvr.clock import iso
from nvr.models import AuditEvent, EvidenceHold, HoldCamera, Segment, Volume
from retention import holds, protect
from tests.api import conftest as api_tests
from tests.support import footage

api = api_tests.api  # the real-server fixture of the API tests, shared by name
DAY_US = api_tests.DAY_US

S = 1_000_000
SEG = footage.CLIP_SECONDS * S


def _place(api, who: str, **over: Any):
    body: dict[str, Any] = {
        "case_ref": "CASE-2026-007",
        "title": "Robbery at the north gate",
        "reason": "footage of the robbery is evidence",
        "cameras": ["cam-1"],
    }
    body.update(over)
    with api.client(who) as c:
        return c.post("/api/v1/holds", json={k: v for k, v in body.items() if v is not None})


def _get(api, who: str, path: str, **params: Any):
    with api.client(who) as c:
        return c.get(f"/api/v1{path}", params=params)


def _post(api, who: str, path: str, body: dict[str, Any] | None = None):
    with api.client(who) as c:
        return c.post(f"/api/v1{path}", json=body)


def _files(api, camera: str) -> dict[int, Path]:
    with api.rt.db.session() as s:
        rows = s.execute(
            select(Segment.seq, Volume.path, Segment.rel_path)
            .join(Volume, Volume.id == Segment.volume_id)
            .where(Segment.camera_id == camera)
        )
        return {seq: Path(vp) / rp for seq, vp, rp in rows}


def _read_only(api, camera: str) -> set[int]:
    """Sequence numbers of the camera's files that nobody may write."""
    files = _files(api, camera).items()
    return {seq for seq, p in files if p.exists() and not stat.S_IMODE(os.stat(p).st_mode) & 0o222}


def _seqs(api, camera: str, cond) -> set[int]:
    with api.rt.db.session() as s:
        return set(s.scalars(select(Segment.seq).where(Segment.camera_id == camera, cond)))


def _events(api, action: str) -> list[AuditEvent]:
    with api.rt.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def test_officer_hold_covers_whole_segments_seals_them_and_is_listed(api, nvr_env) -> None:
    t = api.camera("cam-1", segments=6)
    api.camera("cam-2", segments=2)
    api.user("appr", ["approver"])
    api.user("off", ["officer"])
    api.user("other", ["officer"])
    api.user("aud", ["auditor"])
    api.grant("appr", "off", ["cam-1"])
    size = footage.clip().stat().st_size

    # 3 s .. 7 s into the footage: part of segment 2, all of 3, part of 4; the hold takes them whole.
    r = _place(api, "off", start=iso(t[1] + S), end=iso(t[3] + S))
    assert r.status_code == 201, r.text
    h = r.json()
    assert h["covered"] == [
        {
            "camera_id": "cam-1",
            "first_seq": 2,
            "last_seq": 4,
            "start": iso(t[1]),
            "end": iso(t[3] + SEG),
            "segments": 3,
            "bytes": 3 * size,
        }
    ]
    assert (h["state"], h["placed_by"], h["end"], h["missing_files"]) == ("active", "Off (off)", iso(t[3] + S), [])
    assert _read_only(api, "cam-1") == {2, 3, 4} and _read_only(api, "cam-2") == set()
    assert _seqs(api, "cam-1", protect.held()) == {2, 3, 4}  # the sweeper's rule agrees with the reported range
    [ev] = _events(api, "hold.place")
    assert (ev.actor_id, ev.outcome, ev.object_id, ev.case_ref, ev.camera_id) == (
        api.ids["off"],
        "ok",
        f"hold:{h['id']}",
        "CASE-2026-007",
        "cam-1",
    )
    assert "cam-1 seq 2..4 (3 segments" in (ev.reason or "")

    # Visible per camera, in the listing and in the recordings listing; invisible to an officer without a grant.
    assert [x["id"] for x in _get(api, "off", "/holds").json()["holds"]] == [h["id"]]
    assert [x["id"] for x in _get(api, "off", "/cameras/cam-1/holds").json()["holds"]] == [h["id"]]
    assert [x["id"] for x in _get(api, "aud", "/holds", state="active").json()["holds"]] == [h["id"]]
    rec = _get(api, "off", "/cameras/cam-1/recordings", start=iso(t[0]), end=iso(t[5] + SEG)).json()
    assert rec["holds"] == [
        {
            "id": h["id"],
            "case_ref": "CASE-2026-007",
            "title": "Robbery at the north gate",
            "start": h["start"],
            "end": h["end"],
            "state": "active",
        }
    ]
    assert _get(api, "other", "/holds").json()["holds"] == []
    assert _get(api, "other", f"/holds/{h['id']}").json()["error"]["code"] == "hold_not_found"
    assert _get(api, "other", "/cameras/cam-1/holds").json()["error"]["code"] == "camera_not_found"
    assert {e.actor_id for e in _events(api, "hold.list")} >= {api.ids["off"], api.ids["aud"]}

    # The command line reads the same holds (placing and releasing are API-only).
    done = subprocess.run(
        [sys.executable, "-m", "nvr", "retention", "hold", "show", str(h["id"]), "--json"],
        env=nvr_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"last_seq": 4' in done.stdout and '"case_ref": "CASE-2026-007"' in done.stdout


def test_open_ended_hold_catches_new_footage_and_the_sweeper_rule_agrees(api) -> None:
    t = api.camera("cam-1", segments=3)
    api.camera("cam-2", segments=1)
    api.user("appr", ["approver"])  # approvers need no grant to place a hold

    _files(api, "cam-1")[3].unlink()  # a lost file is reported; it does not stop the hold
    r = _place(api, "appr", start=iso(t[1] + S))
    assert r.status_code == 201, r.text
    h = r.json()
    assert h["end"] is None and h["covered"][0]["first_seq"] == 2 and h["covered"][0]["last_seq"] == 3
    assert h["missing_files"] == [{"camera_id": "cam-1", "seq": 3, "problem": "missing"}]

    # The recorder registers the next segments and seals them when a hold covers them.
    later = t[2] + SEG
    for camera in ("cam-1", "cam-2"):
        footage.add_segments(api.rt, camera, later, 1)
    with api.rt.db.session() as s:
        sealed = {
            cam: holds.seal_new_segment(s, cam, later, later + SEG, _files(api, cam)[max(_files(api, cam))])
            for cam in ("cam-1", "cam-2")
        }
    assert sealed == {"cam-1": True, "cam-2": False}
    assert _read_only(api, "cam-1") == {2, 4} and _read_only(api, "cam-2") == set()
    covered = _get(api, "appr", f"/holds/{h['id']}").json()["covered"][0]
    assert (covered["first_seq"], covered["last_seq"], covered["segments"]) == (2, 4, 3)

    # Forty days on, everything is past retention; only what the hold covers stays.
    api.clock.advance(40 * DAY_US / S)
    deletable = protect.deletable(api.clock.now_us(), api.rt.settings.retention_floor_days)
    assert _seqs(api, "cam-1", deletable) == {1}
    assert _seqs(api, "cam-2", deletable) == {1, 2}
    assert _seqs(api, "cam-1", protect.held()) == {2, 3, 4}


def test_bad_holds_are_refused_audited_and_change_nothing(api) -> None:
    t = api.camera("cam-1", segments=2)
    api.camera("cam-2", segments=1)
    api.user("appr", ["approver"])
    api.user("off", ["officer"])
    api.user("view", ["viewer"])
    api.grant("appr", "off", ["cam-1"])
    start = iso(t[0])
    cases = [
        ("off", {"case_ref": None, "start": start}, 422, "hold_case_ref_required"),
        ("off", {"case_ref": "   ", "start": start}, 422, "hold_case_ref_required"),
        ("off", {"cameras": [], "start": start}, 422, "hold_cameras_required"),
        ("off", {"cameras": ["cam-2"], "start": start}, 404, "camera_not_found"),  # no grant names it
        ("appr", {"cameras": ["cam-9"], "start": start}, 404, "camera_not_found"),
        ("appr", {"start": start, "end": start}, 422, "window_invalid"),
        ("appr", {"title": "", "start": start}, 422, "hold_title_required"),
        ("view", {"start": start}, 403, "role_forbidden"),
    ]
    for who, over, status, code in cases:
        r = _place(api, who, **over)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (who, over)
    denials = [(e.actor_id, e.outcome, e.reason) for e in _events(api, "hold.place")]
    assert denials == [(api.ids[who], "denied", code) for who, _, _, code in cases]
    with api.rt.db.session() as s:
        assert s.scalar(select(func.count()).select_from(EvidenceHold)) == 0
        assert s.scalar(select(func.count()).select_from(HoldCamera)) == 0
    assert _read_only(api, "cam-1") == set() and _read_only(api, "cam-2") == set()


def test_release_takes_two_different_approvers(api) -> None:
    t = api.camera("cam-1", segments=4)
    api.user("a", ["approver"])
    api.user("b", ["approver"])
    api.user("off", ["officer"])
    api.grant("a", "off", ["cam-1"])
    first = _place(api, "a", start=iso(t[0]), end=iso(t[2] + S)).json()  # segments 1..3
    second = _place(api, "b", case_ref="CASE-2026-008", start=iso(t[2] + S), end=iso(t[2] + 2 * S)).json()  # 3
    hid = first["id"]
    assert _read_only(api, "cam-1") == {1, 2, 3}

    def step(who: str, action: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        r = _post(api, who, f"/holds/{hid}/{action}", body)
        return r.status_code, (r.json()["error"]["code"] if r.status_code >= 400 else r.json())

    assert step("a", "release-confirm") == (409, "hold_release_not_requested")
    assert step("off", "release-request", {"reason": "case closed"}) == (403, "hold_release_forbidden")
    assert step("a", "release-request", {}) == (422, "hold_release_reason_required")
    status, asked = step("a", "release-request", {"reason": "case closed, court ruling 12/2026"})
    assert (status, asked["state"], asked["release_requested_by"]) == (200, "release_requested", "A (a)")
    assert _seqs(api, "cam-1", protect.held()) == {1, 2, 3}  # a request alone still protects
    assert step("b", "release-request", {"reason": "again"}) == (409, "hold_release_pending")
    assert step("a", "release-confirm") == (403, "hold_release_same_user")
    assert step("off", "release-confirm") == (403, "hold_release_forbidden")
    status, done = step("b", "release-confirm", {"reason": "ruling checked"})
    assert (status, done["state"], done["released_by"], done["protecting"]) == (200, "released", "B (b)", False)
    assert step("a", "release-confirm") == (409, "hold_released")

    # Released: writable again, except the segment the second hold still covers; the sweeper sees the same.
    assert _read_only(api, "cam-1") == {3}
    assert _seqs(api, "cam-1", protect.held()) == {3}
    [req] = [e for e in _events(api, "hold.release.request") if e.outcome == "ok"]
    [conf] = [e for e in _events(api, "hold.release.confirm") if e.outcome == "ok"]
    assert (req.actor_id, req.object_id, req.case_ref, req.purpose) == (
        api.ids["a"],
        f"hold:{hid}",
        "CASE-2026-007",
        "case closed, court ruling 12/2026",
    )
    assert (conf.actor_id, conf.object_id, conf.outcome) == (api.ids["b"], f"hold:{hid}", "ok")
    assert "requested by A (a)" in (conf.reason or "")
    refusals = {
        (e.actor_id, e.reason)
        for e in _events(api, "hold.release.confirm") + _events(api, "hold.release.request")
        if e.outcome == "denied"
    }
    assert {(api.ids["a"], "hold_release_same_user"), (api.ids["off"], "hold_release_forbidden")} <= refusals

    # A pending request can be withdrawn; the listings tell released from protecting holds.
    hid = second["id"]
    assert step("a", "release-request", {"reason": "duplicate of another case"})[0] == 200
    status, back = step("b", "release-cancel")
    assert (status, back["state"], back["release_requested_by"]) == (200, "active", None)
    assert [e.actor_id for e in _events(api, "hold.release.cancel")] == [api.ids["b"]]
    assert [x["id"] for x in _get(api, "a", "/holds", state="released").json()["holds"]] == [first["id"]]
    rec = _get(api, "off", "/cameras/cam-1/recordings", start=iso(t[0]), end=iso(t[3] + SEG)).json()
    assert [x["id"] for x in rec["holds"]] == [second["id"]]


def test_hold_listings_follow_camera_visibility(api) -> None:
    t = api.camera("cam-1", segments=3)
    api.camera("cam-2", segments=3)
    api.user("appr", ["approver"])
    api.user("off", ["officer"])
    api.user("aud", ["auditor"])
    grant = api.grant("appr", "off", ["cam-1"])
    both = _place(api, "appr", cameras=["cam-1", "cam-2"], start=iso(t[0])).json()
    hidden = _place(api, "appr", cameras=["cam-2"], case_ref="CASE-2026-009", start=iso(t[0])).json()
    own = _place(api, "off", cameras=["cam-1"], case_ref="CASE-2026-010", start=iso(t[0])).json()  # open-ended

    # Asking about a camera hidden from the officer answers as GET /cameras/{id} does; nothing about its holds.
    for path, params in (("/holds", {"camera": "cam-2"}), ("/cameras/cam-2/holds", {})):
        r = _get(api, "off", path, **params)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "camera_not_found"), path
    listed = _get(api, "off", "/holds").json()["holds"]
    assert [(h["id"], h["cameras"]) for h in listed] == [(both["id"], ["cam-1"]), (own["id"], ["cam-1"])]
    assert [c["camera_id"] for h in listed for c in h["covered"]] == ["cam-1", "cam-1"]
    assert [h["id"] for h in _get(api, "off", "/holds", camera="cam-1").json()["holds"]] == [both["id"], own["id"]]
    assert _get(api, "off", f"/holds/{hidden['id']}").json()["error"]["code"] == "hold_not_found"
    # Those who oversee holds see every one, on every camera.
    everything = _get(api, "aud", "/holds", camera="cam-2").json()["holds"]
    assert [(h["id"], h["cameras"]) for h in everything] == [
        (both["id"], ["cam-1", "cam-2"]),
        (hidden["id"], ["cam-2"]),
    ]

    # Once the grant is suspended the officer sees no camera: their own hold stays listed, naming none of them
    # (an open-ended hold's coverage would tell what the camera recorded since).
    with api.client("appr") as c:
        assert c.post(f"/api/v1/grants/{grant['id']}/suspend", json={"reason": "review"}).status_code == 200
    listed = _get(api, "off", "/holds").json()["holds"]
    assert [(h["id"], h["cameras"], h["covered"]) for h in listed] == [(own["id"], [], [])]
    r = _get(api, "off", "/holds", camera="cam-1")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "grant_suspended")
    denied = [(e.actor_id, e.reason) for e in _events(api, "hold.list") if e.outcome == "denied"]
    assert denied == [(api.ids["off"], "camera_not_found")] * 2 + [(api.ids["off"], "grant_suspended")]
