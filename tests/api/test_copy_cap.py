"""The viewer cap: a person holding ``viewer`` never copies footage, beside any other role. Every step that puts a
copy in someone's hands refuses them with 403 ``viewer_cannot_copy``, judged on the roles held now: filing,
co-signing, starting the job, the job itself when it runs, and each download. Viewing stays allowed."""

from __future__ import annotations

import zipfile
from io import BytesIO

from sqlalchemy import select, update

from nvr.clock import iso
from nvr.models import AuditEvent, ExportJob, ExportRequest, User
from tests.api.conftest import Api
from tests.api.test_exports import SEG_US, V1, _approved, _code, _file, _people, _wait_job


def _set_roles(api: Api, who: str, roles: str) -> None:
    """What an admin changing the person's roles leaves in the database (how that change is made and confirmed is
    tested with the users API): the next request of the person is judged on these roles."""
    with api.rt.db.session() as s:
        s.execute(update(User).where(User.id == api.ids[who]).values(roles=roles))


def _denials(api: Api, action: str) -> list[tuple[int | None, str | None]]:
    with api.rt.db.session() as s:
        rows = s.scalars(
            select(AuditEvent).where(AuditEvent.action == action, AuditEvent.outcome == "denied").order_by("seq")
        )
        return [(e.actor_id, e.reason) for e in rows]


def test_a_viewer_officer_cannot_file_or_cosign_but_may_still_watch(api: Api) -> None:
    a = api.camera("cam-a", segments=2, unit="Unit A")
    _people(api)
    api.user("vo", ["officer", "viewer"], unit="Unit A")
    api.grant("appr-a", "vo", ["cam-a"])
    assert _code(_file(api, "vo", ["cam-a"], a[0], a[0] + SEG_US)) == (403, "viewer_cannot_copy")
    rid = _file(api, "off1", ["cam-a"], a[0], a[0] + SEG_US).json()["id"]
    with api.client("vo") as c:
        assert _code(c.post(f"{V1}/exports/{rid}/cosign")) == (403, "viewer_cannot_copy")
        # Viewing is what a viewer does: playback of the granted camera is served.
        r = c.get(f"{V1}/cameras/cam-a/playback", params={"start": iso(a[0]), "end": iso(a[1]), "purpose": "review"})
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    with api.rt.db.session() as s:
        assert [r.requester_id for r in s.scalars(select(ExportRequest))] == [api.ids["off1"]]
        r = s.get(ExportRequest, rid)
        assert r is not None and (r.state, r.cosigner_id) == ("pending_cosign", None)
    assert _denials(api, "export.request") == [(api.ids["vo"], "viewer_cannot_copy")]
    assert _denials(api, "export.cosign") == [(api.ids["vo"], "viewer_cannot_copy")]


def test_a_party_who_became_a_viewer_can_neither_start_the_job_nor_download(api: Api) -> None:
    a = api.camera("cam-a", segments=2, unit="Unit A")
    _people(api)
    rid = _approved(api, ["cam-a"], a[0], a[0] + SEG_US)  # filed by off1, co-signed by off2
    _set_roles(api, "off2", "officer,viewer")
    with api.client("off2") as c:
        assert _code(c.post(f"{V1}/exports/{rid}/job")) == (403, "viewer_cannot_copy")
    with api.client("off1") as c:
        assert c.post(f"{V1}/exports/{rid}/job").status_code == 202
    assert _wait_job(api, "off1", rid)["state"] == "done"
    with api.client("off2") as c:
        r = c.get(f"{V1}/exports/{rid}/bundle", params={"destination": "my own USB stick"})
        assert _code(r) == (403, "viewer_cannot_copy")
    # An officer who became an operator never receives copies either (no grant could give them export).
    _set_roles(api, "off1", "operator")
    with api.client("off1") as c:
        r = c.get(f"{V1}/exports/{rid}/bundle", params={"destination": "desk"})
        assert _code(r) == (403, "role_forbidden")
    with api.rt.db.session() as s:
        assert s.scalar(select(ExportJob.downloads).where(ExportJob.request_id == rid)) == 0
    _set_roles(api, "off2", "officer")
    with api.client("off2") as c:
        r = c.get(f"{V1}/exports/{rid}/bundle", params={"destination": "court USB drive #7"})
        assert r.status_code == 200 and zipfile.ZipFile(BytesIO(r.content)).testzip() is None
    assert _denials(api, "export.job.start") == [(api.ids["off2"], "viewer_cannot_copy")]
    assert _denials(api, "export.download") == [
        (api.ids["off2"], "viewer_cannot_copy"),
        (api.ids["off1"], "role_forbidden"),
    ]


def test_a_job_whose_starter_became_a_viewer_fails_when_it_runs(api: Api) -> None:
    a = api.camera("cam-a", segments=2, unit="Unit A")
    _people(api)
    rid = _approved(api, ["cam-a"], a[0], a[0] + SEG_US)
    runner = api.app_state().export_runner
    runner.stop()  # the job waits in the queue while the role changes
    with api.client("off1") as c:
        assert c.post(f"{V1}/exports/{rid}/job").json()["state"] == "queued"
    _set_roles(api, "off1", "officer,viewer")
    assert runner.run_once()
    with api.client("off2") as c:
        job = c.get(f"{V1}/exports/{rid}").json()["job"]
    assert (job["state"], job["error"]["code"], job["bundle_sha256"]) == ("failed", "viewer_cannot_copy", None)
    assert not [p for p in api.rt.settings.exports_dir.iterdir() if p.is_file()]  # no bundle was written
    with api.rt.db.session() as s:
        (failed,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "export.job.failed"))
    assert failed.actor_id == api.ids["off1"] and "viewer_cannot_copy" in (failed.reason or "")


def test_approving_is_not_copying(api: Api) -> None:
    """An approver who also holds viewer still decides on requests: deciding hands no copy to the approver."""
    a = api.camera("cam-a", segments=1, unit="Unit A")
    _people(api)
    api.user("av", ["approver", "viewer"], unit="Unit A")
    rid = _file(api, "off1", ["cam-a"], a[0], a[0] + SEG_US).json()["id"]
    with api.client("off2") as c:
        assert c.post(f"{V1}/exports/{rid}/cosign").status_code == 200
    with api.client("av") as c:
        r = c.post(f"{V1}/exports/{rid}/approve", json={"reason": "letter checked"})
        assert r.status_code == 200 and r.json()["state"] == "approved"
        assert _code(c.get(f"{V1}/exports/{rid}/bundle", params={"destination": "x"})) == (403, "export_not_party")
