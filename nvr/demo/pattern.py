"""A generated H.264 test pattern, encoded once and replayed forever by the demo RTSP server.

Encoding is the expensive part of a simulated camera, so it happens once per parameter set (and is cached on
disk): the server only loops over the stored access units. To make that loop seamless the pattern is a whole
number of closed GOPs that all start with an IDR preceded by SPS/PPS, so jumping from the last frame back to the
first (or starting a client on any GOP boundary) is always a valid H.264 stream.

Pixels are built with ``bytes`` operations rather than numpy, which the project does not depend on. A band of
random noise at the bottom keeps the encoder busy up to the requested bitrate: without it a synthetic picture
compresses to almost nothing and a "3 Mbit/s camera" would load the recorder like a 100 kbit/s one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

log = logging.getLogger(__name__)

# Bump when the picture or the encoder settings change, so stale caches are not reused.
PATTERN_VERSION = 1
_CACHE_MAGIC = b"NVRDEMO1"
_START_CODE = b"\x00\x00\x00\x01"

NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8


@dataclass(frozen=True)
class Pattern:
    """A looping H.264 stream: ``access_units[i]`` holds frame i's NAL units (no start codes)."""

    width: int
    height: int
    fps: int
    gop: int
    """Frames per GOP; every ``gop``-th frame (from 0) is an IDR carrying SPS and PPS in-band."""
    access_units: tuple[tuple[bytes, ...], ...]
    keyframes: tuple[bool, ...]
    sps: bytes
    pps: bytes

    @property
    def frame_count(self) -> int:
        return len(self.access_units)

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps

    @property
    def profile_level_id(self) -> str:
        """SDP ``profile-level-id``: profile_idc, constraint flags and level_idc straight from the SPS."""
        return self.sps[1:4].hex()

    @property
    def sprop_parameter_sets(self) -> str:
        return ",".join(base64.b64encode(nal).decode("ascii") for nal in (self.sps, self.pps))

    @property
    def total_bytes(self) -> int:
        return sum(len(nal) for au in self.access_units for nal in au)

    @property
    def bitrate(self) -> float:
        """Measured average bits per second of the encoded loop (what the encoder actually achieved)."""
        return self.total_bytes * 8 / self.duration

    def annexb(self, index: int) -> bytes:
        """Frame ``index`` as an annex-B byte stream, as a decoder or a raw ``.h264`` file expects it."""
        return b"".join(_START_CODE + nal for nal in self.access_units[index])


