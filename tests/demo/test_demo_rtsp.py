"""The demo RTSP server against FFmpeg's RTSP client (through PyAV, as the recorder uses it) and a raw socket.

Everything here is real: a real server on a free port, real TCP, real FFmpeg demuxing and decoding.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import av.error
import pytest

from nvr.demo.pattern import Pattern
from nvr.demo.rtsp import DemoRtspServer

FPS = 25
TCP = {"rtsp_transport": "tcp", "timeout": "5000000"}
# Shortens FFmpeg's stream probing from ~1.1 s to ~0.2 s; used where the test is not about the stream itself.
FAST = {**TCP, "analyzeduration": "200000"}


@dataclass
class Demuxed:
    packets: list[av.Packet] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    ended: str = ""
    """How demux finished: 'eof' (iteration ended), 'error: ...' (raised) or 'deadline'."""


def demux_for(url: str, seconds: float, options: dict[str, str] = TCP) -> tuple[Demuxed, float]:
    """Open ``url`` and collect video packets for ``seconds`` after the open returns; also returns open time."""
    result = Demuxed()
    started = time.monotonic()
    with av.open(url, options=options) as container:
        opened = time.monotonic()
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        deadline = opened + seconds
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                result.packets.append(packet)
                result.arrivals.append(time.monotonic() - opened)
                if time.monotonic() >= deadline:
                    result.ended = "deadline"
                    break
            else:
                result.ended = "eof"
        except av.error.FFmpegError as exc:
            result.ended = f"error: {exc}"
    return result, opened - started


def test_stream_is_h264_in_real_time_and_decodes(server: DemoRtspServer, small_pattern: Pattern) -> None:
    with av.open(server.url("cam1"), options=TCP) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        assert (ctx.name, ctx.width, ctx.height) == ("h264", small_pattern.width, small_pattern.height)
        assert stream.average_rate == FPS
        decoder = av.CodecContext.create("h264", "r")
        packets: list[av.Packet] = []
        frames: list[av.VideoFrame] = []
        opened = time.monotonic()
        counted_from: float | None = None
        live = 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            packets.append(packet)
            frames.extend(decoder.decode(packet))
            now = time.monotonic()
            # Packets probed during open come out in a burst first; count only the real-time flow after them.
            if counted_from is None and now - opened > 0.3:
                counted_from = now
            elif counted_from is not None:
                live += 1
            if now - opened >= 3.3:
                break
        elapsed = time.monotonic() - (counted_from or opened)
    frames.extend(decoder.decode(None))

    # Real time: ~25 packets per second, not a burst and not a trickle.
    assert abs(live - FPS * elapsed) <= 5, (live, elapsed)
    # One access unit per packet, keyframes exactly every GOP, starting with one.
    keys = [i for i, p in enumerate(packets) if p.is_keyframe]
    assert keys[0] == 0
    assert len(keys) >= 3
    assert all(b - a == small_pattern.gop for a, b in itertools.pairwise(keys)), keys
    # pts strictly increasing by one frame (3600 ticks at 90 kHz) right across the 2 s loop boundary. FFmpeg
    # leaves the very first packet without a pts (its H.264 parser loses it), so start from the second.
    assert stream.time_base == Fraction(1, 90_000)
    pts = [p.pts for p in packets[1:] if p.pts is not None]
    assert len(pts) == len(packets) - 1
    assert len(packets) > small_pattern.frame_count + FPS, "the test must cross the loop boundary"
    assert all(b - a == 90_000 // FPS for a, b in itertools.pairwise(pts))
    # Everything decodes, at the right size, and the picture changes from frame to frame.
    assert len(frames) >= len(packets) - 1
    assert all((f.width, f.height) == (small_pattern.width, small_pattern.height) for f in frames)
    assert bytes(frames[0].planes[0]) != bytes(frames[1].planes[0])


def test_unknown_mount_is_an_error_on_open(server: DemoRtspServer) -> None:
    with pytest.raises(av.error.HTTPNotFoundError):
        av.open(server.url("nope"), options=FAST)


@pytest.mark.parametrize("methods", [("digest", "basic"), ("basic",)])
def test_authentication(small_pattern: Pattern, methods: tuple[str, ...]) -> None:
    with DemoRtspServer(
        mounts={"cam1": small_pattern}, username="admin", password="p@ss:w/rd", auth_methods=methods
    ) as srv:
        good = srv.url("cam1")
        assert good.startswith("rtsp://admin:p%40ss%3Aw%2Frd@127.0.0.1:")
        with pytest.raises(av.error.HTTPUnauthorizedError):
            av.open(good.replace("p%40ss", "wrong"), options=FAST)
        with pytest.raises(av.error.HTTPUnauthorizedError):
            av.open(srv.url("cam1", with_credentials=False), options=FAST)
        result, _ = demux_for(good, 0.5, FAST)
        assert len(result.packets) >= 5
        # FFmpeg takes the strongest scheme offered: Digest when the server offers it.
        assert set(srv.auth_accepted) == {methods[0]}


def test_drop_clients_ends_the_demux_like_eof(server: DemoRtspServer) -> None:
    timer = threading.Timer(1.0, server.drop_clients, kwargs={"mount": "cam1"})
    timer.start()
    try:
        result, _ = demux_for(server.url("cam1"), 6.0, FAST)
    finally:
        timer.cancel()
    # FFmpeg reports a vanished server as a plain end of stream, not as an exception.
    assert result.ended == "eof"
    assert result.arrivals[-1] < 2.0
    assert len(result.packets) >= 10


def test_paused_mount_refuses_then_resumes(server: DemoRtspServer) -> None:
    server.pause_mount("cam2")
    with pytest.raises(av.error.HTTPNotFoundError):
        av.open(server.url("cam2"), options=FAST)
    # Other cameras on the same server are unaffected.
    assert len(demux_for(server.url("cam1"), 0.3, FAST)[0].packets) > 0
    server.resume_mount("cam2")
    assert len(demux_for(server.url("cam2"), 0.3, FAST)[0].packets) > 0


def test_pausing_a_mount_drops_its_current_clients(server: DemoRtspServer) -> None:
    timer = threading.Timer(0.8, server.pause_mount, args=("cam1",))
    timer.start()
    try:
        result, _ = demux_for(server.url("cam1"), 5.0, FAST)
    finally:
        timer.cancel()
    assert result.ended == "eof" and result.arrivals[-1] < 2.0


def test_restart_on_the_same_port(server: DemoRtspServer) -> None:
    port = server.port
    assert len(demux_for(server.url("cam1"), 0.3, FAST)[0].packets) > 0
    server.stop()
    with pytest.raises(av.error.FFmpegError):
        av.open(server.url("cam1"), options=FAST)
    server.start()
    assert server.port == port
    assert len(demux_for(server.url("cam1"), 0.3, FAST)[0].packets) > 0


def test_two_clients_on_two_mounts(server: DemoRtspServer) -> None:
    results: dict[str, Demuxed] = {}
    counts: list[int] = []

    def run(mount: str) -> None:
        results[mount] = demux_for(server.url(mount), 2.0, FAST)[0]

    threads = [threading.Thread(target=run, args=(m,)) for m in ("cam1", "cam2")]
    for t in threads:
        t.start()
    time.sleep(1.2)
    counts.append(server.session_count())
    for t in threads:
        t.join()
    assert counts == [2]
    for mount in ("cam1", "cam2"):
        r = results[mount]
        assert r.ended == "deadline"
        assert r.packets[0].is_keyframe
        assert len(r.packets) >= 2 * FPS - 5


# Raw protocol ---------------------------------------------------------------------------------------------


class RawClient:
    """Just enough of an RTSP client to look at exact responses and RTP bytes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def read_message(self) -> tuple[str, bytes] | tuple[int, bytes]:
        """Next item from the server: ('RTSP/1.0 200 OK...', body) or (channel, interleaved payload)."""
        while True:
            if self.buf[:1] == b"$":
                if len(self.buf) >= 4:
                    size = struct.unpack(">H", self.buf[2:4])[0]
                    if len(self.buf) >= 4 + size:
                        channel, payload = self.buf[1], self.buf[4 : 4 + size]
                        self.buf = self.buf[4 + size :]
                        return channel, payload
            elif b"\r\n\r\n" in self.buf:
                head, rest = self.buf.split(b"\r\n\r\n", 1)
                text = head.decode()
                length = 0
                for line in text.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                if len(rest) >= length:
                    self.buf = rest[length:]
                    return text, rest[:length]
            self._fill()

    def response(self) -> tuple[str, bytes]:
        while True:
            kind, body = self.read_message()
            if isinstance(kind, str):
                return kind, body


