"""``GET /api/v1/cameras/{id}/live``: the real recorder (demo RTSP camera) and the real API in one process.

Authorization first (no token, no live grant), then the refusals (stream limit, not recording, no recorder in this
process), then the stream itself: fMP4 that decodes, audited at start and end, ended within 2 s of a suspension.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nvr.demo.pattern import Pattern
from nvr.demo.rtsp import DemoRtspServer
from nvr.runtime import Runtime
from tests.support import footage
from tests.support.live import LiveSite, decode, demo_pattern, running_site
from tests.support.recording import FPS, add_camera, segments, wait_for

LIVE = "/api/v1/cameras/cam1/live"
PURPOSE = {"purpose": "watch the gate during the operation"}


@pytest.fixture(scope="module")
def pattern(tmp_path_factory: pytest.TempPathFactory) -> Pattern:
    return demo_pattern(tmp_path_factory.mktemp("pattern"))


@pytest.fixture
def camera(pattern: Pattern) -> Iterator[DemoRtspServer]:
    server = DemoRtspServer(mounts={"cam1": pattern})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def site(runtime: Runtime, camera: DemoRtspServer) -> Iterator[LiveSite]:
    add_camera(runtime, "cam1", camera.url("cam1"))
    for s in running_site(runtime, record=True):
        s.user("boss", ["approver"])
        s.user("olga", ["officer"])
        wait_for(lambda: s.rt.live.feed("cam1") is not None, 20, "the camera to record")
        yield s


class _Reader(threading.Thread):
    """A client reading a live stream in the background, noting when the body ended."""

    def __init__(self, site: LiveSite, who: str) -> None:
        super().__init__(daemon=True)
        self.client = site.client(who)
        self.data = bytearray()
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.ended_at: float | None = None
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with self.client.stream("GET", LIVE, params=PURPOSE) as r:
                self.status, self.headers = r.status_code, r.headers
                self.started.set()
                for chunk in r.iter_raw():
                    self.data += chunk
                    if self.stop.is_set():
                        return
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.started.set()
            self.client.close()


def _reader(site: LiveSite, who: str = "olga") -> _Reader:
    r = _Reader(site, who)
    r.start()
    assert r.started.wait(20)
    assert r.status == 200, r.status
    return r


def test_no_token_is_401(site: LiveSite) -> None:
    with site.client() as c:
        r = c.get(LIVE, params=PURPOSE)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "auth_required")


def test_a_grant_without_live_is_403_and_a_denial_event(site: LiveSite) -> None:
    site.grant("boss", "olga", ["cam1"], actions=["playback"])
    before = len(segments(site.rt, "cam1"))
    with site.client("olga") as c:
        r = c.get(LIVE, params=PURPOSE)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "action_not_granted")
    (ev,) = site.events("live.start")
    assert (ev.outcome, ev.reason, ev.actor_id, ev.camera_id) == (
        "denied",
        "action_not_granted",
        site.ids["olga"],
        "cam1",
    )
    assert ev.purpose == PURPOSE["purpose"]
    feed = site.rt.live.feed("cam1")
    assert feed is not None and feed.viewers == 0
    wait_for(lambda: len(segments(site.rt, "cam1")) > before, 10, "recording to go on")


def test_over_max_streams_is_429(site: LiveSite) -> None:
    site.grant("boss", "olga", ["cam1"], max_streams=1)
    first = _reader(site)
    try:
        with site.client("olga") as c:
            r = c.get(LIVE, params=PURPOSE)
        assert (r.status_code, r.json()["error"]["code"]) == (429, "stream_limit")
        denied = [e for e in site.events("live.start") if e.outcome == "denied"]
        assert [e.reason for e in denied] == ["stream_limit"]
    finally:
        first.stop.set()
        first.client.close()
        first.join(10)
    # The end freed the stream: a new one may start.
    wait_for(lambda: len(site.events("live.end")) == 1, 10, "the first stream's end")
    again = _reader(site)
    again.stop.set()
    again.join(10)


def test_parallel_starts_respect_max_streams(site: LiveSite) -> None:
    site.grant("boss", "olga", ["cam1"], max_streams=2)
    barrier = threading.Barrier(6)
    results: list[int] = []
    readers: list[httpx.Response] = []
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def go() -> None:
        c = site.client("olga")
        barrier.wait()
        r = c.send(c.build_request("GET", LIVE, params=PURPOSE), stream=True)
        with lock:
            results.append(r.status_code)
            readers.append(r)
            clients.append(c)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert sorted(results) == [200, 200, 429, 429, 429, 429]
    finally:
        for r in readers:
            r.close()
        for c in clients:
            c.close()


def test_a_camera_not_recording_is_409(site: LiveSite) -> None:
    footage.add_camera(site.rt, "cam-idle")  # registered, never activated: nothing records it
    site.grant("boss", "olga", ["cam1", "cam-idle"])
    with site.client("olga") as c:
        r = c.get("/api/v1/cameras/cam-idle/live", params=PURPOSE)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "camera_not_recording")
    (ev,) = site.events("live.start")
    assert (ev.outcome, ev.reason, ev.camera_id) == ("denied", "camera_not_recording", "cam-idle")


def test_an_api_without_a_recorder_is_503(settings_factory, tmp_path: Path) -> None:
    rt = Runtime.open(settings_factory())
    rt.init_default_volume()
    try:
        footage.add_camera(rt, "cam1")
        for s in running_site(rt, record=False):
            s.user("boss", ["approver"])
            s.user("olga", ["officer"])
            s.grant("boss", "olga", ["cam1"])
            with s.client("olga") as c:
                r = c.get(LIVE, params=PURPOSE)
            assert (r.status_code, r.json()["error"]["code"]) == (503, "live_unavailable")
            assert "nvr serve" in r.json()["error"]["message"]
            (ev,) = s.events("live.start")
            assert (ev.outcome, ev.reason) == ("failed", "live_unavailable")
    finally:
        rt.db.dispose()


def test_live_stream_is_fmp4_that_decodes_and_is_audited(site: LiveSite) -> None:
    g = site.grant("boss", "olga", ["cam1"])
    r = _reader(site)
    wait_for(lambda: len(decode(bytes(r.data))) >= 2 * FPS, 20, "two seconds of live frames")
    r.stop.set()
    r.client.close()
    r.join(10)
    assert r.headers is not None
    assert r.headers["content-type"] == "video/mp4"
    assert "content-length" not in r.headers and r.headers.get("transfer-encoding") == "chunked"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-nvr-codecs"].startswith("avc1.")
    data = bytes(r.data)
    assert data[4:8] == b"ftyp"
    frames = decode(data)
    assert frames[0].key_frame and (frames[0].width, frames[0].height) == (320, 180)
    wait_for(lambda: len(site.events("live.end")) == 1, 10, "live.end")
    (start,) = site.events("live.start")
    (end,) = site.events("live.end")
    assert (start.outcome, start.actor_id, start.object_id) == ("allowed", site.ids["olga"], f"grant:{g['id']}")
    assert (start.purpose, start.case_ref) == (PURPOSE["purpose"], "CASE-2026-077")
    assert (end.outcome, end.reason) == ("ok", "client_closed")
    assert end.bytes is not None and end.bytes >= len(data) > 0
    assert end.window_start_us == start.window_start_us
    assert end.window_end_us is not None and end.window_start_us is not None
    assert end.window_end_us - end.window_start_us >= 1_000_000  # the stream's duration
    feed = site.rt.live.feed("cam1")
    assert feed is not None
    wait_for(lambda: feed.viewers == 0, 5, "the viewer to be detached")


def test_suspending_the_grant_ends_the_stream_within_2_s(site: LiveSite) -> None:
    g = site.grant("boss", "olga", ["cam1"])
    r = _reader(site)
    wait_for(lambda: len(r.data) > 10_000, 20, "live bytes")
    with site.client("boss") as c:
        resp = c.post(f"/api/v1/grants/{g['id']}/suspend", json={"reason": "review"})
    suspended_at = time.monotonic()
    assert resp.status_code == 200, resp.text
    r.join(10)
    assert r.ended_at is not None and r.error is None
    assert r.ended_at - suspended_at <= 2.0, f"the stream ended {r.ended_at - suspended_at:.2f} s after the suspension"
    wait_for(lambda: len(site.events("live.end")) == 1, 10, "live.end")
    (end,) = site.events("live.end")
    assert (end.outcome, end.reason) == ("terminated", "grant_suspended")
    assert end.bytes is not None and end.bytes >= len(r.data) > 10_000
    with site.client("olga") as c:
        again = c.get(LIVE, params=PURPOSE)
    assert (again.status_code, again.json()["error"]["code"]) == (403, "grant_suspended")


def test_camera_disconnect_ends_the_stream(site: LiveSite, camera: DemoRtspServer) -> None:
    site.grant("boss", "olga", ["cam1"])
    r = _reader(site)
    wait_for(lambda: len(r.data) > 10_000, 20, "live bytes")
    camera.drop_clients("cam1")
    r.join(15)
    assert r.ended_at is not None
    wait_for(lambda: len(site.events("live.end")) == 1, 10, "live.end")
    (end,) = site.events("live.end")
    assert (end.outcome, end.reason) == ("terminated", "camera_disconnected")


@pytest.fixture
def small_queue_site(settings_factory, camera: DemoRtspServer) -> Iterator[LiveSite]:
    """A server whose viewers may fall behind by 8 frames / 64 KiB only, so a stalled client is dropped quickly."""
    rt = Runtime.open(settings_factory(live_viewer_queue_fragments=8, live_viewer_queue_bytes=64 * 1024))
    rt.init_default_volume()
    add_camera(rt, "cam1", camera.url("cam1"))
    try:
        for s in running_site(rt, record=True):
            s.user("boss", ["approver"])
            s.user("olga", ["officer"])
            wait_for(lambda: s.rt.live.feed("cam1") is not None, 20, "the camera to record")
            yield s
    finally:
        rt.db.dispose()


def test_a_client_that_stops_reading_is_dropped_and_recording_goes_on(small_queue_site: LiveSite) -> None:
    site = small_queue_site
    site.grant("boss", "olga", ["cam1"])
    host, port = site.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's socket fills soon
    sock.connect((host, int(port)))
    try:
        request = (
            f"GET {LIVE}?purpose=watch HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {site.tokens['olga']}\r\n\r\n"
        )
        sock.sendall(request.encode())
        assert sock.recv(12) == b"HTTP/1.1 200"  # then never read again
        before = len(segments(site.rt, "cam1"))
        wait_for(lambda: len(site.events("live.end")) == 1, 90, "the stalled viewer to be dropped")
        (end,) = site.events("live.end")
        assert (end.outcome, end.reason) == ("terminated", "viewer_too_slow")
        assert end.bytes is not None and end.bytes > 0
        wait_for(lambda: len(segments(site.rt, "cam1")) >= before + 2, 20, "recording to go on")
        rows = segments(site.rt, "cam1")
        assert sum(max(0, round(seg.media_duration_us * FPS / 1e6) - seg.frames) for seg, _ in rows) == 0
        assert all(b.start_us == a.end_us for (a, _), (b, _) in itertools.pairwise(rows))
        # Another viewer is served as usual.
        r = _reader(site)
        wait_for(lambda: len(decode(bytes(r.data))) >= FPS, 20, "a second of live frames")
        r.stop.set()
        r.join(10)
    finally:
        sock.close()
