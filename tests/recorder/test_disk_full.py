"""A full disk stops writing with an alarm and never corrupts a finished segment.

Runs on a real, size-limited file system (tmpfs mounted by the test; needs root, which CI has here).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from nvr.models import CameraEvent
from nvr.runtime import Runtime
from nvr.status import all_status
from storage import volumes as vol
from tests.support.recording import add_camera, gaps, segments, sha256, wait_for


@pytest.fixture
def small_fs(tmpfs) -> Path:
    return tmpfs("2m")


def _fill(mnt: Path, leave_free: int) -> None:
    free = vol.free_bytes(mnt)
    with open(mnt / "filler.bin", "wb") as f:
        f.write(b"\0" * max(0, free - leave_free))
        f.flush()
        os.fsync(f.fileno())


def _state(rt: Runtime, cam: str) -> tuple[str, str | None]:
    with rt.db.session() as s:
        st = next(c for c in all_status(s, rt.clock.now_us()) if c.camera_id == cam)
        return st.state, st.reason


def _check_finished_segments_intact(rt: Runtime, cam: str) -> list:
    rows = segments(rt, cam)
    for seg, path in rows:
        assert sha256(path) == seg.sha256, f"segment {seg.seq} changed on disk"
    return rows


def test_out_of_space_keeps_written_fragments_and_alarms(runtime_on, small_fs, demo_server) -> None:
    from nvr.recorder.supervisor import Supervisor

    rt = runtime_on(small_fs, segment_seconds=30, volume_min_free_bytes=0)
    add_camera(rt, "cam1", demo_server.url("cam1"))
    _fill(small_fs, 150_000)  # a few seconds of the test pattern, then ENOSPC mid-segment
    sup = Supervisor(rt.recorder_context(), sync_seconds=0.5)
    sup.start()
    try:
        wait_for(lambda: _state(rt, "cam1")[0] == "error", 40, "the recorder to stop on a full disk")
        _, reason = _state(rt, "cam1")
        assert reason.startswith("storage_full"), reason
    finally:
        sup.stop()
    rows = _check_finished_segments_intact(rt, "cam1")
    assert rows, "the fragments written before the disk filled must be kept as a segment"
    assert rows[0][0].recovered
    assert not list(small_fs.rglob("*.partial"))
    assert any(g.reason == "storage_full" for g in gaps(rt, "cam1"))
    with rt.db.session() as s:
        assert s.scalar(select(CameraEvent).where(CameraEvent.kind == "storage_full")) is not None


def test_critical_mark_stops_writing_cleanly_before_the_disk_is_full(runtime_on, small_fs, demo_server) -> None:
    from nvr.recorder.supervisor import Supervisor

    rt = runtime_on(small_fs, segment_seconds=30, volume_min_free_bytes=200_000)
    add_camera(rt, "cam1", demo_server.url("cam1"))
    _fill(small_fs, 320_000)
    sup = Supervisor(rt.recorder_context(), sync_seconds=0.5)
    sup.start()
    try:
        wait_for(lambda: _state(rt, "cam1")[0] == "error", 40, "the recorder to stop at the critical mark")
        assert _state(rt, "cam1")[1].startswith("storage_full")
        assert vol.free_bytes(small_fs) > 0, "the critical mark must stop writing before the disk is full"
    finally:
        sup.stop()
    rows = _check_finished_segments_intact(rt, "cam1")
    assert rows and not rows[0][0].recovered, "cut cleanly at a GOP boundary, not recovered from a torn file"
    assert any(g.reason == "storage_full" for g in gaps(rt, "cam1"))


def test_full_volume_of_protected_footage_stops_recording_and_deletes_nothing_protected(
    runtime_on, small_fs, demo_server
) -> None:
    """Issue 4's done-when: footage inside retention and held footage fill the volume; the sweeper frees only the
    expired, unheld footage, which is not enough; the recorder stops with storage_full, says so in the health
    endpoint, the metrics, a gap and an audit event, and every protected file is still there, unchanged."""
    import httpx

    from nvr.models import AuditEvent, EvidenceHold, HoldCamera
    from nvr.recorder.supervisor import Supervisor
    from retention.sweeper import Sweeper
    from tests.support import footage
    from tests.support.api_server import make_user, running_api

    day = 86_400_000_000
    rt = runtime_on(small_fs, segment_seconds=30, volume_min_free_bytes=0)
    now = rt.clock.now_us()
    footage.add_camera(rt, "old")
    expired_held = footage.add_segments(rt, "old", now - 40 * day, 3)
    expired_free = footage.add_segments(rt, "old", expired_held[-1] + 2_000_000, 3)
    footage.add_segments(rt, "old", now - day, 3)  # inside retention
    with rt.db.session() as s:
        hold = EvidenceHold(
            case_ref="CASE-1",
            title="held",
            reason="evidence",
            start_us=expired_held[0],
            end_us=expired_held[-1] + 1_000_000,
            state="active",
            placed_by=None,
            placed_by_name="test",
            placed_us=now,
        )
        s.add(hold)
        s.flush()
        s.add(HoldCamera(hold_id=hold.id, camera_id="old"))
    protected = {seg.seq: (path, seg.sha256) for seg, path in segments(rt, "old") if seg.start_us not in expired_free}
    freeable = sum(seg.bytes for seg, _ in segments(rt, "old") if seg.start_us in expired_free)
    # Leave less room than the critical mark even after the sweeper frees what it may.
    _fill(small_fs, 60_000)
    critical = 60_000 + freeable + 200_000
    rt.settings = rt.settings.model_copy(
        update={
            "volume_min_free_bytes": critical,
            "retention_high_water_percent": 50.0,
            "retention_low_water_percent": 40.0,
        }
    )
    report = Sweeper(rt.db, rt.settings, rt.clock).run()
    assert report.segments == 3, "exactly the expired, unheld segments go"
    left = {seg.seq for seg, _ in segments(rt, "old")}
    assert left == set(protected)
    add_camera(rt, "cam1", demo_server.url("cam1"))
    sup = Supervisor(rt.recorder_context(), sync_seconds=0.5)
    sup.start()
    try:
        wait_for(
            lambda: _state(rt, "cam1")[0] == "error", 40, "the recorder to stop on a volume full of protected footage"
        )
        assert _state(rt, "cam1")[1].startswith("storage_full")
        _, token = make_user(rt, rt.clock, "ops", ["admin"])  # sees every camera's series (operators: granted ones)
        with running_api(rt, rt.clock) as url, httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/api/v1/health").json() == {"status": "degraded", "alarms": ["storage_full"]}
            detail = c.get("/api/v1/system/health", headers={"Authorization": f"Bearer {token}"}).json()
            metrics = c.get("/api/v1/metrics", headers={"Authorization": f"Bearer {token}"}).text
        assert detail["storage_full"]["cameras"] == ["cam1"]
        assert [v["state"] for v in detail["volumes"]] == ["critical"]
        assert 'nvr_storage_full{camera="cam1"} 1.0' in metrics
        assert 'nvr_storage_full{camera="old"}' not in metrics, "only active cameras are listed"
        # A second sweep under pressure still deletes nothing protected.
        assert Sweeper(rt.db, rt.settings, rt.clock).run().segments == 0
    finally:
        sup.stop()
    for seq, (path, digest) in protected.items():
        assert sha256(path) == digest, f"protected segment {seq} changed or vanished"
    assert any(g.reason == "storage_full" for g in gaps(rt, "cam1"))
    with rt.db.session() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "storage.full")))
    assert [(e.camera_id, e.outcome) for e in events] == [("cam1", "failed")], "one audit event per outage"
