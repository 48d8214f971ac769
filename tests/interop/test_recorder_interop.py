"""Recording from an independent RTSP server (GStreamer's gst-rtsp-server): codecs, B-frames, audio, restarts."""

from __future__ import annotations

import av
import pytest

from integrity import chain
from nvr.status import all_status
from storage.catalog import linked_fields
from tests.support.recording import add_camera, decode_all, gaps, segments, sha256, wait_for


def _status(rt, cam):
    with rt.db.session() as s:
        return next(c for c in all_status(s, rt.clock.now_us()) if c.camera_id == cam)


def _record(runtime, supervisor_factory, gst_server, mount: str, n_segments: int):
    add_camera(runtime, "cam", gst_server.url(mount))
    sup = supervisor_factory()
    wait_for(lambda: len(segments(runtime, "cam")) >= n_segments, 40, f"{n_segments} segments from {mount}")
    sup.stop()
    rows = segments(runtime, "cam")
    assert chain.verify_rows("cam", [dict(linked_fields(s), prev_link=s.prev_link, link=s.link) for s, _ in rows]) == []
    for seg, path in rows:
        assert sha256(path) == seg.sha256
        frames, first_is_key = decode_all(path)
        assert first_is_key
        assert frames == seg.frames > 0
    return rows


def test_h264(runtime, supervisor_factory, gst_server) -> None:
    rows = _record(runtime, supervisor_factory, gst_server, "/h264", 3)
    assert {s.codecs for s, _ in rows} == {"h264"}


def test_h265_is_stored_with_the_hvc1_tag(runtime, supervisor_factory, gst_server) -> None:
    rows = _record(runtime, supervisor_factory, gst_server, "/h265", 2)
    assert {s.codecs for s, _ in rows} == {"hevc"}
    for _, path in rows:
        with av.open(str(path)) as c:
            assert c.streams.video[0].codec_context.codec_tag == "hvc1"


def test_h264_with_b_frames(runtime, supervisor_factory, gst_server) -> None:
    rows = _record(runtime, supervisor_factory, gst_server, "/h264b", 2)
    reordered = 0
    for _, path in rows:
        with av.open(str(path)) as c:
            for pkt in c.demux(video=0):
                if pkt.pts is not None and pkt.dts is not None and pkt.pts != pkt.dts:
                    reordered += 1
    assert reordered > 0, "B-frames must keep their presentation order"


def test_h264_with_aac_keeps_audio_across_cuts(runtime, supervisor_factory, gst_server) -> None:
    rows = _record(runtime, supervisor_factory, gst_server, "/h264aac", 3)
    assert {s.codecs for s, _ in rows} == {"h264,aac"}
    audio_s = video_s = 0.0
    for seg, path in rows:
        with av.open(str(path)) as c:
            a = c.streams.audio[0]
            samples = sum(1024 for p in c.demux(a) if p.size)
            audio_s += samples / a.codec_context.sample_rate
        video_s += seg.media_duration_us / 1e6
    # Every audio packet goes into the segment that is open when it arrives: none is lost at a cut, so the
    # audio recorded adds up to the video recorded (within a few packets at the very start and end).
    assert audio_s == pytest.approx(video_s, abs=0.25)


def test_camera_restart_is_a_gap_and_recording_resumes(runtime, supervisor_factory, gst_server) -> None:
    add_camera(runtime, "cam", gst_server.url("/restart"))
    supervisor_factory()
    wait_for(lambda: len(segments(runtime, "cam")) >= 1, 30, "first segment")
    gst_server.restart("/restart", 1.0)
    wait_for(lambda: any(g.end_us is not None for g in gaps(runtime, "cam")), 40, "a closed gap after restart")
    g = next(g for g in gaps(runtime, "cam") if g.end_us is not None)
    assert g.end_us > g.start_us
    rows = segments(runtime, "cam")
    assert any(s.start_us == g.end_us for s, _ in rows), "footage resumes where the gap ends"
    for seg, path in rows:
        assert decode_all(path)[0] == seg.frames


@pytest.mark.parametrize(("mount", "code"), [("/audio", "no_video"), ("/mjpeg", "unsupported_codec")])
def test_unrecordable_streams_are_errors_with_reasons(
    runtime, supervisor_factory, gst_server, mount: str, code: str
) -> None:
    add_camera(runtime, "cam", gst_server.url(mount))
    supervisor_factory()
    wait_for(lambda: _status(runtime, "cam").state == "error", 30, "error state")
    st = _status(runtime, "cam")
    assert st.reason.startswith(code), st.reason
    assert segments(runtime, "cam") == []
