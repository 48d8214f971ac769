"""A small RTSP/1.0 server that plays pre-encoded test patterns in real time, one mount per simulated camera.

It exists so the recorder, its tests and the ingest benchmark have cameras to record without hardware. It speaks
just enough RTSP for FFmpeg's client (and typical NVR clients): OPTIONS, DESCRIBE, SETUP over TCP interleaved
transport only, PLAY, PAUSE, GET_PARAMETER/SET_PARAMETER keep-alives and TEARDOWN, with optional Basic or Digest
authentication like a real camera.

Cost is what shapes the design: 64 cameras at 3 Mbit/s must leave the CPU to the recorder. So every access unit
is packetized into RTP once, when the server is built, into a single buffer already framed for interleaved TCP;
sending a frame is one copy of that buffer, one ``pack_into`` per RTP packet (sequence number, timestamp and SSRC
are contiguous in the header) and one ``write`` per client. All sessions are driven by one event loop in one
background thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hashlib
import hmac
import logging
import re
import secrets
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from types import TracebackType
from typing import TypeVar
from urllib.parse import quote, urlsplit

from nvr.demo.pattern import Pattern

log = logging.getLogger(__name__)

T = TypeVar("T")

RTP_PAYLOAD_TYPE = 96
RTP_CLOCK = 90_000
# Payload budget per RTP packet: 1400 bytes of payload plus headers stays under a 1500-byte Ethernet MTU, which
# is what cameras use even over TCP (their packetizer does not know the transport).
MAX_PAYLOAD = 1400
SERVER_NAME = "nvr-demo-rtsp/1.0"
SR_INTERVAL = 5.0
# A client whose unsent data exceeds this is not keeping up; a real camera would drop it rather than buffer.
MAX_CLIENT_BUFFER = 4 * 1024 * 1024
# Behind schedule by more than this, the session restarts its clock instead of bursting: a stall of the event
# loop looks to the client like network jitter, not like minutes of video arriving at once.
MAX_LAG_SECONDS = 1.0
MAX_REQUEST_BYTES = 64 * 1024
NTP_EPOCH_OFFSET = 2_208_988_800

_HEADER = struct.Struct(">HII")  # sequence number, timestamp, SSRC: bytes 2..11 of the RTP header
_INTERLEAVED = struct.Struct(">BBH")
_AUTH_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


@dataclass(frozen=True)
class _RtpFrame:
    """One access unit as interleaved RTP packets with zeroed seq/ts/SSRC, ready to copy and patch."""

    data: bytes
    header_offsets: tuple[int, ...]
    """Offset of each packet's sequence number field inside ``data``."""
    payload_octets: int


@dataclass(frozen=True)
class _Track:
    """A pattern prepared for sending: the packetized frames and the SDP media description."""

    pattern: Pattern
    frames: tuple[_RtpFrame, ...]

    @classmethod
    def build(cls, pattern: Pattern, channel: int = 0) -> _Track:
        return cls(pattern, tuple(_packetize(au, channel) for au in pattern.access_units))


def _packetize(nals: tuple[bytes, ...], channel: int) -> _RtpFrame:
    """RFC 6184 packetization-mode=1: single NAL unit packets, FU-A for units larger than MAX_PAYLOAD."""
    payloads: list[bytes] = []
    for nal in nals:
        if len(nal) <= MAX_PAYLOAD:
            payloads.append(nal)
            continue
        indicator = (nal[0] & 0xE0) | 28
        nal_type = nal[0] & 0x1F
        body = nal[1:]
        chunk = MAX_PAYLOAD - 2
        for pos in range(0, len(body), chunk):
            fu_header = nal_type
            if pos == 0:
                fu_header |= 0x80
            if pos + chunk >= len(body):
                fu_header |= 0x40
            payloads.append(bytes((indicator, fu_header)) + body[pos : pos + chunk])
    parts: list[bytes] = []
    offsets: list[int] = []
    pos = 0
    for index, payload in enumerate(payloads):
        marker = 0x80 if index == len(payloads) - 1 else 0
        rtp_len = 12 + len(payload)
        parts.append(_INTERLEAVED.pack(0x24, channel, rtp_len))
        parts.append(bytes((0x80, marker | RTP_PAYLOAD_TYPE)) + bytes(10))
        parts.append(payload)
        offsets.append(pos + 4 + 2)
        pos += 4 + rtp_len
    return _RtpFrame(b"".join(parts), tuple(offsets), sum(len(p) for p in payloads))


