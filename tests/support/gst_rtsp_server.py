#!/usr/bin/python3
"""Independent RTSP test server (GStreamer gst-rtsp-server) for the NVR's interop tests.

This runs under Debian's ``/usr/bin/python3`` (which can import ``gi``), never under the
project venv. It serves pre-encoded test media so that the recorder (FFmpeg's RTSP demuxer)
is exercised against an RTSP/RTP implementation that is not FFmpeg's own.

Mounts (see ``MOUNTS``)::

    /h264      H.264 640x360 25 fps, GOP 1 s, no B-frames
    /h265      H.265 640x360 25 fps, GOP 1 s, no B-frames
    /h264aac   H.264 (as /h264) + AAC-LC 48 kHz mono
    /h264b     H.264 main profile with 2 B-frames (pts != dts, out-of-order pts on the wire)
    /restart   H.264 (as /h264); every session is torn down ``--restart-after`` seconds after
               it starts playing, like a camera that reboots (TCP connection closed, no BYE)
    /audio     AAC only: a "stream with no video"
    /mjpeg     Motion-JPEG: a codec the recorder does not support

Media is encoded ONCE with the ``ffmpeg`` CLI into small MP4/MOV clips in ``--media-dir``
(file names carry a hash of the encoding parameters, so the directory is a cache that can be
shared between runs and checkouts). At start-up each clip is demuxed/parsed into memory as
access units; every client session then gets its own pipeline ``appsrc ! parse ! pay`` that
loops the access units with their timestamps offset by one clip length per loop. No encoding
happens while serving, so the server costs almost no CPU.

Every session starts at timestamp zero with a fresh random SSRC/RTP timestamp base (the
factories are not shared), which is also what a client sees from a camera that rebooted.

Protocol: one line ``READY <port>`` on stdout once listening. Then commands on stdin, one per
line, each answered by exactly one line on stdout (``OK ...`` or ``ERR ...``):

    restart <mount> [downtime]   close every client/session of <mount> now (camera reboot);
                                 with downtime > 0 the mount answers 404 for that many seconds
    ping                         liveness check
    quit                         exit

The server exits on ``quit``, when stdin is closed (the parent died), or on SIGTERM/SIGINT.

``--check`` only verifies that everything needed is present, prints ``OK`` or the reason, and
exits 0/1; it is what ``tests/support/gst.py`` uses to decide whether to skip.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# gi is imported defensively so that ``--check`` can report *why* GStreamer is unusable
# instead of dying with a traceback.
_GI_ERROR: Exception | None = None
try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstApp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    # GstApp is only imported so that appsrc/appsink get their push_buffer/try_pull_sample methods.
    from gi.repository import GLib, Gst, GstApp, GstRtspServer  # noqa: F401
except (ImportError, ValueError) as exc:  # ValueError: typelib for that namespace missing
    _GI_ERROR = exc

CLIP_SECONDS = 8  # loop length; a whole number of GOPs (1 s) and of AAC frames (1024 @ 48 kHz)
WIDTH, HEIGHT, FPS = 640, 360, 25
# Bump to invalidate every cached clip (e.g. after changing how clips are post-processed).
CACHE_VERSION = "1"

_VIDEO_IN = ["-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}:duration={CLIP_SECONDS}"]
# Audio is encoded a little longer than the clip: the AAC encoder's priming frame is cut by the
# MP4 edit list, and we want a full CLIP_SECONDS of frames left after re-basing to zero.
_AUDIO_IN = ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={CLIP_SECONDS + 0.2}"]
# fmt: off
_X264 = [
    "-c:v", "libx264", "-preset", "veryfast", "-crf", "28", "-pix_fmt", "yuv420p",
    # Fixed 1 s closed GOP: every clip loop starts on an IDR, so looping is seamless.
    "-g", str(FPS), "-keyint_min", str(FPS), "-sc_threshold", "0",
]
_X265 = [
    "-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-tag:v", "hvc1",
    "-x265-params", f"keyint={FPS}:min-keyint={FPS}:scenecut=0:bframes=0:log-level=error",
]
# fmt: on
_AAC = ["-c:a", "aac", "-b:a", "64k", "-ac", "1"]

_H264_PARSE = "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au"
_H265_PARSE = "h265parse config-interval=-1 ! video/x-h265,stream-format=byte-stream,alignment=au"
_AAC_PARSE = "aacparse ! audio/mpeg,mpegversion=4,stream-format=raw"


@dataclass(frozen=True)
class StreamSpec:
    """One elementary stream of a clip: how to extract it and how to payload it."""

    demux_pad: str  # qtdemux source pad, e.g. "video_0"
    load: str  # parse chain used once at start-up to split the clip into access units
    serve: str  # chain after appsrc in every session; must end in an RTP payloader


@dataclass(frozen=True)
class ClipSpec:
    """A pre-encoded clip; identical specs (e.g. /h264 and /restart) share one file."""

    name: str
    ext: str
    ffmpeg_args: tuple[str, ...]
    streams: tuple[StreamSpec, ...]

    def path(self, media_dir: Path) -> Path:
        key = hashlib.sha256(repr((CACHE_VERSION, self.ffmpeg_args)).encode()).hexdigest()[:16]
        return media_dir / f"{self.name}-{key}.{self.ext}"


_H264_VIDEO = StreamSpec("video_0", _H264_PARSE, "h264parse config-interval=-1 ! rtph264pay pt=96")
_AAC_AUDIO_97 = StreamSpec("audio_0", _AAC_PARSE, "aacparse ! rtpmp4gpay pt=97")

H264 = ClipSpec("h264", "mp4", (*_VIDEO_IN, *_X264, "-bf", "0", "-profile:v", "main"), (_H264_VIDEO,))
H264B = ClipSpec("h264b", "mp4", (*_VIDEO_IN, *_X264, "-bf", "2", "-profile:v", "main"), (_H264_VIDEO,))
H264AAC = ClipSpec(
    "h264aac",
    "mp4",
    (*_VIDEO_IN, *_AUDIO_IN, *_X264, "-bf", "0", "-profile:v", "main", *_AAC),
    (_H264_VIDEO, _AAC_AUDIO_97),
)
H265 = ClipSpec(
    "h265",
    "mp4",
    (*_VIDEO_IN, *_X265),
    (StreamSpec("video_0", _H265_PARSE, "h265parse config-interval=-1 ! rtph265pay pt=96"),),
)
AUDIO = ClipSpec(
    "audio",
    "mp4",
    (*_AUDIO_IN, *_AAC),
    (StreamSpec("audio_0", _AAC_PARSE, "aacparse ! rtpmp4gpay pt=96"),),
)
MJPEG = ClipSpec(
    "mjpeg",
    "mov",
    (*_VIDEO_IN, "-c:v", "mjpeg", "-q:v", "8", "-pix_fmt", "yuvj420p"),
    (StreamSpec("video_0", "jpegparse", "jpegparse ! rtpjpegpay pt=96"),),
)

MOUNTS: dict[str, ClipSpec] = {
    "/h264": H264,
    "/h265": H265,
    "/h264aac": H264AAC,
    "/h264b": H264B,
    "/restart": H264,
    "/audio": AUDIO,
    "/mjpeg": MJPEG,
}
RESTART_MOUNT = "/restart"

REQUIRED_ELEMENTS = [
    "filesrc",
    "qtdemux",
    "queue",
    "appsrc",
    "appsink",
    "h264parse",
    "h265parse",
    "aacparse",
    "jpegparse",
    "rtph264pay",
    "rtph265pay",
    "rtpmp4gpay",
    "rtpjpegpay",
]
REQUIRED_ENCODERS = ("libx264", "libx265", "aac", "mjpeg")


def log(msg: str) -> None:
    print(f"gst_rtsp_server: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- availability


def unavailable_reason() -> str | None:
    """Why this machine cannot run the server, or None if it can."""
    if _GI_ERROR is not None:
        return (
            f"GStreamer Python bindings unusable under {sys.executable}: {_GI_ERROR} (run scripts/install-system-deps)"
        )
    Gst.init(None)
    missing = [name for name in REQUIRED_ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        return f"GStreamer elements missing: {', '.join(missing)} (run scripts/install-system-deps)"
    try:
        out = subprocess.run(
            ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ffmpeg CLI unusable: {exc} (run scripts/install-system-deps)"
    encoders = {line.split()[1] for line in out.splitlines() if len(line.split()) > 1}
    missing = [name for name in REQUIRED_ENCODERS if name not in encoders]
    if missing:
        return f"ffmpeg lacks encoders: {', '.join(missing)}"
    return None


# --------------------------------------------------------------------------- media preparation


def ensure_clip(spec: ClipSpec, media_dir: Path) -> Path:
    """Encode the clip unless a cached copy exists. Safe against concurrent runs."""
    path = spec.path(media_dir)
    if path.exists():
        return path
    media_dir.mkdir(parents=True, exist_ok=True)
    log(f"encoding {path.name}")
    fd, tmp = tempfile.mkstemp(prefix=f".{spec.name}-", suffix=f".{spec.ext}", dir=media_dir)
    os.close(fd)
    try:
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *spec.ffmpeg_args, tmp]
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=sys.stderr)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
        os.replace(tmp, path)  # atomic: a reader never sees a half-written clip
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@dataclass
class LoadedStream:
    """Access units of one stream, re-based so that the first DTS is zero."""

    spec: StreamSpec
    caps: Any  # Gst.Caps
    buffers: list[Any]  # list[Gst.Buffer]


def load_clip(spec: ClipSpec, path: Path) -> list[LoadedStream]:
    """Demux and parse the clip into in-memory access units (done once per clip)."""
    chains = " ".join(
        f"d.{s.demux_pad} ! queue ! {s.load} ! appsink name=sink{i} sync=false wait-on-eos=false"
        for i, s in enumerate(spec.streams)
    )
    pipeline = Gst.parse_launch(f'filesrc location="{path}" ! qtdemux name=d {chains}')
    pipeline.set_state(Gst.State.PLAYING)
    period = CLIP_SECONDS * Gst.SECOND
    loaded: list[LoadedStream] = []
    try:
        for i, stream in enumerate(spec.streams):
            sink = pipeline.get_by_name(f"sink{i}")
            caps = None
            raw: list[Any] = []
            # appsinks queue without limit, so draining them one after the other cannot deadlock.
            while (sample := sink.try_pull_sample(10 * Gst.SECOND)) is not None:
                caps = caps or sample.get_caps()
                raw.append(sample.get_buffer())
            if not sink.is_eos() or not raw:
                msg = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
                detail = msg.parse_error()[0].message if msg else "timeout/no data"
                raise RuntimeError(f"could not load {path.name} {stream.demux_pad}: {detail}")
            base = _dts(raw[0])
            buffers = []
            for buf in raw:
                if _dts(buf) - base >= period:
                    break  # the extra tail encoded for the AAC priming offset
                out = buf.copy_region(_copy_all(), 0, buf.get_size())
                out.pts = buf.pts - base
                out.dts = _dts(buf) - base
                buffers.append(out)
            loaded.append(LoadedStream(stream, caps, buffers))
    finally:
        pipeline.set_state(Gst.State.NULL)
    return loaded


def _copy_all() -> Any:
    # Gst.BUFFER_COPY_ALL is exposed by PyGObject as flags 0 (copies nothing!), so spell it out.
    # MEMORY shares the underlying memory (refcounted), so copies are cheap.
    f = Gst.BufferCopyFlags
    return f.FLAGS | f.TIMESTAMPS | f.META | f.MEMORY


def _dts(buf: Any) -> int:
    return buf.dts if buf.dts != Gst.CLOCK_TIME_NONE else buf.pts


# --------------------------------------------------------------------------- serving


@dataclass
class Feeder:
    """Pushes a stream's access units into one session's appsrc, looping forever.

    The appsrc is not live: the RTSP server's sinks synchronise on the pipeline clock, so
    pushing whenever appsrc asks for data still yields real-time delivery, and the appsrc
    queue bounds how far ahead we get.
    """

    stream: LoadedStream
    index: int = 0
    offset: int = 0  # ns added to every timestamp; grows by one clip length per loop

    def on_need_data(self, src: Any, _length: int) -> None:
        buffers = self.stream.buffers
        for _ in range(8):  # a small batch per callback keeps the Python overhead negligible
            orig = buffers[self.index]
            # In PyGObject Gst.Buffer.copy() hands back the same object; copy_region makes a real
            # (shallow, memory-sharing) copy whose timestamps we may change.
            buf = orig.copy_region(_copy_all(), 0, orig.get_size())
            buf.pts = orig.pts + self.offset
            buf.dts = orig.dts + self.offset
            self.index += 1
            if self.index == len(buffers):
                self.index = 0
                self.offset += CLIP_SECONDS * Gst.SECOND
            if src.push_buffer(buf) != Gst.FlowReturn.OK:
                return  # flushing/shutting down


@dataclass
class Mount:
    path: str
    streams: list[LoadedStream]
    factory: Any  # GstRtspServer.RTSPMediaFactory
    medias: set[Any] = field(default_factory=set)  # live GstRtspServer.RTSPMedia of this mount


class Server:
    def __init__(self, host: str, port: int, streams: dict[str, list[LoadedStream]], restart_after: float):
        self.restart_after = restart_after
        self._armed: set[Any] = set()  # /restart medias whose reboot timer is running
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address(host)
        self.server.set_service(str(port))
        self.mount_points = self.server.get_mount_points()
        self.mounts: dict[str, Mount] = {}
        for path, loaded in streams.items():
            factory = GstRtspServer.RTSPMediaFactory()
            chains = " ".join(
                f"appsrc name=src{i} format=time ! {s.spec.serve} name=pay{i}" for i, s in enumerate(loaded)
            )
            factory.set_launch(f"( {chains} )")
            # One pipeline per session: each client starts at t=0 with its own SSRC, and a
            # "reboot" of one session never disturbs another test's session.
            factory.set_shared(False)
            mount = Mount(path, loaded, factory)
            factory.connect("media-configure", self._on_media_configure, mount)
            self.mount_points.add_factory(path, factory)
            self.mounts[path] = mount

    def attach(self) -> int:
        if self.server.attach(None) == 0:
            raise RuntimeError("could not bind the RTSP server socket")
        return self.server.get_bound_port()

    def _on_media_configure(self, _factory: Any, media: Any, mount: Mount) -> None:
        bin_ = media.get_element()
        for i, stream in enumerate(mount.streams):
            src = bin_.get_by_name(f"src{i}")
            src.set_property("caps", stream.caps)
            feeder = Feeder(stream)
            src.connect("need-data", feeder.on_need_data)
        mount.medias.add(media)
        media.connect("unprepared", lambda m: mount.medias.discard(m))
        if mount.path == RESTART_MOUNT and self.restart_after > 0:
            media.connect("new-state", self._on_new_state)

    def _on_new_state(self, media: Any, state: int) -> None:
        # Arm the "reboot" timer once, when the session first starts playing.
        if state == Gst.State.PLAYING and media not in self._armed:
            self._armed.add(media)
            GLib.timeout_add(int(self.restart_after * 1000), self._auto_restart, media)

    def _auto_restart(self, media: Any) -> bool:
        self._armed.discard(media)
        count = self.teardown(lambda m: m is media)
        if count:
            log(f"auto-restart of a {RESTART_MOUNT} session after {self.restart_after:g}s")
        return GLib.SOURCE_REMOVE

    def restart(self, path: str, downtime: float) -> int:
        mount = self.mounts[path]
        count = self.teardown(lambda m: m in mount.medias)
        if downtime > 0:
            # A rebooting camera is unreachable for a while; 404 is the closest RTSP analogue
            # that keeps the port open (a closed port would be ECONNREFUSED instead).
            self.mount_points.remove_factory(path)
            GLib.timeout_add(int(downtime * 1000), self._remount, mount)
        return count

    def _remount(self, mount: Mount) -> bool:
        self.mount_points.add_factory(mount.path, mount.factory)
        return GLib.SOURCE_REMOVE

    def teardown(self, matches: Callable[[Any], bool]) -> int:
        """Close clients (their TCP connections) and sessions whose media `matches`.

        Closing the connection is what a rebooting camera does; gst-rtsp-server then drops the
        client's TCP-interleaved sessions. Sessions are also removed from the pool so that UDP
        sessions (no connection to close) end as well.
        """
        result = GstRtspServer.RTSPFilterResult
        # The *_filter() functions only return the objects for which the callback said REF.

        def session_matches(session: Any) -> bool:
            medias = session.filter(lambda _session, session_media: result.REF)
            return any(matches(sm.get_media()) for sm in medias)

        closed = 0

        def client_filter(_server: Any, client: Any) -> Any:
            nonlocal closed
            if any(session_matches(s) for s in client.session_filter(lambda _c, _s: result.REF)):
                closed += 1
                return result.REMOVE  # gst_rtsp_client_close(): the TCP connection goes away
            return result.KEEP

        self.server.client_filter(client_filter)
        removed = 0

        def pool_filter(_pool: Any, session: Any) -> Any:
            nonlocal removed
            if session_matches(session):
                removed += 1
                return result.REMOVE
            return result.KEEP

        self.server.get_session_pool().filter(pool_filter)
        return max(closed, removed)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check prerequisites; print OK or why not")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed in READY)")
    parser.add_argument("--media-dir", type=Path, help="cache directory for the pre-encoded clips")
    parser.add_argument(
        "--restart-after",
        type=float,
        default=6.0,
        help=f"seconds after which each {RESTART_MOUNT} session is torn down; 0 disables",
    )
    args = parser.parse_args(argv)

    reason = unavailable_reason()
    if args.check:
        print(reason or "OK", flush=True)
        return 1 if reason else 0
    if reason:
        log(reason)
        return 1
    if args.media_dir is None:
        parser.error("--media-dir is required")

    clips: dict[ClipSpec, list[LoadedStream]] = {}
    for spec in dict.fromkeys(MOUNTS.values()):
        clips[spec] = load_clip(spec, ensure_clip(spec, args.media_dir))
    server = Server(args.host, args.port, {p: clips[s] for p, s in MOUNTS.items()}, args.restart_after)
    port = server.attach()

    loop = GLib.MainLoop()

    def handle_command(line: str) -> str:
        words = line.split()
        if not words:
            return "ERR empty command"
        if words[0] == "ping":
            return "OK pong"
        if words[0] == "quit":
            loop.quit()
            return "OK quit"
        if words[0] == "restart" and len(words) in (2, 3) and words[1] in server.mounts:
            downtime = float(words[2]) if len(words) == 3 else 0.0
            count = server.restart(words[1], downtime)
            log(f"restart {words[1]}: closed {count} session(s), downtime {downtime:g}s")
            return f"OK restart {words[1]} {count}"
        return f"ERR unknown command: {line.strip()}"

    pending = ""

    def on_stdin(fd: int, condition: int) -> bool:
        nonlocal pending
        data = os.read(fd, 65536) if condition & GLib.IO_IN else b""
        if not data:  # EOF or HUP: the parent went away, don't linger as an orphan
            loop.quit()
            return GLib.SOURCE_REMOVE
        *lines, pending = (pending + data.decode()).split("\n")
        for cmd in lines:
            try:
                reply = handle_command(cmd)
            except Exception as exc:  # keep serving; report the failure to the caller
                reply = f"ERR {type(exc).__name__}: {exc}"
            print(reply, flush=True)
        return GLib.SOURCE_CONTINUE

    GLib.io_add_watch(sys.stdin.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP, on_stdin)
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, lambda: loop.quit() or GLib.SOURCE_REMOVE)

    print(f"READY {port}", flush=True)
    log(f"serving {', '.join(MOUNTS)} on rtsp://{args.host}:{port}")
    loop.run()
    log("exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
