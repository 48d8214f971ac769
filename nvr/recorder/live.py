"""Live view from the recorder that is already connected: one in-memory fMP4 feed per camera, bounded per viewer.

Cameras often allow only one or two RTSP sessions, so a live viewer never opens a connection of its own: the
camera's :class:`~nvr.recorder.worker.CameraWorker` hands each packet it has just written to its segment to the
camera's :class:`LiveFeed`, and only while the feed has viewers (``feed.wanted``, one attribute read per packet;
nothing else happens otherwise). The feed muxes those packets with PyAV, without re-encoding, into a fragmented
MP4 of its own with one fragment per frame (``frag_every_frame``), so a frame reaches a viewer as soon as it has
arrived rather than at the end of its GOP. The archive's segments keep their GOP fragments: the stored format and
the crash loss (at most the fragment being written) are unchanged by live viewing.

Every viewer has a bounded queue (fragments and bytes, ``live_viewer_queue_*``). The worker only ever appends to
it under a short lock; a viewer whose queue is full is dropped (its stream ends, reason ``viewer_too_slow``), so a
slow or stalled client can never hold up the recording. A failure inside the feed is logged and turns the feed off
for the rest of the run (viewers end with ``live_failed``); it never reaches the recording path.

A viewer gets the init segment (``ftyp`` + ``moov``) and then fragments starting at a keyframe: the first viewer of
a run waits for the next keyframe (the muxer starts there); a later one skips fragments until one begins with a
sync sample. When the camera's run ends (disconnect, new parameters, recorder stopped) the feed closes and its
viewers end with ``camera_disconnected`` (or ``recorder_stopped``); the client may reconnect.

:func:`shared` gives the process's hub for a database (like ``integrity.trusted_time.shared``), so the recorder and
the API of one process (``nvr serve``) meet in it while an ``nvr api`` process, which records nothing, has a hub
without a recorder (``has_recorder`` is False, the API answers ``live_unavailable``).
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av

log = logging.getLogger(__name__)

# Empty moov at the start (the init segment), a fragment for every frame, each fragment's times relative to its
# own moof (what MSE and ffplay expect of a stream joined in the middle).
LIVE_MOVFLAGS = "empty_moov+default_base_moof+frag_every_frame"
SEQ_HISTORY = 4096
"""How many fragments' arrival times a feed remembers (:meth:`LiveFeed.arrival_of`, for bench/live)."""

CLIENT_CLOSED = "client_closed"
VIEWER_TOO_SLOW = "viewer_too_slow"
CAMERA_DISCONNECTED = "camera_disconnected"
RECORDER_STOPPED = "recorder_stopped"
LIVE_FAILED = "live_failed"


@dataclass(frozen=True)
class Fragment:
    data: bytes
    arrival_us: int
    """Monotonic time (µs) the worker received the oldest packet in this fragment; 0 for the init segment."""
    sequence: int
    """The moof's ``mfhd`` sequence number (0 for the init segment)."""
    keyframe: bool


@dataclass(frozen=True)
class ViewerLimits:
    max_fragments: int
    max_bytes: int


