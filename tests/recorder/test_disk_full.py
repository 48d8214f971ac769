"""A full disk stops writing with an alarm and never corrupts a finished segment.

Runs on a real, size-limited file system (tmpfs mounted by the test; needs root, which CI has here).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from nvr.models import CameraEvent
from nvr.runtime import Runtime
from nvr.status import all_status
from storage import volumes as vol
from tests.support.recording import add_camera, gaps, segments, sha256, wait_for


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small-volume"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave_free: int) -> None:
    free = vol.free_bytes(mnt)
    with open(mnt / "filler.bin", "wb") as f:
        f.write(b"\0" * max(0, free - leave_free))
        f.flush()
        os.fsync(f.fileno())


@pytest.fixture
def runtime_on(settings_factory) -> Iterator[Callable[..., Runtime]]:
    """A runtime whose only volume is the small file system; disposed after the test."""
    made: list[Runtime] = []

    def make(mnt: Path, **kw: object) -> Runtime:
        rt = Runtime.open(settings_factory(volumes=[mnt], **kw))
        made.append(rt)
        with rt.db.session() as s:
            vol.init_volume(s, mnt, rt.db.database_id(), rt.clock.now_us())
        return rt

    yield make
    for rt in made:
        rt.db.dispose()


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
