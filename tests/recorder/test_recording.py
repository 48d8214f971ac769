"""Recording from a real RTSP server (the built-in demo camera) with the real supervisor."""

from __future__ import annotations

import itertools
import logging

import pytest

from integrity import chain
from nvr.status import all_status
from storage.catalog import linked_fields
from tests.support.recording import FPS, add_camera, decode_all, gaps, segments, sha256, wait_for


def _status(rt, camera_id):
    with rt.db.session() as s:
        return next(c for c in all_status(s, rt.clock.now_us()) if c.camera_id == camera_id)


def test_segments_are_hashed_chained_contiguous_and_decode(runtime, demo_server, supervisor_factory) -> None:
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    sup = supervisor_factory()
    wait_for(lambda: len(segments(runtime, "cam1")) >= 3, 20, "three segments")
    assert _status(runtime, "cam1").state == "recording"
    sup.stop()

    rows = segments(runtime, "cam1")
    assert [seg.seq for seg, _ in rows] == list(range(1, len(rows) + 1))
    assert (
        chain.verify_rows("cam1", [dict(linked_fields(seg), prev_link=seg.prev_link, link=seg.link) for seg, _ in rows])
        == []
    )
    for seg, path in rows:
        assert path.is_file()
        assert sha256(path) == seg.sha256
        assert path.stat().st_size == seg.bytes
        frames, first_is_key = decode_all(path)
        assert first_is_key, f"segment {seg.seq} does not start with a keyframe"
        assert frames == seg.frames
        assert seg.codecs == "h264"
        assert seg.end_us - seg.start_us == seg.media_duration_us
    full = rows[:-1]  # the last one was cut short by the stop
    for seg, _ in full:
        # Target 2 s, cut at the first keyframe after it: whole GOPs of 1 s.
        assert seg.media_duration_us == pytest.approx(2_000_000, abs=1_000_000 / FPS)
    for (a, _), (b, _) in itertools.pairwise(rows):
        assert b.start_us == a.end_us, "segments of one run must touch"
    assert not list(runtime.settings.effective_volumes[0].rglob("*.partial"))
    assert not [p for p in runtime.settings.effective_volumes[0].rglob("*.json") if p.name != ".nvr-volume.json"]


def test_disconnect_becomes_a_gap_and_recording_resumes(runtime, demo_server, supervisor_factory) -> None:
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    supervisor_factory()
    wait_for(lambda: len(segments(runtime, "cam1")) >= 1, 20, "first segment")
    demo_server.pause_mount("cam1")
    demo_server.drop_clients("cam1")
    wait_for(lambda: any(g.end_us is None for g in gaps(runtime, "cam1")), 15, "an open gap")
    assert _status(runtime, "cam1").state in ("reconnecting", "error")
    before = len(segments(runtime, "cam1"))
    demo_server.resume_mount("cam1")
    wait_for(lambda: len(segments(runtime, "cam1")) >= before + 1, 30, "recording to resume")
    wait_for(lambda: all(g.end_us is not None for g in gaps(runtime, "cam1")), 10, "the gap to close")
    g = gaps(runtime, "cam1")
    assert len(g) == 1
    rows = segments(runtime, "cam1")
    ends = [seg.end_us for seg, _ in rows]
    starts = [seg.start_us for seg, _ in rows]
    # The gap spans exactly from the footage before the outage to the footage after it.
    assert g[0].start_us in ends
    assert g[0].end_us in starts
    assert g[0].end_us > g[0].start_us
    assert g[0].reason in ("disconnected", "timeout", "stream_not_found", "unreachable")


def test_unreachable_camera_is_in_error_and_others_keep_recording(
    runtime, demo_server, supervisor_factory, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="nvr.recorder.worker")
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    add_camera(runtime, "dead", "rtsp://127.0.0.1:9/stream")  # discard port: nothing listens
    supervisor_factory()
    wait_for(lambda: _status(runtime, "dead").state == "error", 15, "the dead camera to be in error")
    st = _status(runtime, "dead")
    assert st.reason is not None and st.reason.startswith("unreachable")
    wait_for(lambda: len(segments(runtime, "cam1")) >= 2, 20, "the good camera to record")
    assert _status(runtime, "cam1").state == "recording"
    retries = [r for r in caplog.records if "camera dead error" in r.getMessage() and "retrying" in r.getMessage()]
    assert len(retries) >= 2, "an unreachable camera keeps being retried"


def test_missing_stream_path_is_an_error_with_reason(runtime, demo_server, supervisor_factory) -> None:
    add_camera(runtime, "cam9", demo_server.url("cam1").replace("/cam1", "/no-such-mount"))
    supervisor_factory()
    wait_for(lambda: _status(runtime, "cam9").state == "error", 15, "error state")
    assert _status(runtime, "cam9").reason.startswith("stream_not_found")


def test_wrong_credentials_are_an_error_and_never_logged(runtime, pattern, supervisor_factory, caplog) -> None:
    from nvr.demo.rtsp import DemoRtspServer

    caplog.set_level(logging.DEBUG)
    with DemoRtspServer(mounts={"cam1": pattern}, username="admin", password="right-pw") as server:
        url = server.url("cam1").replace("right-pw", "Wr0ng-pw")
        assert "Wr0ng-pw" in url
        add_camera(runtime, "locked", url)
        add_camera(runtime, "open", server.url("cam1"))
        supervisor_factory()
        wait_for(lambda: _status(runtime, "locked").state == "error", 15, "error state")
        assert _status(runtime, "locked").reason.startswith("unauthorized")
        wait_for(lambda: len(segments(runtime, "open")) >= 1, 20, "the camera with right credentials")
    assert "Wr0ng-pw" not in caplog.text
    assert "right-pw" not in caplog.text
    for g in gaps(runtime, "locked"):
        assert "Wr0ng-pw" not in (g.detail or "")
