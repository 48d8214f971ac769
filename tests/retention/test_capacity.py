"""The capacity forecast: the steady-state model on its own, then through the real API and the `nvr` command over a
real database and volume: measured rates, usable/held/deletable bytes and days from known segment sizes, and the
warning that refuses (409 capacity_insufficient) a change a camera's policy could not survive unless acknowledged."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

from pytest import approx
from sqlalchemy import select

from nvr.models import AuditEvent, EvidenceHold, HoldCamera, Segment, Volume
from retention.capacity import Flow, days_held
from storage import catalog, layout
from tests.api import conftest as api_tests
from tests.support import footage

api = api_tests.api  # the real-server fixture of the API tests, shared by name
DAY_US = api_tests.DAY_US
S = 1_000_000
INF = math.inf


def test_days_held_shares_what_is_left_oldest_first() -> None:
    r = 5.0
    # Both minimums fit: the rest is shared, so both keep the same number of days.
    roomy = 200 * r
    assert days_held([Flow("a", r, 90, INF), Flow("b", r, 30, INF)], roomy) == {"a": roomy / r / 2, "b": roomy / r / 2}
    # The 90-day camera's footage is protected longer: the 30-day one keeps what is left, still over its minimum.
    fits = 130 * r
    assert days_held([Flow("a", r, 90, INF), Flow("b", r, 30, INF)], fits) == {"a": 90, "b": fits / r - 90}
    # Minimums do not fit: the short one is cut at its minimum, the long one falls short of its own.
    tight = 100 * r
    assert days_held([Flow("a", r, 90, INF), Flow("b", r, 30, INF)], tight) == {"a": tight / r - 30, "b": 30}
    # A camera with max_days needs only max_days of space; the other gets the rest.
    assert days_held([Flow("a", r, 30, 35), Flow("b", 2 * r, 30, INF)], roomy) == {
        "a": 35,
        "b": (roomy - 35 * r) / 2 / r,
    }


def _add_recording(api, camera_id: str, start_us: int, count: int, seconds: int) -> int:
    """``count`` touching segments of ``seconds`` of media each, registered as the recorder does. Each file is a real
    copy of the test clip; the rows say they last longer, so an hour of footage costs a few file copies (the
    forecast reads only bytes and durations). Returns the clip's size."""
    src = footage.clip()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    with api.rt.db.session() as s:
        vol = s.scalars(select(Volume)).one()
        for i in range(count):
            t = start_us + i * seconds * S
            rel = str(layout.stem_for(camera_id, t)) + ".mp4"
            (Path(vol.path) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, Path(vol.path) / rel)
            catalog.register_segment(
                s,
                camera_id=camera_id,
                volume_id=vol.id,
                rel_path=rel,
                start_us=t,
                media_duration_us=seconds * S,
                size=src.stat().st_size,
                frames=seconds * footage.FPS,
                codecs="h264",
                clock_offset_us=0,
                sha256=digest,
                recovered=False,
                now_us=api.clock.now_us(),
                floor_days=api.rt.settings.retention_floor_days,
            )
    return src.stat().st_size


def _get(api, who: str, path: str):
    with api.client(who) as c:
        return c.get(path)


def _send(api, method: str, path: str, body: dict):
    with api.client("admin") as c:
        return c.request(method, path, json=body)


def _nvr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nvr", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,  # no terminal: nothing can be confirmed interactively
    )