def header(response: str, name: str) -> str:
    for line in response.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.lower() == name.lower():
            return value.strip()
    raise KeyError(name)


@pytest.fixture
def raw(server: DemoRtspServer) -> Iterator[RawClient]:
    client = RawClient(server.port)
    yield client
    client.close()


def test_raw_protocol_pipelining_transport_and_rtp(server: DemoRtspServer, raw: RawClient) -> None:
    url = f"rtsp://127.0.0.1:{server.port}/cam1"
    # Two requests in one write, plus an interleaved RTCP frame in between that must be skipped.
    raw.send(
        f"OPTIONS {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode()
        + b"$\x01\x00\x04abcd"
        + f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n\r\n".encode()
    )
    options, _ = raw.response()
    assert options.startswith("RTSP/1.0 200") and header(options, "CSeq") == "1"
    assert "DESCRIBE" in header(options, "Public") and "GET_PARAMETER" in header(options, "Public")
    describe, sdp = raw.response()
    assert header(describe, "CSeq") == "2"
    assert header(describe, "Content-Base") == url + "/"
    text = sdp.decode()
    assert "m=video 0 RTP/AVP 96" in text and "a=rtpmap:96 H264/90000" in text
    assert "packetization-mode=1" in text and "sprop-parameter-sets=" in text and "a=framerate:25" in text
    assert "a=control:trackID=0" in text

    raw.send(
        f"SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 3\r\n"
        "Transport: RTP/AVP;unicast;client_port=5000-5001\r\n\r\n".encode()
    )
    assert raw.response()[0].startswith("RTSP/1.0 461")

    raw.send(
        f"SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 4\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n".encode()
    )
    setup, _ = raw.response()
    assert setup.startswith("RTSP/1.0 200")
    session = header(setup, "Session").split(";")[0]
    ssrc = int(header(setup, "Transport").split("ssrc=")[1].split(";")[0], 16)

    raw.send(f"PLAY {url}/ RTSP/1.0\r\nCSeq: 5\r\nSession: {session}\r\n\r\n".encode())
    play, _ = raw.response()
    assert play.startswith("RTSP/1.0 200")
    rtp_info = header(play, "RTP-Info")
    seq0 = int(rtp_info.split("seq=")[1].split(";")[0])
    ts0 = int(rtp_info.split("rtptime=")[1].split(";")[0])

    # Collect ~1.2 s of RTP (over a GOP) and check the headers a depacketizer relies on.
    raw.send(f"GET_PARAMETER {url}/ RTSP/1.0\r\nCSeq: 6\r\nSession: {session}\r\n\r\n".encode())
    rtp: list[bytes] = []
    rtcp: list[bytes] = []
    keepalive = ""
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        kind, payload = raw.read_message()
        if kind == 0:
            rtp.append(payload)
        elif kind == 1:
            rtcp.append(payload)
        elif isinstance(kind, str):
            keepalive = kind
    assert keepalive.startswith("RTSP/1.0 200") and header(keepalive, "CSeq") == "6"
    seqs = [struct.unpack(">H", p[2:4])[0] for p in rtp]
    stamps = [struct.unpack(">I", p[4:8])[0] for p in rtp]
    assert seqs[0] == seq0 and stamps[0] == ts0
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert {struct.unpack(">I", p[8:12])[0] for p in rtp} == {ssrc}
    assert all(p[0] == 0x80 and p[1] & 0x7F == 96 for p in rtp)
    # The marker bit closes each access unit: it is set exactly where the timestamp changes next.
    for a, b in itertools.pairwise(rtp):
        assert bool(a[1] & 0x80) == (a[4:8] != b[4:8])
    frame_stamps = sorted(set(stamps))
    assert all(b - a == 3600 for a, b in itertools.pairwise(frame_stamps))
    assert 25 <= len(frame_stamps) <= 33
    # FU-A is used for large NAL units (IDR slices here), single NAL unit packets for small ones (SPS, PPS).
    nal_types = [p[12] & 0x1F for p in rtp]
    assert 28 in nal_types and 7 in nal_types and 8 in nal_types
    assert all(len(p) <= 1412 for p in rtp)
    # An RTCP sender report (PT 200) for the same SSRC arrives on the odd channel.
    assert rtcp and rtcp[0][1] == 200 and struct.unpack(">I", rtcp[0][4:8])[0] == ssrc

    raw.send(f"TEARDOWN {url}/ RTSP/1.0\r\nCSeq: 7\r\nSession: {session}\r\n\r\n".encode())
    while not isinstance(kind := raw.read_message()[0], str):
        pass
    assert kind.startswith("RTSP/1.0 200") and header(kind, "CSeq") == "7"
    assert server.session_count() == 0


