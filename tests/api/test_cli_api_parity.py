"""The command line and the API share every rule: the same use cases, run once through each, write the same audit
events (action, outcome, object, camera, reason); only the actor differs, by design (an admin's name on the API,
``cli:<os user>`` on the command line)."""

from __future__ import annotations

import re
import subprocess
import sys

from sqlalchemy import select

from api import audit
from api.cameras import create_camera
from nvr import registry
from nvr.models import AuditEvent, User, UserChange
from retention.policies import Change
from tests.api.conftest import PASSWORD

DIGEST = re.compile(r"\b[0-9a-f]{64}\b")


def _nvr(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "nvr", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, (args, r.stdout, r.stderr)


def _camera(api, camera_id: str) -> None:
    """An active camera made through the service (so its record has its audit history), outside either run."""
    fields = registry.CameraFields(
        name=f"Camera {camera_id}",
        stream_url=f"rtsp://127.0.0.1:8554/{camera_id}",
        managing_unit="Unit A",
        share_class="authorized",
    )
    with api.rt.db.session() as s:
        ch = Change(api.rt.settings, api.clock.now_us(), audit.SYSTEM, audit.INTERNAL, True)
        create_camera(s, ch, camera_id, fields, activate=True)


def _last_seq(api) -> int:
    with api.rt.db.session() as s:
        return s.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1)) or 0


def _run_events(api, after: int, tag: str) -> tuple[list[tuple[str, ...]], list[str]]:
    """The events written since ``after``, with this run's ids and digests put in words: the user, the user change
    and the camera each run made, and each camera record's digest (the records' times differ)."""
    with api.rt.db.session() as s:
        uid = s.scalar(select(User.id).where(User.username == f"{tag}-v"))
        cid = s.scalar(select(UserChange.id).where(UserChange.user_id == uid))
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq)))
    names = {f"user:{uid}": "user:<made>", f"user_change:{cid}": "user_change:<filed>", f"cam-{tag}": "cam-<run>"}

    def words(text: str | None) -> str | None:
        if text is None:
            return None
        for raw, word in names.items():
            text = re.sub(rf"{re.escape(raw)}\b", word, text)
        return DIGEST.sub("<digest>", text)

    rows = [(e.action, e.outcome, words(e.object_id), words(e.camera_id), words(e.reason)) for e in events]
    return rows, [e.actor_name or "" for e in events]  # type: ignore[return-value]


def test_the_cli_and_the_api_write_the_same_audit_events(api, nvr_env) -> None:
    api.user("root", ["admin"])
    _camera(api, "cam-api")
    _camera(api, "cam-cli")

    # Through the API, as an admin.
    start = _last_seq(api)
    with api.client("root") as c:
        body = {"username": "api-v", "full_name": "Vera V", "staff_number": "V-api", "unit": "Unit A"}
        r = c.post("/api/v1/users", json={**body, "roles": ["viewer"], "password": PASSWORD})
        assert r.status_code == 201, r.text
        uid = r.json()["id"]
        assert c.post(f"/api/v1/users/{uid}/disable").status_code == 200
        assert c.post(f"/api/v1/users/{uid}/enable").status_code == 202
        assert c.patch("/api/v1/cameras/cam-api", json={"name": "North gate"}).status_code == 200
        r = c.post("/api/v1/cameras/cam-api/state", json={"state": "suspended", "reason": "mast repair"})
        assert r.status_code == 200, r.text
    api_rows, api_actors = _run_events(api, start, "api")

    # Through the command line, the same steps.
    middle = _last_seq(api)
    _nvr(
        nvr_env,
        "user", "create", "--username", "cli-v", "--name", "Vera V", "--staff-number", "V-cli", "--unit", "Unit A",
        "--role", "viewer", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    _nvr(nvr_env, "user", "disable", "cli-v")
    _nvr(nvr_env, "user", "enable", "cli-v")
    _nvr(nvr_env, "camera", "update", "cam-cli", "--name", "North gate")
    _nvr(nvr_env, "camera", "suspend", "cam-cli", "--reason", "mast repair")
    cli_rows, cli_actors = _run_events(api, middle, "cli")

    assert [row[0] for row in api_rows] == [
        "user.create",
        "user.disable",
        "user.change.request",
        "camera.update",
        "camera.state",
    ]
    assert cli_rows == api_rows
    assert (
        api_rows[2][4] == "enable user:<made>"
        and api_rows[4][4] == "active → suspended: mast repair; record sha256 <digest>"
    )
    assert set(api_actors) == {"Root (root)"}
    assert len(set(cli_actors)) == 1 and cli_actors[0].startswith("cli:")