def test_forecast_and_the_warning_before_saving(api, nvr_env) -> None:
    for who, roles in (("admin", ["admin"]), ("operator", ["operator"]), ("auditor", ["auditor"]), ("v", ["viewer"])):
        api.user(who, roles)
    now = api.clock.now_us()
    # cam-1: an hour of footage (six 10-minute segments) today: measured. cam-2: seconds today (too little to measure)
    # and two segments 60 days old, past their retention; a hold keeps the first of those.
    api.camera("cam-1")
    size = _add_recording(api, "cam-1", now - 2 * 3600 * S, 6, 600)
    api.camera("cam-2", segments=2)
    old = footage.add_segments(api.rt, "cam-2", now - 60 * DAY_US, 2)
    with api.rt.db.session() as s:
        hold = EvidenceHold(
            case_ref="CASE-1",
            title="t",
            reason="r",
            start_us=old[0],
            end_us=old[0] + S,
            state="active",
            placed_by_name="test",
            placed_us=now,
        )
        s.add(hold)
        s.flush()
        s.add(HoldCamera(hold_id=hold.id, camera_id="cam-2"))
        volume_path = s.scalars(select(Volume.path)).one()
    rate = 6 * size * DAY_US / (6 * 600 * S)  # bytes per day of recorded media
    footage_bytes = 6 * size + 4 * size

    # Leave the footage about 100 days of cam-1's rate, whatever the size of the test machine's disk: the critical
    # reserve takes the rest. The figures below are checked against the free space the answer itself reports.
    reserve = max(0, shutil.disk_usage(volume_path).free + footage_bytes - size - int(100 * rate))
    api.rt.settings.volume_min_free_bytes = reserve

    assert _get(api, "v", "/api/v1/capacity").json()["error"]["code"] == "role_forbidden"
    assert _get(api, "auditor", "/api/v1/capacity").status_code == 200
    # An operator sees only the cameras a grant of theirs covers (tests/api/test_input_hardening.py); the admin all.
    r = _get(api, "admin", "/api/v1/capacity")
    assert r.status_code == 200, r.text
    f = r.json()
    (v,) = f["volumes"]
    cams = {c["camera"]: c for c in f["cameras"]}
    assert cams["cam-1"]["measured"] and cams["cam-1"]["bytes_per_day"] == round(rate, 1)
    assert not cams["cam-2"]["measured"] and "not measured" in cams["cam-2"]["note"]
    assert (v["footage_bytes"], v["held_bytes"], v["deletable_now_bytes"]) == (footage_bytes, size, size)
    usable = v["free_bytes"] - reserve + footage_bytes - size
    assert v["usable_bytes"] == usable and v["critical_reserve_bytes"] == reserve
    assert cams["cam-1"]["holds_days"] == approx(usable / rate, abs=0.01) and cams["cam-1"]["holds_days"] > 30
    assert f["warnings"] == []

    # A new camera on a ten-year policy: its rate is taken as the median of the measured ones (cam-1's), and ten
    # years of it do not fit. Refused, nothing saved, the denial audited; then saved when acknowledged.
    assert _send(api, "POST", "/api/v1/retention/policies", {"name": "decade", "min_days": 3650}).status_code == 201
    body = {"id": "cam-3", "name": "N", "stream_url": "rtsp://h/x", "managing_unit": "Unit A", "policy": "decade"}
    r = _send(api, "POST", "/api/v1/cameras", body)
    assert r.status_code == 409 and r.json()["error"]["code"] == "capacity_insufficient", r.text
    assert "camera cam-3 needs 3650 days" in r.json()["error"]["message"]
    assert _get(api, "admin", "/api/v1/cameras/cam-3").status_code == 404
    r = _send(api, "POST", "/api/v1/cameras", {**body, "acknowledge_capacity_warning": True})
    assert r.status_code == 201, r.text
    (w,) = r.json()["capacity_warnings"]
    assert (w["code"], w["camera"], w["needs_days"], w["volume"]) == ("policy_unmeetable", "cam-3", 3650, v["id"])

    # Moving the measured camera onto it: refused with nothing changed, then saved when acknowledged.
    kept_before = _retain_until(api, "cam-1")
    r = _send(api, "PUT", "/api/v1/cameras/cam-1/policy", {"policy": "decade"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "capacity_insufficient", r.text
    assert _retain_until(api, "cam-1") == kept_before
    r = _send(api, "PUT", "/api/v1/cameras/cam-1/policy", {"policy": "decade", "acknowledge_capacity_warning": True})
    assert r.status_code == 200 and r.json()["extended_segments"] == 6, r.text
    assert [w["camera"] for w in r.json()["capacity_warnings"]] == ["cam-1"]
    with api.rt.db.session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.reason.contains("capacity_insufficient"))).all()
        assert [(e.action, e.outcome) for e in events] == [
            ("camera.create", "denied"),
            ("retention.policy.assign", "denied"),
        ]
        saved = s.scalars(select(AuditEvent).where(AuditEvent.reason.contains("acknowledged capacity warning"))).all()
        assert [(e.action, e.camera_id) for e in saved] == [
            ("camera.create", "cam-3"),
            ("retention.policy.assign", "cam-1"),
        ]

    f = _get(api, "admin", "/api/v1/capacity").json()
    (w,) = f["warnings"]
    assert (w["code"], w["camera"], w["needs_days"], w["volume"]) == ("policy_unmeetable", "cam-1", 3650, v["id"])
    usable = f["volumes"][0]["usable_bytes"]
    assert w["holds_days"] == approx(usable / rate, abs=0.01)

    # The command line: the same forecast (exit 0 even with warnings), and a change it would have to confirm is
    # refused without a terminal, saved with --yes.
    env = {**nvr_env, "NVR_VOLUME_MIN_FREE_BYTES": str(reserve)}
    out = _nvr(env, "capacity", "--json")
    assert out.returncode == 0, out.stderr
    assert [(w["code"], w["camera"]) for w in json.loads(out.stdout)["warnings"]] == [("policy_unmeetable", "cam-1")]
    human = _nvr(env, "capacity")
    assert human.returncode == 0 and "WARNING policy_unmeetable: camera cam-1 needs 3650 days" in human.stdout
    out = _nvr(env, "retention", "policy", "update", "decade", "--min-days", "3700")
    assert out.returncode == 1 and out.stderr.startswith("error: capacity_insufficient:"), out.stderr
    out = _nvr(env, "retention", "policy", "update", "decade", "--min-days", "3700", "--yes")
    assert out.returncode == 0 and "WARNING (acknowledged) policy_unmeetable" in out.stdout, out.stderr


def _retain_until(api, camera_id: str) -> list[int]:
    with api.rt.db.session() as s:
        return list(s.scalars(select(Segment.retain_until_us).where(Segment.camera_id == camera_id)))