def test_slow_reader_is_dropped_not_buffered(small_pattern: Pattern) -> None:
    with DemoRtspServer(mounts={"cam1": small_pattern}, max_client_buffer=16 * 1024, send_buffer=8192) as srv:
        sock = socket.socket()
        # A tiny receive window so the kernel cannot absorb the stream on our behalf.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", srv.port))
        client = RawClient.__new__(RawClient)
        client.sock, client.buf = sock, b""
        url = f"rtsp://127.0.0.1:{srv.port}/cam1"
        client.send(
            f"SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP;interleaved=0-1\r\n\r\n".encode()
        )
        session = header(client.response()[0], "Session").split(";")[0]
        client.send(f"PLAY {url} RTSP/1.0\r\nCSeq: 2\r\nSession: {session}\r\n\r\n".encode())
        started = time.monotonic()
        deadline = started + 10
        while srv.dropped_slow_clients == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # not reading
        assert srv.dropped_slow_clients == 1
        print(f"slow reader dropped after {time.monotonic() - started:.1f} s")
        assert srv.session_count() == 0
        client.close()


def _play_raw(port: int, mount: str) -> RawClient:
    client = RawClient(port)
    url = f"rtsp://127.0.0.1:{port}/{mount}"
    client.send(f"SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP;interleaved=0-1\r\n\r\n".encode())
    session = header(client.response()[0], "Session").split(";")[0]
    client.send(f"PLAY {url} RTSP/1.0\r\nCSeq: 2\r\nSession: {session}\r\n\r\n".encode())
    assert client.response()[0].startswith("RTSP/1.0 200")
    return client


