"""Sanity tests of the GStreamer RTSP test server, using the venv's PyAV/FFmpeg as the client.

They check that each mount serves what the recorder's interop tests expect, and they pin down
(as assertions, so a PyAV/FFmpeg upgrade that changes them is noticed) the FFmpeg RTSP demuxer
behaviours the recorder has to cope with. Observed with PyAV 18.1 (bundled FFmpeg 8.1), TCP interleaved:

* ``av.open()`` of a video mount takes ~1 s (stream probing reads ahead); the packets read
  meanwhile are then returned at once, after that packets arrive in real time.
* H.264/H.265: the first packet is the keyframe and has ``pts is None and dts is None``; the
  following packets count from the session start (3600, 7200, ... in 1/90000), i.e. the first
  keyframe's timestamp is "missing", not 0. MJPEG's first packet does have pts = dts = 0.
* AAC (1/48000): the first packet may have pts = -1, and later pts jitter by one tick
  (1023, 2048, 3072, 4095, ...): rounding in FFmpeg's RTP-time to stream-time mapping. This
  happens for audio-only streams too.
* H.264 with B-frames: pts are out of order on the wire (decode order); dts is None for the
  first 2 packets after the (timestamp-less) keyframe, then dts < pts. The timeline is shifted
  by the reorder delay: the packets after the keyframe have pts 14400, 10800, 21600, ...
  (the keyframe itself would be 7200), because RTP-Info's rtptime marks npt 0 = dts 0.
* A teardown (camera "reboot": server closes the TCP connection) looks like a normal EOF:
  ``demux()`` yields one empty flush packet per stream (size 0, pts None) and stops, with no
  exception. A new connection then works and its timestamps start again from the beginning.
* A mount that is down (404) raises ``av.error.HTTPNotFoundError`` from ``av.open()``.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import av
import av.error
import pytest

from tests.support.gst import GstRtspServer

OPTIONS = {"rtsp_transport": "tcp", "timeout": "5000000"}  # timeout: socket I/O, microseconds
VIDEO_TB = 90000  # RTP clock rate of every video payload


@dataclass
class Pkt:
    stream: int
    pts: int | None
    dts: int | None
    key: bool
    size: int
    at: float  # monotonic arrival time


@dataclass
class Capture:
    """What a client saw on one RTSP connection."""

    codecs: list[tuple[str, str]]  # (type, codec name) per stream, in stream order
    open_seconds: float
    opened_at: float
    packets: list[Pkt] = field(default_factory=list)  # excludes the empty EOF flush packets
    flush_packets: int = 0
    ended: str = "running"  # "running" (we stopped reading), "eof", or the exception's repr
    ended_at: float | None = None
    video_size: tuple[int, int] | None = None
    audio_format: tuple[int, int] | None = None  # (sample rate, channels)

    def stream_packets(self, index: int) -> list[Pkt]:
        return [p for p in self.packets if p.stream == index]


def capture(url: str, seconds: float, on_packet: list[tuple[int, threading.Event]] | None = None) -> Capture:
    """Demux `url` for up to `seconds` after opening, or until the stream ends.

    `on_packet`: (n, event) pairs; event is set when the n-th packet has been read, so a test
    can act (e.g. restart the server) at a known point of the stream.
    """
    start = time.monotonic()
    with av.open(url, options=OPTIONS) as container:
        opened = time.monotonic()
        cap = Capture(
            codecs=[(s.type, s.codec_context.name) for s in container.streams],
            open_seconds=opened - start,
            opened_at=opened,
        )
        if container.streams.video:
            cc = container.streams.video[0].codec_context
            cap.video_size = (cc.width, cc.height)
        if container.streams.audio:
            ac = container.streams.audio[0].codec_context
            cap.audio_format = (ac.sample_rate, ac.layout.nb_channels)
        try:
            for packet in container.demux():
                now = time.monotonic()
                if packet.size == 0:  # PyAV's per-stream flush packet at EOF
                    cap.flush_packets += 1
                    continue
                cap.packets.append(
                    Pkt(packet.stream.index, packet.pts, packet.dts, packet.is_keyframe, packet.size, now)
                )
                for n, event in on_packet or ():
                    if len(cap.packets) == n:
                        event.set()
                if now - opened >= seconds:
                    return cap
            cap.ended = "eof"
        except av.error.FFmpegError as exc:
            cap.ended = repr(exc)
        cap.ended_at = time.monotonic()
        return cap


# ------------------------------------------------------------------------------ per-mount codecs


def test_h264(gst_server: GstRtspServer) -> None:
    cap = capture(gst_server.url("/h264"), 1.5)
    assert cap.codecs == [("video", "h264")]
    assert cap.video_size == (640, 360)
    _assert_plain_video(cap)


def test_h265(gst_server: GstRtspServer) -> None:
    cap = capture(gst_server.url("/h265"), 1.5)
    assert cap.codecs == [("video", "hevc")]
    assert cap.video_size == (640, 360)
    _assert_plain_video(cap)


def _assert_plain_video(cap: Capture) -> None:
    """No B-frames: one keyframe per second, timestamps strictly increasing by 1/25 s."""
    assert cap.ended == "running"
    first, *rest = cap.packets
    assert first.key, "the stream must start with a keyframe"
    # FFmpeg behaviour the recorder must handle: the first keyframe comes without timestamps.
    assert first.pts is None and first.dts is None
    assert [p.pts for p in rest[:3]] == [3600, 7200, 10800]
    assert all(p.pts == p.dts for p in rest)
    steps = {b.pts - a.pts for a, b in itertools.pairwise(rest)}  # type: ignore[operator]
    assert steps == {VIDEO_TB // 25}
    keys = [i for i, p in enumerate(cap.packets) if p.key]
    assert keys[:2] == [0, 25], "GOP of 25 frames (1 s) expected"


def test_h264_with_aac(gst_server: GstRtspServer) -> None:
    cap = capture(gst_server.url("/h264aac"), 1.5)
    assert cap.codecs == [("video", "h264"), ("audio", "aac")]
    assert cap.audio_format == (48000, 1)
    video, audio = cap.stream_packets(0), cap.stream_packets(1)
    assert video[0].key and video[0].pts is None
    # ~2.5 s of media (1 s read during open + 1.5 s): 25 video and 46.875 AAC frames per second.
    assert 1.5 < len(audio) / len(video) < 2.2
    audio_pts = [p.pts for p in audio if p.pts is not None]
    assert abs(audio_pts[0]) <= 2, "starts at (about) zero: -1 was observed"
    steps = [b - a for a, b in itertools.pairwise(audio_pts)]
    assert all(1022 <= s <= 1026 for s in steps), "AAC frames of 1024 samples, +-RTCP rounding"


def test_h264_with_b_frames(gst_server: GstRtspServer) -> None:
    cap = capture(gst_server.url("/h264b"), 1.5)
    assert cap.codecs == [("video", "h264")]
    first, *rest = cap.packets
    assert first.key and first.pts is None and first.dts is None
    pts = [p.pts for p in rest]
    assert None not in pts
    # Decode order on the wire: presentation timestamps go backwards at B-frames...
    assert any(b < a for a, b in itertools.pairwise(pts))  # type: ignore[operator]
    # ...and FFmpeg reconstructs dts != pts once it has seen the reordering (dts None before).
    with_dts = [p for p in rest if p.dts is not None]
    assert with_dts and any(p.pts != p.dts for p in with_dts)
    assert all(p.dts <= p.pts for p in with_dts)  # type: ignore[operator]
    dts = [p.dts for p in with_dts]
    assert dts == sorted(dts), "dts must be monotonic"


def test_audio_only(gst_server: GstRtspServer) -> None:
    cap = capture(gst_server.url("/audio"), 1.0)
    assert cap.codecs == [("audio", "aac")], "a stream with no video"
    assert cap.audio_format == (48000, 1)
    assert cap.open_seconds < 1.0, "audio-only needs no long probing"
    assert len(cap.packets) >= 30


def test_mjpeg(gst_server: GstRtspServer) -> None:
    cap = capture(gst_server.url("/mjpeg"), 1.0)
    assert cap.codecs == [("video", "mjpeg")]
    assert cap.video_size == (640, 360)
    assert all(p.key for p in cap.packets)
    # Unlike H.264/H.265, the first MJPEG packet does carry timestamps.
    assert cap.packets[0].pts == 0
    assert len(cap.packets) >= 25


# ------------------------------------------------------------------------------ timing


def test_packets_arrive_in_real_time(gst_server: GstRtspServer) -> None:
    cap = capture(gst_server.url("/h264"), 3.0)
    # Skip what was buffered while av.open() probed the stream (it all arrives at once).
    live = [p for p in cap.packets if p.at - cap.opened_at > 0.5 and p.pts is not None]
    assert len(live) > 50
    media = (live[-1].pts - live[0].pts) / VIDEO_TB  # type: ignore[operator]
    wall = live[-1].at - live[0].at
    assert wall == pytest.approx(media, rel=0.1), "server must pace at 1x, not flood or stall"
    # ~25 fps over the whole connection, i.e. the server does not send faster than real time.
    total_media = (cap.packets[-1].pts or 0) / VIDEO_TB
    assert total_media <= cap.open_seconds + 3.0 + 0.3


# ------------------------------------------------------------------------------ camera restart


def test_restart_command_ends_stream_and_camera_comes_back(gst_server: GstRtspServer) -> None:
    read_some = threading.Event()
    restarted: list[int] = []

    def restart_when_streaming() -> None:
        if read_some.wait(10):
            restarted.append(gst_server.restart("/restart"))

    helper = threading.Thread(target=restart_when_streaming)
    helper.start()
    # 30 packets = ~1 s buffered during open, well before the automatic restart (6 s).
    cap = capture(gst_server.url("/restart"), 5.0, on_packet=[(30, read_some)])
    helper.join()

    assert restarted == [1], "exactly our session must have been torn down"
    # FFmpeg reports the closed connection as a plain end of stream, not as an error.
    assert cap.ended == "eof", cap.ended
    assert cap.flush_packets == 1
    assert cap.ended_at is not None and cap.ended_at - cap.opened_at < 2.0
    # The camera is back at once: a new session starts from the beginning (keyframe, t=0).
    again = capture(gst_server.url("/restart"), 0.5)
    assert again.ended == "running"
    assert again.packets[0].key and again.packets[0].pts is None
    assert again.packets[1].pts == 3600


def test_restart_after_timeout(gst_server: GstRtspServer) -> None:
    """/restart drops each session by itself `restart_after` s after it started playing."""
    cap = capture(gst_server.url("/restart"), 15.0)
    assert cap.ended == "eof", cap.ended
    assert cap.ended_at is not None
    lifetime = cap.ended_at - cap.opened_at + cap.open_seconds
    assert gst_server.restart_after - 0.5 < lifetime < gst_server.restart_after + 2.0
    media = max(p.pts or 0 for p in cap.packets) / VIDEO_TB
    assert media == pytest.approx(gst_server.restart_after, abs=1.0)


def test_restart_with_downtime_answers_404(gst_server: GstRtspServer) -> None:
    assert gst_server.restart("/restart", downtime=1.5) == 0  # nobody connected
    with pytest.raises(av.error.HTTPNotFoundError):
        av.open(gst_server.url("/restart"), options=OPTIONS)
    time.sleep(1.6)
    cap = capture(gst_server.url("/restart"), 0.2)
    assert cap.codecs == [("video", "h264")]
    assert cap.packets[0].key