def default_cache_dir() -> Path:
    """Where encoded patterns are kept between runs: the user's cache directory (XDG), not the archive."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nvr" / "demo"


def split_annexb(data: bytes) -> list[bytes]:
    """Split an annex-B byte stream into NAL units, tolerating 3- and 4-byte start codes."""
    nals: list[bytes] = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        nxt = data.find(b"\x00\x00\x01", start)
        end = len(data) if nxt < 0 else nxt
        # A 4-byte start code leaves one zero byte at the tail of the previous unit; trailing zeros are
        # never part of a NAL unit (rbsp_trailing_bits end in a 1 bit), so strip them.
        nal = data[start:end].rstrip(b"\x00") if nxt >= 0 else data[start:end]
        if nal:
            nals.append(nal)
        i = nxt
    return nals


def encode_pattern(
    width: int = 640,
    height: int = 360,
    fps: int = 25,
    gop_seconds: float = 2,
    seconds: float = 10,
    bitrate: int = 800_000,
    cache_dir: Path | None = None,
) -> Pattern:
    """Encode (or load from ``cache_dir``) a moving test pattern; the loop is rounded up to whole GOPs."""
    if width % 2 or height % 2 or width < 32 or height < 32:
        raise ValueError(f"size must be even and at least 32x32, got {width}x{height}")
    if fps <= 0 or gop_seconds <= 0 or seconds <= 0 or bitrate <= 0:
        raise ValueError("fps, gop_seconds, seconds and bitrate must be positive")
    gop = max(1, round(fps * gop_seconds))
    frames = max(1, -(-round(fps * seconds) // gop)) * gop
    params = {
        "version": PATTERN_VERSION,
        "width": width,
        "height": height,
        "fps": fps,
        "gop": gop,
        "frames": frames,
        "bitrate": bitrate,
    }
    cache_file: Path | None = None
    if cache_dir is not None:
        key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        cache_file = Path(cache_dir) / f"demo-pattern-{width}x{height}-{fps}fps-{bitrate}-{key}.h264bin"
        cached = _load_cache(cache_file, params)
        if cached is not None:
            return cached
    started = time.monotonic()
    aus = _encode(width, height, fps, gop, frames, bitrate)
    pattern = _build(width, height, fps, gop, aus)
    log.info(
        "encoded demo pattern %dx%d@%d, %d frames, %.0f kbit/s in %.1f s",
        width,
        height,
        fps,
        frames,
        pattern.bitrate / 1000,
        time.monotonic() - started,
    )
    if cache_file is not None:
        _store_cache(cache_file, params, pattern)
    return pattern


def _encode(width: int, height: int, fps: int, gop: int, frames: int, bitrate: int) -> list[list[bytes]]:
    ctx = av.CodecContext.create("libx264", "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = "yuv420p"
    ctx.framerate = Fraction(fps)
    ctx.time_base = Fraction(1, fps)
    ctx.bit_rate = bitrate
    ctx.gop_size = gop
    kbit = max(1, bitrate // 1000)
    # No B-frames (cameras rarely use them and the RTP timestamps stay monotonic), a fixed GOP with no scene-cut
    # keyframes (a whole number of GOPs per loop), SPS/PPS before every IDR (clients may start at any GOP), and
    # a VBV cap so the bitrate is a camera-like ceiling rather than a long-term average.
    ctx.options = {
        "preset": "veryfast",
        "x264-params": (
            f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:open-gop=0:repeat-headers=1"
            f":vbv-maxrate={kbit}:vbv-bufsize={kbit}"
        ),
    }
    painter = _Painter(width, height, frames)
    aus: list[list[bytes]] = []

    def collect(packets: list[av.Packet]) -> None:
        for packet in packets:
            # Drop SEI: x264 writes its settings banner into frame 0 only, which would make the first access
            # unit of the loop unlike all the others.
            aus.append([nal for nal in split_annexb(bytes(packet)) if nal[0] & 0x1F != NAL_SEI])

    for index in range(frames):
        frame = painter.frame(index)
        frame.pts = index
        collect(ctx.encode(frame))
    collect(ctx.encode(None))
    if len(aus) != frames:
        raise RuntimeError(f"encoder returned {len(aus)} access units for {frames} frames")
    return aus


def _build(width: int, height: int, fps: int, gop: int, aus: list[list[bytes]]) -> Pattern:
    keyframes = tuple(any(nal[0] & 0x1F == NAL_IDR for nal in au) for au in aus)
    for index, key in enumerate(keyframes):
        if key != (index % gop == 0):
            raise RuntimeError(f"frame {index}: keyframe={key}, expected a fixed GOP of {gop}")
    first = aus[0]
    sps = next((nal for nal in first if nal[0] & 0x1F == NAL_SPS), None)
    pps = next((nal for nal in first if nal[0] & 0x1F == NAL_PPS), None)
    if sps is None or pps is None:
        raise RuntimeError("the first access unit carries no SPS/PPS (repeat-headers not honoured?)")
    return Pattern(
        width=width,
        height=height,
        fps=fps,
        gop=gop,
        access_units=tuple(tuple(au) for au in aus),
        keyframes=keyframes,
        sps=sps,
        pps=pps,
    )


class _Painter:
    """Draws frame ``i`` of the loop into a yuv420p ``av.VideoFrame`` from prebuilt rows of bytes.

    Layout (luma): a horizontal grey ramp; colour bars in the top quarter (chroma only); a white box sweeping
    left to right once per loop while bobbing up and down; a row of 16 black/white cells spelling the frame
    index in binary (so any two frames of the loop differ); random noise in the bottom eighth.
    """

    def __init__(self, width: int, height: int, frames: int) -> None:
        self.width = width
        self.height = height
        self.frames = frames
        probe = av.VideoFrame(width, height, "yuv420p")
        self.strides = [plane.line_size for plane in probe.planes]
        ramp = bytes(40 + (x * 160) // max(1, width - 1) for x in range(width))
        self.ramp = ramp
        self.box = max(8, (min(width, height) // 5) & ~1)
        self.cell = max(2, (width // 20) & ~1)
        self.counter_top = (height // 16) & ~1
        self.noise_top = (height - height // 8) & ~1
        # Mapping random bytes into a narrow mid-grey range: full-range noise would just burn bits on contrast.
        self.noise_table = bytes(96 + (b % 64) for b in range(256))
        cw, ch = width // 2, height // 2
        bars = [(90, 240), (54, 34), (240, 110), (16, 146), (202, 222), (166, 16)]
        bar_w = max(1, -(-cw // len(bars)))
        self.u_bars = bytes(bars[min(x // bar_w, len(bars) - 1)][0] for x in range(cw))
        self.v_bars = bytes(bars[min(x // bar_w, len(bars) - 1)][1] for x in range(cw))
        self.neutral = bytes([128]) * cw
        self.bar_rows = ch // 4

    def _pad(self, row: bytes, stride: int) -> bytes:
        return row if len(row) == stride else row + bytes(stride - len(row))

    def frame(self, index: int) -> av.VideoFrame:
        w, h = self.width, self.height
        box = self.box
        phase = index / self.frames
        box_x = (int(phase * (w - box)) // 2) * 2
        # Triangle wave: the box bobs twice per loop and is back where it started at the loop boundary.
        tri = 1 - abs((phase * 4) % 2 - 1)
        box_y = (
            int(self.counter_top + self.cell + 4 + tri * (self.noise_top - box - self.counter_top - self.cell - 8)) // 2
        ) * 2
        ramp_row = self._pad(self.ramp, self.strides[0])
        box_row = self._pad(self.ramp[:box_x] + b"\xeb" * box + self.ramp[box_x + box :], self.strides[0])
        cells = bytearray(self.ramp)
        for bit in range(16):
            x0 = bit * self.cell + self.cell // 2
            if x0 + self.cell > w:
                break
            value = 235 if (index >> (15 - bit)) & 1 else 16
            cells[x0 : x0 + self.cell - 1] = bytes([value]) * (self.cell - 1)
        counter_row = self._pad(bytes(cells), self.strides[0])
        rows: list[bytes] = []
        for y in range(self.noise_top):
            if box_y <= y < box_y + box:
                rows.append(box_row)
            elif self.counter_top <= y < self.counter_top + self.cell:
                rows.append(counter_row)
            else:
                rows.append(ramp_row)
        noise = os.urandom(w * (h - self.noise_top)).translate(self.noise_table)
        if self.strides[0] == w:
            rows.append(noise)
        else:
            rows.extend(self._pad(noise[i : i + w], self.strides[0]) for i in range(0, len(noise), w))
        frame = av.VideoFrame(w, h, "yuv420p")
        frame.planes[0].update(b"".join(rows))
        frame.planes[1].update(self._chroma(self.u_bars, self.strides[1], box_x, box_y, 84))
        frame.planes[2].update(self._chroma(self.v_bars, self.strides[2], box_x, box_y, 255 - (index * 7) % 128))
        return frame

    def _chroma(self, bars: bytes, stride: int, box_x: int, box_y: int, box_value: int) -> bytes:
        ch = self.height // 2
        cbox = self.box // 2
        bar_row = self._pad(bars, stride)
        plain = self._pad(self.neutral, stride)
        cx = box_x // 2
        tinted = self._pad(self.neutral[:cx] + bytes([box_value]) * cbox + self.neutral[cx + cbox :], stride)
        rows = []
        for y in range(ch):
            if box_y // 2 <= y < box_y // 2 + cbox:
                rows.append(tinted)
            elif y < self.bar_rows:
                rows.append(bar_row)
            else:
                rows.append(plain)
        return b"".join(rows)


def _load_cache(path: Path, params: dict[str, int]) -> Pattern | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read pattern cache %s: %s", path, exc)
        return None
    try:
        if not data.startswith(_CACHE_MAGIC):
            raise ValueError("bad magic")
        pos = len(_CACHE_MAGIC)
        (header_len,) = struct.unpack_from(">I", data, pos)
        pos += 4
        header = json.loads(data[pos : pos + header_len])
        pos += header_len
        if header.get("params") != params:
            raise ValueError("parameters differ")
        aus: list[list[bytes]] = []
        for _ in range(params["frames"]):
            (size,) = struct.unpack_from(">I", data, pos)
            pos += 4
            if pos + size > len(data):
                raise ValueError("truncated")
            aus.append(split_annexb(data[pos : pos + size]))
            pos += size
        if pos != len(data):
            raise ValueError("trailing data")
        return _build(params["width"], params["height"], params["fps"], params["gop"], aus)
    except (ValueError, RuntimeError, struct.error, IndexError) as exc:
        # A corrupt or foreign cache only costs a re-encode; never let it stop the demo.
        log.warning("ignoring pattern cache %s: %s", path, exc)
        return None


def _store_cache(path: Path, params: dict[str, int], pattern: Pattern) -> None:
    header = json.dumps({"params": params}, sort_keys=True).encode()
    parts = [_CACHE_MAGIC, struct.pack(">I", len(header)), header]
    for index in range(pattern.frame_count):
        au = pattern.annexb(index)
        parts.append(struct.pack(">I", len(au)))
        parts.append(au)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file in the same directory + rename: a concurrent reader (another process starting the demo)
        # sees either no cache or a complete one, never a torn write.
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"".join(parts))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning("cannot write pattern cache %s: %s", path, exc)