def _frames_until(client: RawClient, deadline: float) -> list[tuple[float, int]]:
    """(arrival, RTP timestamp) of each access unit (marker packet) received before ``deadline``."""
    out = []
    while time.monotonic() < deadline:
        channel, payload = client.read_message()
        if channel == 0 and isinstance(payload, bytes) and payload[1] & 0x80:
            out.append((time.monotonic(), struct.unpack(">I", payload[4:8])[0]))
    return out


def test_short_stall_is_caught_up_long_stall_is_not_replayed(server: DemoRtspServer) -> None:
    client = _play_raw(server.port, "cam1")
    try:
        start = time.monotonic()
        _frames_until(client, start + 0.5)
        server.stall(0.4)
        short = _frames_until(client, start + 1.5)
        # 1 s of wall time, 0.4 s of it frozen: the missed frames arrive in a burst, so ~25 frames in total.
        assert abs(len(short) - FPS) <= 3, len(short)
        burst = max(sum(1 for t, _ in short if abs(t - t0) < 0.02) for t0, _ in short)
        assert burst >= 5

        server.stall(2.5)
        long = _frames_until(client, start + 5.0)
        # 3.5 s of wall time, 2.5 s frozen: the 62-frame backlog is not replayed, the stream just resumes.
        assert abs(len(long) - FPS * 1.0) <= 5, len(long)
        # RTP timestamps stay contiguous: the receiver sees a late stream, not a hole in media time.
        stamps = [ts for _, ts in short + long]
        assert all((b - a) & 0xFFFFFFFF == 3600 for a, b in itertools.pairwise(stamps))
    finally:
        client.close()
