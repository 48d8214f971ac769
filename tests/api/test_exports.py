"""Export requests end to end: file, co-sign, approve, export, download, verify offline; and every refusal."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from nvr.clock import iso
from nvr.models import AuditEvent, ReadPin, Segment, Volume
from tests.api.conftest import DAY_US, Api
from tests.support.footage import segment_path

SEG_US = 2_000_000  # tests.support.footage writes 2 s segments
V1 = "/api/v1"


def _file(api: Api, who: str, cameras: list[str], start_us: int, end_us: int, **over: Any):
    body: dict[str, Any] = {
        "cameras": cameras,
        "start": iso(start_us),
        "end": iso(end_us),
        "purpose": "robbery at the north gate on 3 May",
        "case_ref": "CASE-2026-117",
        "legal_basis": "Unit A letter 2026/117",
        "recipient": "City Court, clerk of case 117",
        "destination": "sealed USB drive, evidence locker 4",
    }
    body.update(over)
    with api.client(who) as c:
        return c.post(f"{V1}/exports", json=body)


def _code(r) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def _wait_job(api: Api, who: str, rid: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with api.client(who) as c:
        while True:
            job = c.get(f"{V1}/exports/{rid}").json()["job"]
            if job["state"] not in ("queued", "running"):
                return job
            assert time.monotonic() < deadline, f"export job still {job['state']}"
            time.sleep(0.1)


def _people(api: Api) -> None:
    api.user("off1", ["officer"], unit="Unit A")
    api.user("off2", ["officer"], unit="Unit A")
    api.user("off-b", ["officer"], unit="Unit B")
    api.user("appr-a", ["approver"], unit="Unit A")
    api.user("appr-b", ["approver"], unit="Unit B")
    api.user("viewer", ["viewer"], unit="Unit A")
    api.user("aud", ["auditor"], unit="Audit")


def _nvr(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVR_")}
    return subprocess.run(
        [sys.executable, "-m", "nvr", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_file_cosign_approve_export_download_verify(api: Api, tmp_path: Path) -> None:
    a = api.camera("cam-a", segments=4, unit="Unit A")
    b = api.camera("cam-b", segments=4, unit="Unit B")
    _people(api)
    start, end = a[0] + SEG_US // 2, a[0] + 3 * SEG_US + SEG_US // 2  # mid-segment to mid-segment
    assert b[0] == a[0]
    r = _file(api, "off1", ["cam-a", "cam-b"], start, end)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert r.json()["state"] == "pending_cosign" and r.json()["owning_units"] == ["Unit A", "Unit B"]

    with api.client("off1") as c:
        assert _code(c.post(f"{V1}/exports/{rid}/cosign")) == (403, "cosign_self")
    with api.client("off-b") as c:
        assert _code(c.post(f"{V1}/exports/{rid}/cosign")) == (404, "export_not_found")  # not visible to Unit B
    with api.client("appr-a") as c:
        early = c.post(f"{V1}/exports/{rid}/approve", json={"reason": "too early"})
        assert _code(early) == (409, "export_state_invalid")
    with api.client("off2") as c:
        queue = c.get(f"{V1}/exports", params={"state": "pending_cosign"}).json()["exports"]
        assert [x["id"] for x in queue] == [rid]
        r = c.post(f"{V1}/exports/{rid}/cosign")
        assert r.status_code == 200 and r.json()["state"] == "pending_approval"
        assert r.json()["cosigner"]["username"] == "off2"
        assert _code(c.post(f"{V1}/exports/{rid}/job")) == (409, "export_state_invalid")
    with api.client("appr-a") as c:
        r = c.post(f"{V1}/exports/{rid}/approve", json={"reason": "letter 2026/117 checked"})
        assert r.status_code == 200 and r.json()["state"] == "pending_approval"  # Unit B has not decided yet
        assert _code(c.post(f"{V1}/exports/{rid}/approve", json={"reason": "again"})) == (409, "already_decided")
    with api.client("appr-b") as c:
        r = c.post(f"{V1}/exports/{rid}/approve", json={"reason": "cam-b footage released for case 117"})
        assert r.status_code == 200 and r.json()["state"] == "approved"
        assert _code(c.post(f"{V1}/exports/{rid}/job")) == (403, "export_not_party")

    with api.client("off2") as c:
        r = c.post(f"{V1}/exports/{rid}/job")
        assert r.status_code == 202, r.text
        assert _code(c.post(f"{V1}/exports/{rid}/job")) == (409, "export_job_exists")
    job = _wait_job(api, "off1", rid)
    assert job["state"] == "done", job
    assert job["percent"] == 100.0 and job["bytes_done"] == job["bytes_total"] > 0
    with api.rt.db.session() as s:  # the job's pins are gone once it finished
        assert not s.scalars(select(ReadPin).where(ReadPin.request_id.like("export-%"))).all()

    # Downloads: only the two parties, each declaring a destination.
    with api.client("appr-a") as c:
        denied = c.get(f"{V1}/exports/{rid}/bundle", params={"destination": "my desk"})
        assert _code(denied) == (403, "export_not_party")
    with api.client("off1") as c:
        assert c.get(f"{V1}/exports/{rid}/bundle").status_code == 422  # destination is required
        r = c.get(f"{V1}/exports/{rid}/bundle", params={"destination": "court USB drive #7"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(r.content)
    assert r.headers["x-bundle-sha256"] == job["bundle_sha256"]

    # The originals are the archive's files, byte for byte; everything is stored, not deflated.
    with api.rt.db.session() as s:
        files = {
            (cam, seq): Path(vp) / rp
            for cam, seq, vp, rp in s.execute(
                select(Segment.camera_id, Segment.seq, Volume.path, Segment.rel_path).join(
                    Volume, Volume.id == Segment.volume_id
                )
            )
        }
    with zipfile.ZipFile(bundle) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        manifest = json.loads(z.read("manifest.json"))
        for cam in manifest["cameras"]:
            seqs = [sg["seq"] for sg in cam["segments"]]
            assert seqs == [1, 2, 3, 4]  # the four segments overlapping the window
            for sg in cam["segments"]:
                assert z.read(sg["path"]) == files[(cam["id"], sg["seq"])].read_bytes()
            assert cam["convenience"] and all(z.getinfo(cv["path"]).file_size > 0 for cv in cam["convenience"])
    e = manifest["export"]
    assert (e["purpose"], e["case_ref"], e["legal_basis"]) == (
        "robbery at the north gate on 3 May",
        "CASE-2026-117",
        "Unit A letter 2026/117",
    )
    assert e["requester"]["username"] == "off1" and e["cosigner"]["username"] == "off2"
    assert sorted(x["username"] for x in e["approvers"]) == ["appr-a", "appr-b"]
    assert e["recipient"] == "City Court, clerk of case 117"

    # Offline: no server, no database, no data folder; only the fingerprint received separately.
    fingerprint = manifest["crypto"]["fingerprint"]
    out = _nvr("verify-export", str(bundle), "--trusted-key", fingerprint, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["result"] == "valid"

    # The audit trail holds every step with its actors, purpose and destination.
    with api.rt.db.session() as s:
        events = s.scalars(
            select(AuditEvent).where(AuditEvent.object_id == f"export:{rid}").order_by(AuditEvent.seq)
        ).all()
    steps = [(ev.action, ev.actor_name, ev.camera_id) for ev in events if ev.outcome in ("ok", "allowed")]
    actions = [x[0] for x in steps]
    for expected in ("export.request", "export.cosign", "export.approve", "export.job.start", "export.job.done"):
        assert expected in actions, actions
    assert actions.index("export.request") < actions.index("export.cosign") < actions.index("export.job.start")
    assert [x[1] for x in steps if x[0] == "export.approve"] == ["Appr-A (appr-a)", "Appr-B (appr-b)"]
    downloads = [ev for ev in events if ev.action == "export.download" and ev.outcome == "ok"]
    assert sorted(ev.camera_id for ev in downloads) == ["cam-a", "cam-b"]
    assert {ev.destination for ev in downloads} == {"court USB drive #7"}
    assert all(ev.purpose == "robbery at the north gate on 3 May" for ev in events if ev.outcome == "ok")
    assert {ev.camera_id for ev in events if ev.action == "export.job.done"} == {"cam-a", "cam-b"}
    refused = [ev for ev in events if ev.action == "export.download" and ev.outcome == "denied"]
    assert refused and refused[0].destination == "my desk"


def test_refusals_have_their_own_codes(api: Api) -> None:
    a = api.camera("cam-a", segments=2, unit="Unit A")
    _people(api)
    now = api.clock.now_us()
    assert _code(_file(api, "viewer", ["cam-a"], a[0], a[0] + SEG_US)) == (403, "role_forbidden")
    assert _code(_file(api, "appr-a", ["cam-a"], a[0], a[0] + SEG_US)) == (403, "role_forbidden")
    assert _code(_file(api, "off1", ["cam-a"], now - 3 * DAY_US, now - 2 * DAY_US)) == (404, "no_footage")
    assert _code(_file(api, "off1", ["nope"], a[0], a[0] + SEG_US)) == (404, "camera_not_found")
    assert _code(_file(api, "off1", ["cam-a"], a[0] + SEG_US, a[0])) == (422, "window_invalid")
    assert _code(_file(api, "off1", ["cam-a"], a[0], a[0] + 2 * DAY_US)) == (422, "window_too_long")
    assert _code(_file(api, "off1", ["cam-a"], a[0], a[0] + SEG_US, legal_basis=" ")) == (422, "legal_basis_invalid")

    rid = _file(api, "off1", ["cam-a"], a[0], a[0] + SEG_US).json()["id"]
    with api.client("off-b") as c:  # an officer of another unit does not even see it
        assert _code(c.post(f"{V1}/exports/{rid}/cosign")) == (404, "export_not_found")
    api.user("off-b2", ["officer", "approver"], unit="Unit B")
    with api.client("off-b2") as c:  # sees it (approver), still may not co-sign for Unit A
        assert _code(c.post(f"{V1}/exports/{rid}/cosign")) == (403, "cosign_unit_mismatch")
    with api.client("off2") as c:
        assert c.post(f"{V1}/exports/{rid}/cosign").status_code == 200
    with api.client("appr-b") as c:
        r = c.post(f"{V1}/exports/{rid}/approve", json={"reason": "not ours"})
        assert _code(r) == (403, "approval_unit_mismatch")
    with api.client("appr-a") as c:
        assert c.post(f"{V1}/exports/{rid}/approve").status_code == 422  # a decision needs its reason
        r = c.post(f"{V1}/exports/{rid}/reject", json={"reason": "legal basis does not cover this camera"})
        assert r.status_code == 200 and r.json()["state"] == "rejected"
    with api.client("off1") as c:
        assert _code(c.post(f"{V1}/exports/{rid}/job")) == (409, "export_state_invalid")
        assert _code(c.post(f"{V1}/exports/{rid}/withdraw")) == (409, "export_state_invalid")

    # Withdrawn before approval; expiry of an approval after the configured days.
    rid2 = _file(api, "off1", ["cam-a"], a[0], a[0] + SEG_US).json()["id"]
    with api.client("off2") as c:
        assert _code(c.post(f"{V1}/exports/{rid2}/withdraw")) == (403, "role_forbidden")
    with api.client("off1") as c:
        assert c.post(f"{V1}/exports/{rid2}/withdraw").json()["state"] == "withdrawn"
    rid3 = _file(api, "off1", ["cam-a"], a[0], a[0] + SEG_US).json()["id"]
    with api.client("off2") as c:
        c.post(f"{V1}/exports/{rid3}/cosign")
    with api.client("appr-a") as c:
        assert c.post(f"{V1}/exports/{rid3}/approve", json={"reason": "ok"}).json()["state"] == "approved"
    api.clock.advance(8 * 86_400)
    with api.client("off1") as c:
        assert c.get(f"{V1}/exports/{rid3}").json()["state"] == "expired"
        assert _code(c.post(f"{V1}/exports/{rid3}/job")) == (409, "export_request_expired")


def test_grant_route_needs_no_approver_and_is_checked(api: Api) -> None:
    a = api.camera("cam-u", segments=2, unit="Unit A", share_class="unconditional")
    _people(api)
    now = api.clock.now_us()
    g = api.grant(
        "appr-a",
        "off1",
        ["cam-u"],
        actions=["playback", "export"],
        window={"start": iso(a[0]), "end": iso(a[0] + SEG_US)},
    )
    r = _file(api, "off1", ["cam-u"], a[0], a[0] + SEG_US)
    assert r.status_code == 201 and r.json()["route"] == "grant" and r.json()["grant_id"] == g["id"]
    rid = r.json()["id"]
    with api.client("off2") as c:
        assert c.post(f"{V1}/exports/{rid}/cosign").json()["state"] == "approved"
    # Naming a grant whose window does not cover the request is refused with its own code.
    outside = _file(api, "off1", ["cam-u"], a[0], a[0] + 2 * SEG_US, grant_id=g["id"])
    assert _code(outside) == (403, "outside_grant_window")
    view_only = api.grant("appr-a", "off2", ["cam-u"], actions=["playback"])
    assert _code(_file(api, "off2", ["cam-u"], a[0], a[0] + SEG_US, grant_id=view_only["id"])) == (
        403,
        "action_not_granted",
    )
    # Without a covering export grant the same request goes to the approvers.
    assert _file(api, "off2", ["cam-u"], a[0], a[0] + SEG_US).json()["route"] == "approval"
    assert _file(api, "off1", ["cam-u"], a[0], a[0] + 2 * SEG_US).json()["route"] == "approval"
    assert now  # the clock did not move


def test_download_limits_and_expiry(api: Api, tmp_path: Path) -> None:
    a = api.camera("cam-a", segments=2, unit="Unit A")
    _people(api)
    rid = _file(api, "off1", ["cam-a"], a[0], a[0] + SEG_US).json()["id"]
    with api.client("off2") as c:
        c.post(f"{V1}/exports/{rid}/cosign")
    with api.client("appr-a") as c:
        c.post(f"{V1}/exports/{rid}/approve", json={"reason": "ok"})
    with api.client("off1") as c:
        assert c.post(f"{V1}/exports/{rid}/job").status_code == 202
    assert _wait_job(api, "off1", rid)["state"] == "done"
    limit = api.rt.settings.export_max_downloads
    for i in range(limit):
        with api.client("off1" if i % 2 else "off2") as c:
            # A Range request still gets (and counts as) the whole bundle: every download is one complete copy.
            r = c.get(f"{V1}/exports/{rid}/bundle", params={"destination": f"copy {i}"}, headers={"Range": "bytes=0-9"})
            assert r.status_code == 200 and len(r.content) > 10 and r.headers["accept-ranges"] == "none"
            assert zipfile.ZipFile(io.BytesIO(r.content)).testzip() is None
    with api.client("off1") as c:
        r = c.get(f"{V1}/exports/{rid}/bundle", params={"destination": "one more"})
        assert _code(r) == (429, "download_limit_reached")
    api.clock.advance((api.rt.settings.export_bundle_days + 1) * 86_400)
    runner_deadline = time.monotonic() + 10
    with api.client("off1") as c:
        while c.get(f"{V1}/exports/{rid}").json()["job"]["state"] != "deleted":
            assert time.monotonic() < runner_deadline, "the expired bundle was not deleted"
            time.sleep(0.1)
        assert _code(c.get(f"{V1}/exports/{rid}/bundle", params={"destination": "late"})) == (410, "bundle_expired")
    assert not list(api.rt.settings.exports_dir.glob("*.zip"))


def _approved(api: Api, cameras: list[str], start_us: int, end_us: int) -> int:
    rid = _file(api, "off1", cameras, start_us, end_us).json()["id"]
    with api.client("off2") as c:
        assert c.post(f"{V1}/exports/{rid}/cosign").status_code == 200
    with api.client("appr-a") as c:
        assert c.post(f"{V1}/exports/{rid}/approve", json={"reason": "ok"}).json()["state"] == "approved"
    return rid


def test_a_segment_whose_hash_no_longer_matches_stops_the_export(api: Api) -> None:
    a = api.camera("cam-a", segments=3, unit="Unit A")
    _people(api)
    rid = _approved(api, ["cam-a"], a[0], a[0] + 3 * SEG_US)
    damaged = segment_path(api.rt, "cam-a", 2)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    with api.client("off1") as c:
        assert c.post(f"{V1}/exports/{rid}/job").status_code == 202
    job = _wait_job(api, "off1", rid)
    assert job["state"] == "failed" and job["error"]["code"] == "segment_hash_mismatch"
    assert "cam-a" in job["error"]["message"] and "2" in job["error"]["message"]
    assert not [p for p in api.rt.settings.exports_dir.iterdir() if p.is_file()]  # no bundle, no partial file
    with api.client("off1") as c:
        assert _code(c.get(f"{V1}/exports/{rid}/bundle", params={"destination": "x"})) == (409, "bundle_not_ready")
    with api.rt.db.session() as s:
        failed = s.scalars(select(AuditEvent).where(AuditEvent.action == "export.job.failed")).all()
        assert len(failed) == 1 and "segment_hash_mismatch" in (failed[0].reason or "")
        assert not s.scalars(select(ReadPin)).all()
    # Restored from a copy, the same approved request exports.
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    with api.client("off2") as c:
        assert c.post(f"{V1}/exports/{rid}/job").status_code == 202
    assert _wait_job(api, "off2", rid)["state"] == "done"


def test_a_queued_job_can_be_cancelled_and_only_by_a_party(api: Api) -> None:
    a = api.camera("cam-a", segments=1, unit="Unit A")
    _people(api)
    rid = _approved(api, ["cam-a"], a[0], a[0] + SEG_US)
    api.app_state().export_runner.stop()  # nothing picks the job up: it stays queued
    with api.client("off1") as c:
        assert c.post(f"{V1}/exports/{rid}/job").json()["state"] == "queued"
    with api.client("appr-a") as c:
        assert _code(c.post(f"{V1}/exports/{rid}/job/cancel")) == (403, "export_not_party")
    with api.client("off2") as c:
        r = c.post(f"{V1}/exports/{rid}/job/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert _code(c.post(f"{V1}/exports/{rid}/job/cancel")) == (409, "export_job_not_running")


def test_a_non_shared_camera_is_exported_only_by_its_own_unit(api: Api) -> None:
    a = api.camera("cam-n", segments=1, unit="Unit A", share_class="non_shared")
    _people(api)
    assert _code(_file(api, "off-b", ["cam-n"], a[0], a[0] + SEG_US)) == (403, "camera_not_shared")
    assert _file(api, "off1", ["cam-n"], a[0], a[0] + SEG_US).status_code == 201


def test_an_export_that_would_fill_the_disk_is_refused_before_writing(api: Api) -> None:
    a = api.camera("cam-a", segments=2, unit="Unit A")
    _people(api)
    rid = _approved(api, ["cam-a"], a[0], a[0] + 2 * SEG_US)
    api.rt.settings.volume_min_free_bytes = 1 << 62  # the recorder's reserve alone is more than any disk
    with api.client("off1") as c:
        assert c.post(f"{V1}/exports/{rid}/job").status_code == 202
    job = _wait_job(api, "off1", rid)
    assert job["state"] == "failed" and job["error"]["code"] == "export_no_space"
    assert not [p for p in api.rt.settings.exports_dir.iterdir() if p.is_file()]


def test_public_keys_and_findings_over_http(api: Api) -> None:
    from integrity import keys
    from integrity.verify_archive import Problem, open_finding

    _people(api)
    api.user("adm", ["admin"], unit="IT")
    with api.rt.db.session() as s:
        key = keys.ensure_key(s, api.rt.settings.keys_dir, api.clock.now_us())
        fingerprint = key.fingerprint
    with api.client("viewer") as c:
        listed = c.get(f"{V1}/keys").json()["keys"]
        assert [(k["fingerprint"], k["active"]) for k in listed] == [(fingerprint, True)]
        assert "PRIVATE" not in json.dumps(listed)
        assert _code(c.get(f"{V1}/integrity/findings")) == (403, "role_forbidden")
    with api.rt.db.session() as s:
        open_finding(
            s, Problem("hash_mismatch", "cam-a", 7, api.clock.now_us(), "segment cam-a #7", "sha256 differs"),
            "scrubber", api.clock.now_us(),
        )  # fmt: skip
    with api.client("aud") as c:
        (f,) = c.get(f"{V1}/integrity/findings").json()["findings"]
        assert (f["kind"], f["camera_id"], f["seq"]) == ("hash_mismatch", "cam-a", 7)
    with httpx.Client(base_url=api.url) as c:
        health = c.get(f"{V1}/health").json()
        assert health["status"] == "degraded" and "integrity_mismatch" in health["alarms"]


def test_two_people_means_two_people_and_a_made_bundle_cannot_be_withdrawn(api: Api) -> None:
    a = api.camera("cam-a", segments=1, unit="Unit A")
    _people(api)
    api.user("both", ["officer", "approver"], unit="Unit A")
    rid = _file(api, "off1", ["cam-a"], a[0], a[0] + SEG_US).json()["id"]
    with api.client("both") as c:  # co-signs as an officer, then may not approve the same request
        assert c.post(f"{V1}/exports/{rid}/cosign").status_code == 200
        assert _code(c.post(f"{V1}/exports/{rid}/approve", json={"reason": "mine"})) == (403, "approval_conflict")
    with api.client("appr-a") as c:
        assert c.post(f"{V1}/exports/{rid}/approve", json={"reason": "ok"}).json()["state"] == "approved"
    with api.client("off1") as c:
        assert c.post(f"{V1}/exports/{rid}/job").status_code == 202
    assert _wait_job(api, "off1", rid)["state"] == "done"
    with api.client("off1") as c:
        assert _code(c.post(f"{V1}/exports/{rid}/withdraw")) == (409, "export_in_progress")