class Viewer:
    """One client's queue. The worker thread appends (never blocks); the client's side takes everything queued.

    ``ended`` is None while the viewer may receive more, else the reason it was ended; fragments queued before the
    end may still be taken. ``wake`` (set by the consumer, called from the worker's thread) says something changed.
    """

    def __init__(self, limits: ViewerLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._items: deque[Fragment] = deque()
        self._bytes = 0
        self._signal = threading.Event()
        self.ended: str | None = None
        self.wake: Callable[[], None] | None = None
        self.init: Fragment | None = None
        self.synced = False
        """True once a fragment starting at a keyframe has been queued: before that, fragments are skipped."""

    def offer(self, frag: Fragment) -> bool:
        """Queue ``frag``; False (and the viewer is ended ``viewer_too_slow``) when its queue is full."""
        with self._lock:
            if self.ended is not None:
                return False
            if len(self._items) >= self.limits.max_fragments or self._bytes + len(frag.data) > self.limits.max_bytes:
                self.ended = VIEWER_TOO_SLOW
                ok = False
            else:
                self._items.append(frag)
                self._bytes += len(frag.data)
                ok = True
        self._poke()
        return ok

    def end(self, reason: str) -> None:
        with self._lock:
            if self.ended is None:
                self.ended = reason
        self._poke()

    def take(self) -> tuple[list[Fragment], str | None]:
        """Everything queued so far, and the reason the viewer ended (None while it runs)."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._bytes = 0
            self._signal.clear()
            return items, self.ended

    def wait(self, timeout: float) -> bool:
        """Block until something is queued or the viewer ended (for threads; async code sets ``wake``)."""
        return self._signal.wait(timeout)

    def _poke(self) -> None:
        self._signal.set()
        wake = self.wake
        if wake is not None:
            with contextlib.suppress(RuntimeError):  # the consumer's event loop has closed: nobody to wake
                wake()


class _Splitter:
    """The feed muxer's output file: cuts the byte stream into top-level boxes, the init and then fragments."""

    def __init__(self, on_init: Callable[[bytes], None], on_fragment: Callable[[bytes], None]) -> None:
        self._buf = bytearray()
        self._pending = bytearray()  # boxes of the fragment being collected (styp/prft/moof before its mdat)
        self._init = bytearray()
        self._init_done = False
        self._on_init = on_init
        self._on_fragment = on_fragment

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) >= 8:
            size, kind = struct.unpack_from(">I4s", self._buf)
            if size == 1:
                if len(self._buf) < 16:
                    break
                size = struct.unpack_from(">Q", self._buf, 8)[0]
            if size < 8 or len(self._buf) < size:
                break
            box = bytes(self._buf[:size])
            del self._buf[:size]
            self._box(kind, box)
        return len(data)

    def _box(self, kind: bytes, box: bytes) -> None:
        if not self._init_done:
            self._init += box
            if kind == b"moov":
                self._init_done = True
                self._on_init(bytes(self._init))
            return
        if kind in (b"mfra", b"free", b"skip"):
            return  # the index written at the muxer's close: a live stream has no end to index
        self._pending += box
        if kind == b"mdat":
            frag = bytes(self._pending)
            self._pending.clear()
            self._on_fragment(frag)

    def flush(self) -> None:
        pass

    def seek(self, offset: int, whence: int = 0) -> int:
        raise OSError("a live feed is not seekable")

    def tell(self) -> int:
        return 0


def _children(data: bytes, start: int, end: int) -> dict[bytes, list[tuple[int, int]]]:
    """Child boxes of the box body ``data[start:end]``: type → [(body start, body end)]."""
    out: dict[bytes, list[tuple[int, int]]] = {}
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, i)
        head = 8
        if size == 1:
            size, head = struct.unpack_from(">Q", data, i + 8)[0], 16
        elif size == 0:
            size = end - i
        if size < head or i + size > end:
            break
        out.setdefault(kind, []).append((i + head, i + size))
        i += size
    return out


def fragment_info(frag: bytes) -> tuple[int, bool]:
    """(mfhd sequence number, whether the first track's first sample is a sync sample) of a moof+mdat."""
    top = _children(frag, 0, len(frag))
    moof = top.get(b"moof")
    if not moof:
        return 0, False
    m0, m1 = moof[0]
    boxes = _children(frag, m0, m1)
    seq = struct.unpack_from(">I", frag, boxes[b"mfhd"][0][0] + 4)[0] if b"mfhd" in boxes else 0
    for t0, t1 in boxes.get(b"traf", []):
        traf = _children(frag, t0, t1)
        if b"tfhd" not in traf or b"trun" not in traf:
            continue
        h = traf[b"tfhd"][0][0]
        tf_flags = struct.unpack_from(">I", frag, h)[0] & 0xFFFFFF
        track_id = struct.unpack_from(">I", frag, h + 4)[0]
        if track_id != 1:  # the video track is always the first (the worker lists video first)
            continue
        default_flags = None
        off = h + 8
        for bit, width in ((0x1, 8), (0x2, 4), (0x8, 4), (0x10, 4)):
            if tf_flags & bit:
                off += width
        if tf_flags & 0x20:
            default_flags = struct.unpack_from(">I", frag, off)[0]
        r = traf[b"trun"][0][0]
        tr_flags = struct.unpack_from(">I", frag, r)[0] & 0xFFFFFF
        off = r + 8  # version/flags, sample_count
        if tr_flags & 0x1:
            off += 4
        if tr_flags & 0x4:
            flags = struct.unpack_from(">I", frag, off)[0]
        elif tr_flags & 0x400:
            for bit in (0x100, 0x200):
                if tr_flags & bit:
                    off += 4
            flags = struct.unpack_from(">I", frag, off)[0]
        elif default_flags is not None:
            flags = default_flags
        else:
            return seq, False
        return seq, not (flags & 0x00010000)
    return seq, False