@dataclass
class _Mount:
    name: str
    track: _Track
    epoch: float
    """Loop time at which this camera's 'live' stream began; new sessions join at its current GOP."""
    paused: bool = False


class _Session:
    """One PLAYing (or set up) RTP stream to one client connection."""

    def __init__(self, conn: _RtspConnection, mount: _Mount, channel: int) -> None:
        self.conn = conn
        self.mount = mount
        self.track = mount.track
        self.id = secrets.token_hex(8)
        self.rtp_channel = channel
        self.ssrc = secrets.randbits(32)
        self.seq = secrets.randbits(16)
        self.ts_base = secrets.randbits(32)
        self.frame_index = 0
        """Frames sent since the session started (keeps counting across loops of the pattern)."""
        self.first_frame = 0
        """Pattern index of the session's first frame: the start of a GOP."""
        self.clock_start = 0.0
        self.playing = False
        self.timer: asyncio.Handle | None = None
        self.packets = 0
        self.octets = 0
        self.next_sr = 0.0
        pattern = self.track.pattern
        self.fps = pattern.fps
        self.frame_count = pattern.frame_count
        self.frames = self.track.frames
        if channel != 0:
            # Prebuilt frames carry channel 0; a client asking for other channels gets its own copy.
            self.frames = tuple(
                _RtpFrame(_rechannel(f.data, f.header_offsets, channel), f.header_offsets, f.payload_octets)
                for f in self.frames
            )

    def rtp_timestamp(self, frame_index: int) -> int:
        # Integer arithmetic from the session's frame counter: no drift, and the timestamp keeps growing across
        # loops of the pattern exactly as if the camera never stopped.
        return (self.ts_base + frame_index * RTP_CLOCK // self.fps) & 0xFFFFFFFF

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.playing:
            return
        now = loop.time()
        if self.frame_index == 0:
            pattern = self.track.pattern
            live = int((now - self.mount.epoch) * self.fps) % self.frame_count
            self.first_frame = live - live % pattern.gop
        self.clock_start = now - self.frame_index / self.fps
        self.playing = True
        self.next_sr = now
        self.timer = loop.call_soon(self._tick)

    def stop(self) -> None:
        self.playing = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _tick(self) -> None:
        self.timer = None
        if not self.playing:
            return
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            self.stop()
            return
        loop = self.conn.server.loop
        now = loop.time()
        fps = self.fps
        # Frames due by now; the small epsilon absorbs float error when the timer fires exactly on time.
        due = int((now - self.clock_start) * fps + 1e-6) + 1
        if due - self.frame_index > MAX_LAG_SECONDS * fps:
            log.debug("session %s fell %.1f s behind; resetting its clock", self.id, (due - self.frame_index) / fps)
            self.clock_start = now - self.frame_index / fps
            due = self.frame_index + 1
        while self.frame_index < due:
            if transport.get_write_buffer_size() > self.conn.server.max_client_buffer:
                log.warning(
                    "client %s is not reading (%d bytes queued); dropping it",
                    self.conn.peer,
                    transport.get_write_buffer_size(),
                )
                self.conn.server.dropped_slow_clients += 1
                self.conn.abort()
                return
            self._send_frame(transport)
        if now >= self.next_sr:
            self._send_sender_report(transport, now)
            self.next_sr = now + SR_INTERVAL
        self.timer = loop.call_at(self.clock_start + self.frame_index / fps, self._tick)

    def _send_frame(self, transport: asyncio.WriteTransport) -> None:
        frame = self.frames[(self.first_frame + self.frame_index) % self.frame_count]
        buf = bytearray(frame.data)
        ts = self.rtp_timestamp(self.frame_index)
        ssrc = self.ssrc
        seq = self.seq
        pack_into = _HEADER.pack_into
        for offset in frame.header_offsets:
            pack_into(buf, offset, seq, ts, ssrc)
            seq = (seq + 1) & 0xFFFF
        self.seq = seq
        self.packets += len(frame.header_offsets)
        self.octets += frame.payload_octets
        self.frame_index += 1
        transport.write(buf)

    def _send_sender_report(self, transport: asyncio.WriteTransport, now: float) -> None:
        """RTCP SR + SDES: ties the RTP clock to wall-clock time, which clients use for absolute timestamps."""
        # The most recent frame sent was due at clock_start + (frame_index - 1) / fps; extrapolate to now.
        last = self.frame_index - 1
        rtp_now = (self.rtp_timestamp(last) + round((now - (self.clock_start + last / self.fps)) * RTP_CLOCK)) & (
            0xFFFFFFFF
        )
        wall = time.time() + NTP_EPOCH_OFFSET
        ntp_sec = int(wall)
        ntp_frac = int((wall - ntp_sec) * (1 << 32)) & 0xFFFFFFFF
        sr = struct.pack(
            ">BBHIIIIII",
            0x80,
            200,
            6,
            self.ssrc,
            ntp_sec & 0xFFFFFFFF,
            ntp_frac,
            rtp_now,
            self.packets & 0xFFFFFFFF,
            self.octets & 0xFFFFFFFF,
        )
        cname = f"nvr-demo-{self.mount.name}".encode()[:255]
        chunk = struct.pack(">IBB", self.ssrc, 1, len(cname)) + cname + b"\x00"
        chunk += b"\x00" * (-len(chunk) % 4)
        sdes = struct.pack(">BBH", 0x81, 202, len(chunk) // 4) + chunk
        rtcp = sr + sdes
        transport.write(_INTERLEAVED.pack(0x24, self.rtp_channel + 1, len(rtcp)) + rtcp)


def _rechannel(data: bytes, offsets: tuple[int, ...], channel: int) -> bytes:
    buf = bytearray(data)
    for offset in offsets:
        buf[offset - 6 + 1] = channel
    return bytes(buf)


@dataclass
class _Request:
    method: str
    uri: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def cseq(self) -> str:
        return self.headers.get("cseq", "0")


@dataclass
class _Response:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class _RtspConnection(asyncio.Protocol):
    """One client TCP connection: RTSP requests in, responses and interleaved RTP/RTCP out."""

    def __init__(self, server: DemoRtspServer) -> None:
        self.server = server
        self.transport: asyncio.WriteTransport | None = None
        self.buffer = bytearray()
        self.session: _Session | None = None
        self.peer = "?"
        self.nonce = secrets.token_hex(16)

    # asyncio.Protocol -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if self.server.send_buffer is not None and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.server.send_buffer)
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.stop()
            self.session = None
        self.server._connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self._parse()
        except _BadRequest as exc:
            log.info("bad request from %s: %s", self.peer, exc)
            self._write_response(_Request("", "", {}), _Response(400, "Bad Request"))
            self.close()

    # -----------------------------------------------------------------------------------------------------

    def abort(self) -> None:
        if self.session is not None:
            self.session.stop()
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.session is not None:
            self.session.stop()
        if self.transport is not None:
            self.transport.close()

    def _parse(self) -> None:
        buf = self.buffer
        while buf and self.transport is not None:
            if buf[0] == 0x24:
                # Interleaved data from the client (RTCP receiver reports): skip the frame whole.
                if len(buf) < 4:
                    return
                size = 4 + int.from_bytes(buf[2:4], "big")
                if len(buf) < size:
                    return
                del buf[:size]
                continue
            if buf[0] in (0x0D, 0x0A):
                del buf[:1]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_REQUEST_BYTES:
                    raise _BadRequest("request header too large")
                return
            head = bytes(buf[:end]).decode("utf-8", "replace")
            lines = head.split("\r\n")
            parts = lines[0].split()
            if len(parts) != 3 or not parts[2].startswith("RTSP/"):
                raise _BadRequest(f"bad request line {lines[0]!r}")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise _BadRequest(f"bad header line {line!r}")
                headers[name.strip().lower()] = value.strip()
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError as exc:
                raise _BadRequest("bad Content-Length") from exc
            if length < 0 or length > MAX_REQUEST_BYTES:
                raise _BadRequest("bad Content-Length")
            total = end + 4 + length
            if len(buf) < total:
                return
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            request = _Request(parts[0].upper(), parts[1], headers, body)
            response = self._handle(request)
            self._write_response(request, response)
            if request.method == "PLAY" and response.status == 200 and self.session is not None:
                # Only after the 200 is queued, so the client never sees RTP before the PLAY response.
                self.session.start(self.server.loop)

    def _write_response(self, request: _Request, response: _Response) -> None:
        if self.transport is None:
            return
        lines = [f"RTSP/1.0 {response.status} {response.reason}", f"CSeq: {request.cseq}"]
        lines.append(f"Server: {SERVER_NAME}")
        lines.append(f"Date: {formatdate(usegmt=True)}")
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        if response.body:
            lines.append(f"Content-Length: {len(response.body)}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + response.body)

    # Request handling -------------------------------------------------------------------------------------

    def _handle(self, request: _Request) -> _Response:
        method = request.method
        if method == "OPTIONS":
            # Answered without authentication, as most cameras do: clients probe it before they have a realm.
            return _Response(200, "OK", [("Public", ", ".join(_PUBLIC))])
        if method not in _PUBLIC:
            return _Response(501, "Not Implemented", [("Public", ", ".join(_PUBLIC))])
        challenge = self._check_auth(request)
        if challenge is not None:
            return challenge
        if method == "DESCRIBE":
            return self._describe(request)
        if method == "SETUP":
            return self._setup(request)
        session = self._session_for(request)
        if isinstance(session, _Response):
            return session
        session_header = ("Session", session.id)
        if method == "PLAY":
            if session.mount.paused:
                return _Response(404, "Not Found")
            rtp_info = (
                f"url={self._track_url(request.uri, session.mount)};seq={session.seq};"
                f"rtptime={session.rtp_timestamp(session.frame_index)}"
            )
            return _Response(200, "OK", [session_header, ("Range", "npt=now-"), ("RTP-Info", rtp_info)])
        if method == "PAUSE":
            session.stop()
            return _Response(200, "OK", [session_header])
        if method == "TEARDOWN":
            session.stop()
            self.session = None
            return _Response(200, "OK", [session_header])
        # GET_PARAMETER / SET_PARAMETER: keep-alives; nothing to report or change.
        return _Response(200, "OK", [session_header])

    def _session_for(self, request: _Request) -> _Session | _Response:
        if self.session is None:
            return _Response(455, "Method Not Valid in This State")
        sid = request.headers.get("session", "").split(";")[0].strip()
        if sid != self.session.id:
            return _Response(454, "Session Not Found")
        return self.session

    def _describe(self, request: _Request) -> _Response:
        mount = self.server._find_mount(_uri_path(request.uri))
        if mount is None or mount.paused:
            return _Response(404, "Not Found")
        base = _content_base(request.uri, mount)
        sdp = self._sdp(mount, request)
        return _Response(200, "OK", [("Content-Base", base), ("Content-Type", "application/sdp")], sdp.encode("ascii"))

    def _sdp(self, mount: _Mount, request: _Request) -> str:
        pattern = mount.track.pattern
        host = urlsplit(request.uri).hostname or self.server.host
        return "\r\n".join(
            [
                "v=0",
                f"o=- {self.server._sdp_session_id} 1 IN IP4 {host}",
                f"s=nvr demo camera {mount.name}",
                "c=IN IP4 0.0.0.0",
                "t=0 0",
                "a=control:*",
                f"m=video 0 RTP/AVP {RTP_PAYLOAD_TYPE}",
                f"a=rtpmap:{RTP_PAYLOAD_TYPE} H264/{RTP_CLOCK}",
                f"a=fmtp:{RTP_PAYLOAD_TYPE} packetization-mode=1;profile-level-id={pattern.profile_level_id};"
                f"sprop-parameter-sets={pattern.sprop_parameter_sets}",
                f"a=framerate:{pattern.fps}",
                f"a=x-dimensions:{pattern.width},{pattern.height}",
                "a=recvonly",
                "a=control:trackID=0",
                "",
            ]
        )

    def _setup(self, request: _Request) -> _Response:
        path = _uri_path(request.uri)
        mount = self.server._find_mount(path)
        if mount is None or mount.paused:
            return _Response(404, "Not Found")
        rest = path[len(mount.name) :].strip("/")
        if rest not in ("", "trackID=0"):
            return _Response(404, "Not Found")
        channel = _tcp_channel(request.headers.get("transport", ""))
        if channel is None:
            return _Response(461, "Unsupported Transport")
        if self.session is not None:
            if request.headers.get("session", "").split(";")[0].strip() == self.session.id:
                # One track only: a repeated SETUP on the same session just confirms it.
                if self.session.mount is not mount:
                    return _Response(459, "Aggregate Operation Not Allowed")
            else:
                return _Response(459, "Aggregate Operation Not Allowed")
        else:
            self.session = _Session(self, mount, channel)
        session = self.session
        transport = (
            f"RTP/AVP/TCP;unicast;interleaved={session.rtp_channel}-{session.rtp_channel + 1};"
            f"ssrc={session.ssrc:08X};mode=play"
        )
        return _Response(200, "OK", [("Transport", transport), ("Session", f"{session.id};timeout=60")])

    def _track_url(self, uri: str, mount: _Mount) -> str:
        return _content_base(uri, mount) + "trackID=0"

    # Authentication ---------------------------------------------------------------------------------------

    def _check_auth(self, request: _Request) -> _Response | None:
        server = self.server
        if server.username is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, params = header.partition(" ")
        scheme = scheme.lower()
        if (scheme == "basic" and "basic" in server.auth_methods and self._check_basic(params.strip())) or (
            scheme == "digest" and "digest" in server.auth_methods and self._check_digest(request, params)
        ):
            server.auth_accepted[scheme] += 1
            return None
        if header:
            log.info("rejected credentials from %s", self.peer)
        challenges: list[tuple[str, str]] = []
        # Order matters to some clients (they take the first they support); FFmpeg prefers Digest regardless.
        if "digest" in server.auth_methods:
            challenges.append(
                ("WWW-Authenticate", f'Digest realm="{server.realm}", nonce="{self.nonce}", algorithm=MD5')
            )
        if "basic" in server.auth_methods:
            challenges.append(("WWW-Authenticate", f'Basic realm="{server.realm}"'))
        return _Response(401, "Unauthorized", challenges)

    def _check_basic(self, token: str) -> bool:
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        return bool(sep) and self._credentials_match(user, password)

    def _credentials_match(self, user: str, password: str) -> bool:
        server = self.server
        ok_user = hmac.compare_digest(user.encode(), (server.username or "").encode())
        ok_pass = hmac.compare_digest(password.encode(), (server.password or "").encode())
        return ok_user and ok_pass

    def _check_digest(self, request: _Request, params: str) -> bool:
        server = self.server
        fields = {
            m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in _AUTH_PARAM.finditer(params)
        }
        if fields.get("nonce") != self.nonce or fields.get("realm") != server.realm:
            return False
        if not hmac.compare_digest(fields.get("username", "").encode(), (server.username or "").encode()):
            return False
        if fields.get("algorithm", "MD5").upper() != "MD5":
            return False
        ha1 = _md5(f"{server.username}:{server.realm}:{server.password}")
        ha2 = _md5(f"{request.method}:{fields.get('uri', '')}")
        qop = fields.get("qop")
        if qop:
            expected = _md5(f"{ha1}:{self.nonce}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:{qop}:{ha2}")
        else:
            expected = _md5(f"{ha1}:{self.nonce}:{ha2}")
        return hmac.compare_digest(expected.encode(), fields.get("response", "").lower().encode())


_PUBLIC = ("OPTIONS", "DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER")


class _BadRequest(Exception):
    pass


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _uri_path(uri: str) -> str:
    """Path of a request URI without slashes at either end; '*' and bare paths are accepted too."""
    path = urlsplit(uri).path if "://" in uri else uri.split("?")[0]
    return path.strip("/")


def _content_base(uri: str, mount: _Mount) -> str:
    parts = urlsplit(uri)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or 'rtsp'}://{host}{port}/{mount.name}/"


def _tcp_channel(header: str) -> int | None:
    """The RTP channel of the first TCP-interleaved alternative in a Transport header, or None if there is none."""
    for spec in header.split(","):
        fields = [f.strip() for f in spec.split(";")]
        if not fields or fields[0].upper() != "RTP/AVP/TCP":
            continue
        for item in fields[1:]:
            name, _, value = item.partition("=")
            if name.lower() == "interleaved":
                first = value.split("-")[0]
                if first.isdigit() and int(first) <= 254 and int(first) % 2 == 0:
                    return int(first)
                return None
        return 0
    return None


class DemoRtspServer:
    """Simulated cameras on one port: ``rtsp://host:port/<mount>`` plays ``mounts[mount]`` in a loop.

    Runs its own asyncio loop in a daemon thread so it can sit beside synchronous code (tests, the recorder,
    the CLI). Public methods are thread-safe. It can be stopped and started again on the same port, which to a
    client looks like a camera rebooting.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        mounts: dict[str, Pattern] | None = None,
        username: str | None = None,
        password: str | None = None,
        auth_methods: tuple[str, ...] = ("digest", "basic"),
        realm: str = "nvr-demo",
        max_client_buffer: int = MAX_CLIENT_BUFFER,
        send_buffer: int | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        methods = tuple(m.lower() for m in auth_methods)
        if not methods or any(m not in ("digest", "basic") for m in methods):
            raise ValueError(f"auth_methods must be 'digest' and/or 'basic', got {auth_methods!r}")
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.auth_methods = methods
        self.realm = realm
        self.max_client_buffer = max_client_buffer
        self.send_buffer = send_buffer
        """SO_SNDBUF for client sockets; None keeps the kernel's autotuning (which can hide a slow reader for
        several MB, so tests of the backpressure path set it small)."""
        self.auth_accepted: Counter[str] = Counter()
        """Requests let through per scheme ('basic'/'digest'): shows which one a client actually used."""
        self.dropped_slow_clients = 0
        tracks: dict[int, _Track] = {}
        self._mounts: dict[str, _Mount] = {}
        for name, pattern in (mounts or {}).items():
            clean = name.strip("/")
            if not clean or any(c in clean for c in " ?#"):
                raise ValueError(f"bad mount name {name!r}")
            # Mounts sharing one Pattern share its packetized frames: 64 cameras cost one copy in memory.
            track = tracks.get(id(pattern))
            if track is None:
                track = tracks[id(pattern)] = _Track.build(pattern)
            self._mounts[clean] = _Mount(clean, track, 0.0)
        self._sdp_session_id = secrets.randbits(32)
        self._connections: set[_RtspConnection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # Lifecycle --------------------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("server is not running")
        return self._loop

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> DemoRtspServer:
        """Listen and serve in a background thread; returns once the socket is bound (``.port`` is then set)."""
        if self._thread is not None:
            raise RuntimeError("server already running")
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(lambda: _RtspConnection(self), self.host, self.port, reuse_address=True)
                )
            except BaseException as exc:
                ready.set_exception(exc)
                loop.close()
                return
            sockets = self._server.sockets
            self.port = sockets[0].getsockname()[1]
            now = loop.time()
            for mount in self._mounts.values():
                mount.epoch = now
            ready.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="demo-rtsp", daemon=True)
        self._thread.start()
        try:
            ready.result(timeout=10)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            self._loop = None
            raise
        log.info("demo RTSP server listening on %s:%d with %d mounts", self.host, self.port, len(self._mounts))
        return self

    def stop(self) -> None:
        """Close the listener and every client connection, then join the thread. Safe to call twice."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._connections):
                conn.abort()
            if self._server is not None:
                await self._server.wait_closed()
            # Let aborted transports run their connection_lost callbacks before the loop stops.
            await asyncio.sleep(0)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None
        self._server = None
        self._connections.clear()

    def __enter__(self) -> DemoRtspServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # Addressing -------------------------------------------------------------------------------------------

    @property
    def mounts(self) -> list[str]:
        return list(self._mounts)

    def url(self, mount: str, with_credentials: bool = True) -> str:
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        auth = ""
        if with_credentials and self.username is not None:
            auth = f"{quote(self.username, safe='')}:{quote(self.password or '', safe='')}@"
        return f"rtsp://{auth}{host}:{self.port}/{mount.strip('/')}"

    # Fault injection and introspection --------------------------------------------------------------------

    def drop_clients(self, mount: str | None = None) -> int:
        """Abort client connections (of one mount, or all): to a client this is a camera reboot."""

        def drop() -> int:
            victims = [
                c
                for c in self._connections
                if mount is None or (c.session is not None and c.session.mount.name == mount.strip("/"))
            ]
            for conn in victims:
                conn.abort()
            return len(victims)

        return self._call(drop) if self.running else 0

    def pause_mount(self, mount: str) -> None:
        """Take one camera offline: its clients are dropped and new requests get 404 until resume_mount."""
        target = self._mount(mount)
        target.paused = True
        self.drop_clients(target.name)

    def resume_mount(self, mount: str) -> None:
        self._mount(mount).paused = False

    def stall(self, seconds: float) -> None:
        """Freeze the whole server for ``seconds`` (returns at once): a camera starved of CPU or a network stall.

        Afterwards each session either catches up with a short burst (lag up to MAX_LAG_SECONDS) or, beyond
        that, resumes from where it was without replaying the backlog.
        """
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def session_count(self, mount: str | None = None) -> int:
        """Sessions currently streaming (all mounts, or one)."""

        def count() -> int:
            return sum(
                1
                for c in self._connections
                if c.session is not None
                and c.session.playing
                and (mount is None or c.session.mount.name == mount.strip("/"))
            )

        return self._call(count) if self.running else 0

    def frames_sent(self, mount: str) -> int:
        """Video frames sent to the sessions now open on one mount: what a recorder there has been given."""

        def count() -> int:
            return sum(
                c.session.frame_index
                for c in self._connections
                if c.session is not None and c.session.mount.name == mount.strip("/")
            )

        return self._call(count) if self.running else 0

    def _mount(self, name: str) -> _Mount:
        try:
            return self._mounts[name.strip("/")]
        except KeyError:
            raise KeyError(f"no such mount: {name!r}") from None

    def _find_mount(self, path: str) -> _Mount | None:
        # Longest match first so 'a/b' wins over 'a' for 'a/b/trackID=0'.
        for name in sorted(self._mounts, key=len, reverse=True):
            if path == name or path.startswith(name + "/"):
                return self._mounts[name]
        return None

    def _call(self, fn: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None:
            raise RuntimeError("server is not running")
        if threading.current_thread() is self._thread:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)

    def sessions(self) -> list[tuple[str, str]]:
        """(mount, client address) of every set-up session: a snapshot for logs and status output."""
        if not self.running:
            return []
        return self._call(lambda: [(c.session.mount.name, c.peer) for c in self._connections if c.session is not None])
