"""Live view inside the recorder (nvr.recorder.live): the real demo RTSP camera, the real supervisor and workers.

What a user relies on: the live bytes are a playable fragmented MP4 starting at a keyframe, taken from the recorder's
own connection; a viewer that stops reading is dropped while the recording keeps every frame; the viewers of a
camera that disconnects are told so.
"""

from __future__ import annotations

import io
import itertools

import av

from nvr.recorder import live
from nvr.recorder.live import LiveHub, Viewer
from tests.support.recording import FPS, add_camera, segments, wait_for


def _collect(v: Viewer, fragments: int, timeout: float = 20.0) -> bytes:
    """The viewer's init and then ``fragments`` fragments, read the way a client would."""
    out = bytearray()
    got = 0
    wait_for(lambda: v.init is not None, timeout, "the live init segment")
    assert v.init is not None
    out += v.init.data
    while got < fragments:
        assert v.wait(timeout), "no live fragment arrived"
        items, ended = v.take()
        for f in items:
            out += f.data
            got += 1
        assert ended is None or got >= fragments, f"the viewer ended early: {ended}"
    return bytes(out)


def _decode(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data), format="mp4") as c:
        return list(c.decode(video=0))


def _hub(runtime) -> LiveHub:
    return live.shared(runtime.db)


def test_live_fragments_decode_from_a_keyframe_and_use_the_recorders_connection(
    runtime, demo_server, supervisor_factory
) -> None:
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    supervisor_factory()
    hub = _hub(runtime)
    assert hub.has_recorder
    wait_for(lambda: hub.feed("cam1") is not None, 20, "the camera's live feed")
    feed = hub.feed("cam1")
    assert feed is not None
    v = feed.add_viewer()
    data = _collect(v, 2 * FPS)
    frames = _decode(data)
    assert len(frames) >= 2 * FPS - 1  # the last fragment may still be in the muxer
    assert frames[0].key_frame
    assert frames[0].width == 320 and frames[0].height == 180
    assert live.codecs_of(v.init.data if v.init else b"").startswith("avc1.")
    # A second viewer joins mid-stream: init, then fragments from the next keyframe.
    v2 = feed.add_viewer()
    frames2 = _decode(_collect(v2, FPS))
    assert frames2[0].key_frame
    # Never a second session at the camera: the recorder's is the only one.
    assert demo_server.session_count("cam1") == 1
    feed.remove_viewer(v)
    feed.remove_viewer(v2)
    wait_for(lambda: not feed.muxing, 5, "the live muxer to stop without viewers")


def _holes(rows) -> int:
    """Frames missing inside recordings: fewer frames than the media duration implies, and runs that do not touch."""
    missing = 0
    for seg, _ in rows:
        expected = round(seg.media_duration_us * FPS / 1_000_000)
        missing += max(0, expected - seg.frames)
    for (a, _), (b, _) in itertools.pairwise(rows):
        if b.start_us != a.end_us:
            missing += 1
    return missing


def test_a_viewer_that_never_reads_is_dropped_and_recording_loses_nothing(
    runtime, demo_server, supervisor_factory
) -> None:
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    supervisor_factory()
    hub = _hub(runtime)
    wait_for(lambda: hub.feed("cam1") is not None, 20, "the camera's live feed")
    feed = hub.feed("cam1")
    assert feed is not None
    before = len(segments(runtime, "cam1"))
    stalled = feed.add_viewer()  # never takes anything
    reader = feed.add_viewer()
    limit = runtime.settings.live_viewer_queue_fragments
    wait_for(lambda: (reader.take(), stalled.ended)[1] is not None, limit / FPS + 20, "the stalled viewer's drop")
    assert stalled.ended == live.VIEWER_TOO_SLOW
    items, _ = stalled.take()
    assert len(items) == limit  # it got exactly its queue's worth, and nothing blocked meanwhile
    # The viewer that reads (it took everything every 0.1 s) is unaffected by the other's fall.
    assert reader.ended is None
    assert reader.wait(5)
    wait_for(lambda: len(segments(runtime, "cam1")) >= before + 3, 20, "recording to go on")
    rows = segments(runtime, "cam1")
    assert _holes(rows) == 0
    assert all(seg.frames > 0 for seg, _ in rows)


def test_camera_disconnect_ends_its_viewers(runtime, demo_server, supervisor_factory) -> None:
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    supervisor_factory()
    hub = _hub(runtime)
    wait_for(lambda: hub.feed("cam1") is not None, 20, "the camera's live feed")
    feed = hub.feed("cam1")
    assert feed is not None
    v = feed.add_viewer()
    _collect(v, 5)
    demo_server.drop_clients("cam1")
    wait_for(lambda: v.ended is not None, 15, "the viewer to be ended")
    assert v.ended == live.CAMERA_DISCONNECTED
    # The recorder reconnects; the next run has a new feed a client can join again.
    wait_for(lambda: hub.feed("cam1") not in (None, feed), 30, "the next run's feed")
    again = hub.feed("cam1")
    assert again is not None
    assert _decode(_collect(again.add_viewer(), FPS))[0].key_frame


def test_recorder_stop_ends_viewers_and_the_process_no_longer_serves_live(runtime, demo_server, supervisor_factory):
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    sup = supervisor_factory()
    hub = _hub(runtime)
    wait_for(lambda: hub.feed("cam1") is not None, 20, "the camera's live feed")
    feed = hub.feed("cam1")
    assert feed is not None
    v = feed.add_viewer()
    sup.stop()
    assert v.ended == live.RECORDER_STOPPED
    assert hub.feed("cam1") is None
    assert not hub.has_recorder