# --- the MSE codecs string ---------------------------------------------------------------------------------------
def codecs_of(init: bytes) -> str:
    """The RFC 6381 codecs of an init segment's sample entries (``avc1.64001f,mp4a.40.2``), for
    ``MediaSource.isTypeSupported`` and ``addSourceBuffer``. An entry this cannot describe is named by its 4cc."""
    out: list[str] = []
    top = _children(init, 0, len(init))
    for m0, m1 in top.get(b"moov", []):
        for t0, t1 in _children(init, m0, m1).get(b"trak", []):
            entry = _sample_entry(init, t0, t1)
            if entry is not None:
                out.append(entry)
    return ",".join(out)


def _sample_entry(data: bytes, t0: int, t1: int) -> str | None:
    path = (b"mdia", b"minf", b"stbl", b"stsd")
    span = (t0, t1)
    for kind in path:
        found = _children(data, *span).get(kind)
        if not found:
            return None
        span = found[0]
    s0, s1 = span
    # stsd: version/flags (4), entry_count (4), then the entries.
    entries = _children(data, s0 + 8, s1)
    for fourcc, spans in entries.items():
        e0, e1 = spans[0]
        name = fourcc.decode("latin-1")
        if fourcc in (b"avc1", b"avc3"):
            cfg = _children(data, e0 + 78, e1).get(b"avcC")
            if cfg:
                c = cfg[0][0]
                return f"{name}.{data[c + 1]:02x}{data[c + 2]:02x}{data[c + 3]:02x}"
        elif fourcc in (b"hvc1", b"hev1"):
            cfg = _children(data, e0 + 78, e1).get(b"hvcC")
            if cfg:
                return f"{name}.{_hevc(data, cfg[0][0])}"
        elif fourcc == b"mp4a":
            esds = _children(data, e0 + 28, e1).get(b"esds")
            if esds:
                return _mp4a(data, *esds[0])
        return name
    return None


def _hevc(data: bytes, c: int) -> str:
    """ISO/IEC 14496-15 annex E: profile space+idc, reversed compatibility flags, tier+level, constraint bytes."""
    b = data[c + 1]
    space = "" if (b >> 6) == 0 else "ABC"[(b >> 6) - 1]
    idc = b & 0x1F
    tier = "H" if b & 0x20 else "L"
    compat = struct.unpack_from(">I", data, c + 2)[0]
    rev = int(f"{compat:032b}"[::-1], 2)
    constraints = list(data[c + 6 : c + 12])
    while constraints and constraints[-1] == 0:
        constraints.pop()
    level = data[c + 12]
    parts = [f"{space}{idc}", f"{rev:X}", f"{tier}{level}", *(f"{x:X}" for x in constraints)]
    return ".".join(parts)


