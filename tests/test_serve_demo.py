"""The README's first command: ``nvr serve --demo`` records the demo camera; ``nvr status --json`` says so."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import httpx

from nvr.demo.service import DEMO_UNIT
from tests.support.api_server import free_port
from tests.support.recording import sha256


def _nvr_json(env: dict[str, str], *args: str) -> object:
    r = subprocess.run(
        [sys.executable, "-m", "nvr", *args, "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _api_answers_for_the_first_admin(env: dict[str, str], url: str, tmp_path: Path) -> None:
    """The same process serves the API: the first admin, made on the command line, sees the demo camera."""
    made = subprocess.run(
        [sys.executable, "-m", "nvr", "user", "create", "--username", "chief", "--name", "Chief", "--staff-number", "1",
         "--unit", "HQ", "--role", "admin", "--password-stdin"],
        env=env, input="a long enough password\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/api/v1/health").json() == {"status": "ok", "alarms": []}
        token = c.post("/api/v1/auth/login", json={"username": "chief", "password": "a long enough password"})
        cams = c.get("/api/v1/cameras", headers={"Authorization": f"Bearer {token.json()['token']}"}).json()
    assert [cam["id"] for cam in cams["cameras"]] == ["demo-1"]
    assert cams["cameras"][0]["stream_url"].startswith("rtsp://127.0.0.1:")  # admins see the URL (never credentials)
    _officer_plays_what_was_recorded(env, url, token.json()["token"], tmp_path)


def _officer_plays_what_was_recorded(env: dict[str, str], url: str, admin: str, tmp_path: Path) -> None:
    rows = sorted(_nvr_json(env, "segments", "list", "--camera", "demo-1"), key=lambda r: r["seq"])  # type: ignore[arg-type]
    start, end = rows[0]["start"], rows[-1]["end"]
    pw = "another long password"
    with httpx.Client(base_url=url, timeout=30) as c:
        ids = {}
        for name, role in (("appr", "approver"), ("olga", "officer")):
            # An approver or officer waits for a second admin: filed on the command line, confirmed by the admin.
            filed = subprocess.run(
                [sys.executable, "-m", "nvr", "user", "create", "--username", name, "--name", name,
                 "--staff-number", name, "--unit", DEMO_UNIT, "--role", role, "--password-stdin", "--json"],
                env=env, input=pw + "\n", capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert filed.returncode == 0, filed.stderr
            change = json.loads(filed.stdout)["change"]["id"]
            r = c.post(f"/api/v1/user-changes/{change}/confirm", headers={"Authorization": f"Bearer {admin}"})
            assert r.status_code == 200, r.text
            ids[name] = r.json()["user_id"]
        tok = {n: c.post("/api/v1/auth/login", json={"username": n, "password": pw}).json()["token"] for n in ids}
        grant = {
            "user_id": ids["olga"], "cameras": ["demo-1"], "actions": ["playback"], "window": {"last_days": 1},
            "valid_until": "2099-01-01T00:00:00Z", "purpose": "demo review", "case_ref": "DEMO-1",
        }  # fmt: skip
        r = c.post("/api/v1/grants", json=grant, headers={"Authorization": f"Bearer {tok['appr']}"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "grant_validity_too_long"
        r = c.post(
            "/api/v1/grants",
            json={**grant, "valid_until": _in_days(30)},
            headers={"Authorization": f"Bearer {tok['appr']}"},
        )
        assert r.status_code == 201, r.text
        auth = {"Authorization": f"Bearer {tok['olga']}"}
        listing = c.get("/api/v1/cameras/demo-1/recordings", params={"start": start, "end": end}, headers=auth).json()
        assert len(listing["runs"]) == 1 and listing["runs"][0]["segments"] == len(rows)  # one run, touching
        r = c.get(
            "/api/v1/cameras/demo-1/playback", params={"start": start, "end": end, "purpose": "check"}, headers=auth
        )
    assert r.status_code == 200 and r.headers["x-nvr-gaps"] == "[]"
    out = tmp_path / "played.mp4"
    out.write_bytes(r.content)
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == sum(row["frames"] for row in rows)  # every recorded frame, nothing re-encoded or lost


def _in_days(days: int) -> str:
    import datetime as dt

    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).isoformat().replace("+00:00", "Z")


def test_serve_demo_records_and_status_says_recording(nvr_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    env = dict(nvr_env, NVR_DEMO_RTSP_PORT="0", NVR_SEGMENT_SECONDS="2", NVR_API_PORT=str(port))
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "nvr", "serve", "--demo"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        state = None
        while time.monotonic() < deadline:
            cams = _nvr_json(env, "status")["cameras"]  # type: ignore[index]
            demo = [c for c in cams if c["camera_id"] == "demo-1"]
            state = demo[0]["state"] if demo else None
            if state == "recording" and demo[0]["segments_24h"] >= 3:
                break
            time.sleep(0.5)
        assert state == "recording", (tmp_path / "serve.log").read_text()
        _api_answers_for_the_first_admin(env, f"http://127.0.0.1:{port}", tmp_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log.close()
    assert code == 0
    assert "retention sweeper started" in (tmp_path / "serve.log").read_text(), "serve must run the sweeper"
    rows = _nvr_json(env, "segments", "list", "--camera", "demo-1")
    assert rows
    for r in rows:  # type: ignore[attr-defined]
        assert sha256(Path(r["path"])) == r["sha256"]
    volumes = _nvr_json(env, "volume", "list")
    (vol,) = volumes  # type: ignore[misc]
    assert vol["identity"] == "ok"
    assert vol["free_bytes"] > 0
    assert vol["bytes_per_camera"]["demo-1"] == sum(r["bytes"] for r in rows)  # type: ignore[attr-defined]
    after = _nvr_json(env, "status")["cameras"][0]  # type: ignore[index]
    assert after["state"] == "offline" and after["reason"] == "recorder stopped"