def _mp4a(data: bytes, e0: int, e1: int) -> str:
    """``mp4a.40.<audio object type>`` from the esds' DecoderConfigDescriptor and DecoderSpecificInfo."""
    i = e0 + 4  # full box version/flags
    oti = None
    while i < e1:
        tag = data[i]
        i += 1
        length = 0
        for _ in range(4):
            byte = data[i]
            i += 1
            length = (length << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        if tag == 0x03:  # ES_Descriptor: ES_ID, flags (dependencies, URL and OCR are never written by FFmpeg)
            flags = data[i + 2]
            i += 3 + (2 if flags & 0x80 else 0) + (2 if flags & 0x20 else 0)
            if flags & 0x40:
                i += 1 + data[i]
            continue
        if tag == 0x04:
            oti = data[i]
            i += 13
            continue
        if tag == 0x05 and oti is not None:
            aot = data[i] >> 3
            return f"mp4a.{oti:02x}.{aot}"
        i += length
    return f"mp4a.{oti:02x}" if oti is not None else "mp4a"


# --- one camera's feed -------------------------------------------------------------------------------------------
class LiveFeed:
    """The live side of one camera run. The worker thread calls :meth:`publish` and :meth:`close`; viewers come and
    go from other threads."""

    def __init__(
        self,
        camera_id: str,
        streams: list[Any],
        container_format: str,
        extradata: dict[int, bytes],
        limits: ViewerLimits,
    ) -> None:
        self.camera_id = camera_id
        self.limits = limits
        self._streams = streams
        self._format = container_format
        self._extradata = extradata  # the worker's dict: filled at the run's first keyframe when the SDP had none
        self._lock = threading.Lock()
        self._viewers: list[Viewer] = []
        self.wanted = False
        """True while the feed has viewers: the one thing the worker looks at per packet."""
        self.closed: str | None = None
        self._out: Any = None
        self.muxing = False
        """True while the feed's muxer is open (the worker calls :meth:`idle` once ``wanted`` went False)."""
        self._map: dict[int, Any] = {}
        self._init: Fragment | None = None
        self._oldest_pending: int | None = None
        self._arrivals: OrderedDict[int, int] = OrderedDict()
        self.fragments = 0
        self.bytes = 0

    # --- viewers (any thread) ------------------------------------------------------------------------------
    def add_viewer(self) -> Viewer:
        v = Viewer(self.limits)
        with self._lock:
            if self.closed is not None:
                v.end(self.closed)
                return v
            if self._init is not None:
                v.init = self._init
            self._viewers.append(v)
            self.wanted = True
        return v

    def remove_viewer(self, v: Viewer, reason: str = CLIENT_CLOSED) -> None:
        v.end(reason)
        with self._lock:
            if v in self._viewers:
                self._viewers.remove(v)
            self.wanted = bool(self._viewers) and self.closed is None

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def arrival_of(self, sequence: int) -> int | None:
        """When the oldest frame of fragment ``sequence`` reached the worker (monotonic µs), if still remembered."""
        return self._arrivals.get(sequence)

    # --- the worker's side ---------------------------------------------------------------------------------
    def publish(self, pkt: av.Packet, source_index: int, keyframe: bool, arrival_us: int) -> None:
        """Mux one packet the worker has written to its segment (its timestamps are in that segment stream's time
        base, which the packet carries, so they are rescaled here, not reinterpreted). Never raises."""
        try:
            if self._out is None:
                if not (keyframe and source_index == self._streams[0].index):
                    return  # a live stream starts at a keyframe
                self._start()
            pkt.stream = self._map[source_index]
            # The muxer emits a frame's fragment when the next packet arrives (FFmpeg's frag_every_frame flushes
            # before it writes): fragments emitted now hold the packets before this one.
            self._out.mux_one(pkt)
            if self._oldest_pending is None:
                self._oldest_pending = arrival_us
        except Exception:
            log.exception("camera %s: live feed failed; live view is off until the camera reconnects", self.camera_id)
            self._stop_muxer()
            self.close(LIVE_FAILED)

    def _start(self) -> None:
        splitter = _Splitter(self._on_init, self._on_fragment)
        out = av.open(splitter, "w", format=self._format, options={"movflags": LIVE_MOVFLAGS, "flush_packets": "1"})
        for s in self._streams:
            o = out.add_stream_from_template(s)
            if s.codec_context.name == "hevc":
                o.codec_tag = "hvc1"  # parameter sets in the sample entry: what browsers accept
            if s.index in self._extradata:
                o.codec_context.extradata = self._extradata[s.index]
            self._map[s.index] = o
        self._out = out
        self.muxing = True

    def _on_init(self, data: bytes) -> None:
        init = Fragment(data, 0, 0, False)
        with self._lock:
            self._init = init
            for v in self._viewers:
                if v.init is None:
                    v.init = init
                    v._poke()

    def _on_fragment(self, data: bytes) -> None:
        seq, key = fragment_info(data)
        arrival = self._oldest_pending or 0
        self._oldest_pending = None
        frag = Fragment(data, arrival, seq, key)
        self.fragments += 1
        self.bytes += len(data)
        self._arrivals[seq] = arrival
        if len(self._arrivals) > SEQ_HISTORY:
            self._arrivals.popitem(last=False)
        dropped: list[Viewer] = []
        with self._lock:
            viewers = list(self._viewers)
        for v in viewers:
            if not v.synced:
                if not key:
                    continue
                v.synced = True
            if not v.offer(frag) and v.ended == VIEWER_TOO_SLOW:  # (a viewer ended meanwhile is no slow viewer)
                dropped.append(v)
        for v in dropped:  # the muxer stays: this runs inside its write; the worker calls idle() if none is left
            log.warning("camera %s: a live viewer fell too far behind and was dropped", self.camera_id)
            self.remove_viewer(v, VIEWER_TOO_SLOW)

    def idle(self) -> None:
        """Called by the worker when ``wanted`` went False: free the muxer (the next viewer restarts it)."""
        if self._out is not None and not self.wanted:
            self._stop_muxer()

    def _stop_muxer(self) -> None:
        out, self._out = self._out, None
        self.muxing = False
        self._map = {}
        self._oldest_pending = None
        with self._lock:
            self._init = None
        if out is not None:
            try:
                out.close()
            except Exception as exc:  # nothing of the muxer's tail matters to anyone
                log.debug("camera %s: closing the live muxer: %s", self.camera_id, exc)

    def close(self, reason: str) -> None:
        """The run ended (or the feed failed): every viewer ends with ``reason``; no viewer can join any more."""
        with self._lock:
            if self.closed is None:
                self.closed = reason
            viewers, self._viewers = list(self._viewers), []
            self.wanted = False
        for v in viewers:
            v.end(reason)


class LiveHub:
    """The process's live feeds, camera id → the feed of its current run, and whether a recorder runs here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._feeds: dict[str, LiveFeed] = {}
        self._recorders = 0

    @property
    def has_recorder(self) -> bool:
        return self._recorders > 0

    def attach_recorder(self) -> None:
        with self._lock:
            self._recorders += 1

    def detach_recorder(self) -> None:
        with self._lock:
            self._recorders = max(0, self._recorders - 1)

    def open_feed(
        self,
        camera_id: str,
        streams: list[Any],
        container_format: str,
        extradata: dict[int, bytes],
        limits: ViewerLimits,
    ) -> LiveFeed:
        feed = LiveFeed(camera_id, streams, container_format, extradata, limits)
        with self._lock:
            old = self._feeds.get(camera_id)
            self._feeds[camera_id] = feed
        if old is not None:
            old.close(CAMERA_DISCONNECTED)
        return feed

    def close_feed(self, feed: LiveFeed, reason: str) -> None:
        with self._lock:
            if self._feeds.get(feed.camera_id) is feed:
                del self._feeds[feed.camera_id]
        feed._stop_muxer()
        feed.close(reason)

    def feed(self, camera_id: str) -> LiveFeed | None:
        with self._lock:
            return self._feeds.get(camera_id)


_SHARED: weakref.WeakKeyDictionary[Any, LiveHub] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def shared(db: Any) -> LiveHub:
    """The process's hub for ``db`` (made at first use): the recorder context and the API's services of one process
    get the same one."""
    with _SHARED_LOCK:
        hub = _SHARED.get(db)
        if hub is None:
            hub = _SHARED[db] = LiveHub()
        return hub
