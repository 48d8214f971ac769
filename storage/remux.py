"""The export bundle's convenience copy: a plain MP4 of exactly one wall-clock window, remuxed, never re-encoded.

Any player opens the result: it is a normal (non-fragmented) MP4 with ``moov`` before ``mdat`` (FFmpeg's
``faststart``), made by stream copy from the same spliced stream playback serves (``storage.reader``), so every
payload byte is the recorded one.

Pipeline, one pass over the footage: ``plan_playback`` → ``iter_playback`` chunks → a read-only file-like object
→ PyAV's mp4 demuxer → timestamps shifted → PyAV's mp4 muxer → ``<name>.partial`` → renamed into place, then
hashed (unless the caller hashes it itself, as the export bundle does while copying it). Nothing is decoded; per
packet there is one shift, one comparison and one ``mux_one``.

``moov`` before ``mdat`` without a second pass: the muxer first reserves room for the index at the front of the
file (FFmpeg's ``moov_size``, :data:`MOOV_RESERVE_PER_SECOND` bytes per second of footage, far more than the ~110
bytes a second a 25 fps camera needs) and writes the ``moov`` there at the end, the rest of the room becoming a
``free`` box. ``faststart`` would instead move every media byte once more (the whole file read and rewritten, a
fifth of the remux's time for an hour of footage). Should the index not fit (a stream with far more packets a
second) or FFmpeg fail otherwise, the file is made once more with ``faststart``.

Exact window without re-encoding (what ``ffmpeg -ss T -i in -c copy out.mp4`` does): the stream must begin with
the keyframe at or before ``start_us`` (the plan's ``first_us``). Every packet's pts and dts are moved back by
``start_us - first_us`` plus the keyframe's own presentation time (non-zero with B-frames), so the window start
is t = 0 and the frames decoded only to reach it get negative
presentation times. For negative start times FFmpeg's mov muxer writes an edit list (``elst``: media time = the
shift, duration = the rest of the track), and players decode the lead-in frames without showing them: FFmpeg's
demuxer marks them discarded and the first frame shown is at 0, which is the first frame at or after
``start_us`` (a player honouring the edit list to the tick, such as QuickTime, shows the frame on screen at
``start_us``). At the other end every packet whose presentation time is at or after ``end_us`` is dropped; with
B-frames, a dropped frame that a later kept frame refers to is kept after all (decode order is preserved: a
packet at or after the end is held back until the stream shows whether a frame before the end still follows).

Wall clock versus media time: the splice collapses gaps between segments; ``PlaybackPlan.gaps`` says where, so
``end_us`` is converted to media time piecewise (an end inside a gap ends at the footage before it). The file's
``first_us``/``end_us`` are the wall-clock times its playable timeline covers: the window clamped to the footage.

Several files: when the plan is truncated at a segment whose init section is incompatible (new resolution or
codec parameters), the next file continues from there with a new plan: ``<stem>.mp4``, ``<stem>-part2.mp4``, ….

Failures: ``NvrError(NOT_FOUND, "no_footage")`` when nothing overlaps the window, ``FAILED_PRECONDITION
"export_cancelled"`` when ``cancelled()`` turns true (checked every few hundred packets), ``DATA_LOSS
"segment_damaged"`` from the reader, ``DATA_LOSS "remux_failed"`` when FFmpeg rejects the stream,
``UNAVAILABLE "export_write_failed"`` when the output cannot be written. On any failure every file this call
created (finished parts included) is removed. Durability (fsync) is left to the caller assembling the bundle.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av

from integrity.hashing import sha256_file
from nvr.errors import Kind, NvrError
from storage.reader import PlaybackPlan, SegmentRef, iter_playback, plan_playback
from storage.writer import rename_noreplace

__all__ = ["ConvenienceFile", "convenience_mp4"]

CHUNK = 1 << 20  # bytes per read from the splice, and FFmpeg's input buffer size
MOOV_RESERVE_BASE = 64 << 10
MOOV_RESERVE_PER_SECOND = 1600  # room for ~100 packets a second at 16 bytes of index each (see the docstring)
CANCEL_EVERY = 256  # packets between two calls of cancelled()
PARTIAL_SUFFIX = ".partial"
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM}


@dataclass(frozen=True)
class ConvenienceFile:
    path: Path
    first_us: int  # wall-clock footage time at t = 0 of the file's playable timeline
    end_us: int  # wall-clock footage time where it ends
    bytes: int
    sha256: str | None  # None when convenience_mp4 was asked not to hash (hashed=False)


class _SpliceReader:
    """The spliced stream as a forward-only file for FFmpeg. No ``seek``: the demuxer reads it front to back
    (moov, then every moof + mdat) and never looks for a trailing index."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._chunk = memoryview(b"")
        self.consumed = 0
        self.error: BaseException | None = None

    def read(self, n: int) -> bytes:
        if not self._chunk:
            try:
                chunk = next(self._chunks, b"")
            except BaseException as exc:  # kept, in case FFmpeg turned it into an end of file
                self.error = exc
                raise
            if len(chunk) <= n:  # the usual case (chunk size = FFmpeg's buffer size): hand it over, no copy
                self.consumed += len(chunk)
                return chunk
            self._chunk = memoryview(chunk)
        out = self._chunk[:n]
        self._chunk = self._chunk[len(out) :]
        self.consumed += len(out)
        return bytes(out)


def _media_us(plan: PlaybackPlan, wall_us: int) -> int:
    """Position of a wall-clock time in the plan's media timeline (0 = ``plan.first_us``), gaps collapsed."""
    media = wall_us - plan.first_us
    for gap in plan.gaps:
        if wall_us >= gap.end_us:
            media = gap.media_offset_us + (wall_us - gap.end_us)
        elif wall_us >= gap.start_us:
            media = gap.media_offset_us
    return media


def _ticks(seconds: Fraction, time_base: Fraction, ceil: bool = False) -> int:
    ticks = seconds / time_base
    return math.ceil(ticks) if ceil else round(ticks)


class _Cut:
    """Shifts and clips the packets of one output file, in the demuxer's (decode) order.

    Media time 0 of the splice is the presentation time of its first keyframe (with B-frames the first pts is a
    few frames after the first dts), so the shift is only known at the first video packet; packets of other
    tracks that come before it wait for it.
    """

    def __init__(
        self,
        out: av.container.OutputContainer,
        outs: dict[int, av.stream.Stream],
        in_time_bases: dict[int, Fraction],
        video: int,
        window: tuple[int, int],
    ) -> None:
        self.out, self.outs, self.in_tb, self.video = out, outs, in_time_bases, video
        self.shift_us, self.end_media_us = window
        self.early: list[av.Packet] | None = []  # until the first video packet
        self.shift: dict[int, int] = {}
        self.end: dict[int, int] = {}
        self.held: dict[int, list[av.Packet]] = {i: [] for i in outs}  # at/after the end, maybe still referenced
        self.done: set[int] = set()

    def feed(self, pkt: av.Packet) -> None:
        if self.early is not None:
            if pkt.stream_index != self.video:
                self.early.append(pkt)
                return
            first_pts = pkt.pts if pkt.pts is not None else pkt.dts
            assert first_pts is not None  # _remux feeds only packets whose dts is set
            self._start(first_pts)
            early, self.early = self.early, None
            for p in early:
                self._cut(p)
        self._cut(pkt)

    def finish(self) -> None:
        if self.early:  # no video packet at all: nothing to align to
            raise NvrError(Kind.DATA_LOSS, "remux_failed", "the spliced footage holds no video packet")

    def _start(self, first_pts: int) -> None:
        origin = first_pts * self.in_tb[self.video]  # seconds: where the splice's picture starts
        for index in self.outs:
            tb = self.in_tb[index]
            self.shift[index] = _ticks(origin + Fraction(self.shift_us, 1_000_000), tb)
            self.end[index] = _ticks(origin + Fraction(self.end_media_us, 1_000_000), tb, ceil=True)  # pts < end

    def _cut(self, pkt: av.Packet) -> None:
        index = pkt.stream_index
        if index in self.done:
            return
        pts = pkt.dts if pkt.pts is None else pkt.pts
        assert pts is not None  # _remux feeds only packets whose dts is set
        if pts >= self.end[index]:
            if pkt.is_keyframe:  # nothing after a keyframe refers back past it
                self.done.add(index)
                self.held[index].clear()
            else:
                self.held[index].append(pkt)
            return
        waiting = self.held[index]
        if waiting:  # a frame before the end follows frames after it: they are its references (B-frames)
            self.held[index] = []
            waiting.append(pkt)
        else:
            waiting = [pkt]
        delta = self.shift[index]
        stream = self.outs[index]
        for p in waiting:
            if delta:
                assert p.dts is not None  # every packet here came through feed(), which gets only packets with a dts
                p.dts -= delta
                if p.pts is not None:
                    p.pts -= delta
            p.stream = stream
            self.out.mux_one(p)


def _moov_options(plan: PlaybackPlan, reserve: bool) -> dict[str, str]:
    if not reserve:
        return {"movflags": "faststart"}
    seconds = math.ceil(plan.media_duration_us / 1_000_000) + 1
    return {"moov_size": str(MOOV_RESERVE_BASE + MOOV_RESERVE_PER_SECOND * seconds)}


def _remux(
    plan: PlaybackPlan,
    partial: Path,
    shift_us: int,
    end_media_us: int,
    cancelled: Callable[[], bool] | None,
    reserve: bool = True,
) -> None:
    reader = _SpliceReader(iter_playback(plan, CHUNK))
    options = _moov_options(plan, reserve)
    try:
        with (
            av.open(reader, "r", format="mp4", buffer_size=CHUNK) as inp,
            av.open(f"file:{partial.absolute()}", "w", format="mp4", options=options) as out,
        ):
            outs: dict[int, av.stream.Stream] = {}
            for s in inp.streams:
                if s.type in ("video", "audio"):
                    o = out.add_stream_from_template(s)
                    if s.codec_context.name == "hevc":
                        o.codec_tag = "hvc1"  # parameter sets in the sample entry, as the recorder writes them
                    outs[s.index] = o
            if not inp.streams.video:
                raise NvrError(Kind.DATA_LOSS, "remux_failed", "the spliced footage has no video track")
            # PyAV types Stream.time_base as optional; a demuxed MP4 track always has one (its timescale).
            time_bases = cast(dict[int, Fraction], {s.index: s.time_base for s in inp.streams})
            cut = _Cut(out, outs, time_bases, inp.streams.video[0].index, (shift_us, end_media_us))
            for n, pkt in enumerate(inp.demux(), 1):
                if cancelled is not None and n % CANCEL_EVERY == 0 and cancelled():
                    raise NvrError(Kind.FAILED_PRECONDITION, "export_cancelled", "the export was cancelled")
                if pkt.dts is not None and pkt.stream_index in outs:
                    cut.feed(pkt)
            cut.finish()
            if cancelled is not None and cancelled():
                raise NvrError(Kind.FAILED_PRECONDITION, "export_cancelled", "the export was cancelled")
    except av.FFmpegError as exc:
        if reader.error is not None:
            raise reader.error from None
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise NvrError(Kind.UNAVAILABLE, "export_write_failed", f"the output cannot be written: {exc}") from None
        raise NvrError(Kind.DATA_LOSS, "remux_failed", f"FFmpeg could not remux the footage: {exc}") from None
    if reader.error is not None:
        raise reader.error
    if reader.consumed != plan.total_bytes:
        raise NvrError(
            Kind.DATA_LOSS,
            "remux_failed",
            f"the demuxer stopped after {reader.consumed} of {plan.total_bytes} bytes of the spliced footage",
        )


def _write_one(
    plan: PlaybackPlan, start_us: int, end_us: int, final: Path, cancelled: Callable[[], bool] | None, hashed: bool
) -> ConvenienceFile:
    first_us = max(start_us, plan.first_us)
    last_us = min(end_us, plan.end_us)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    window = (first_us - plan.first_us, _media_us(plan, last_us))
    try:
        try:
            _remux(plan, partial, *window, cancelled)
        except NvrError as exc:
            if exc.code != "remux_failed":
                raise
            partial.unlink(missing_ok=True)  # the index did not fit the room reserved for it (or FFmpeg failed)
            _remux(plan, partial, *window, cancelled, reserve=False)
        rename_noreplace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    try:
        digest = sha256_file(final) if hashed else None
        return ConvenienceFile(final, first_us, last_us, final.stat().st_size, digest)
    except BaseException:
        final.unlink(missing_ok=True)
        raise


def convenience_mp4(
    refs: list[SegmentRef],
    start_us: int,
    end_us: int,
    out_dir: Path,
    stem: str,
    cancelled: Callable[[], bool] | None = None,
    hashed: bool = True,
) -> list[ConvenienceFile]:
    """Write the window [start_us, end_us) of ``refs`` (one camera's segment rows) as playable MP4 files.

    One file per run of compatible init sections, in time order: ``<stem>.mp4``, then ``<stem>-part2.mp4``, ….
    An existing file of the same name is never replaced (``CONFLICT "export_file_exists"``). See the module docstring.
    ``hashed=False`` leaves ``sha256`` None, for a caller that hashes the files as it reads them anyway.
    """
    if not stem or "/" in stem or os.sep in stem or stem in (".", ".."):
        raise NvrError(Kind.INVALID_ARGUMENT, "bad_stem", f"{stem!r} is not a plain file name stem")
    if end_us <= start_us:
        raise NvrError(Kind.INVALID_ARGUMENT, "bad_window", f"window end {end_us} is not after its start {start_us}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[ConvenienceFile] = []
    cursor = start_us
    try:
        while cursor < end_us:
            if cancelled is not None and cancelled():
                raise NvrError(Kind.FAILED_PRECONDITION, "export_cancelled", "the export was cancelled")
            try:
                plan = plan_playback(refs, cursor, end_us)
            except NvrError as exc:
                if written and exc.code == "no_footage":
                    break
                raise
            name = f"{stem}.mp4" if not written else f"{stem}-part{len(written) + 1}.mp4"
            final = out_dir / name
            if final.exists():
                raise NvrError(Kind.CONFLICT, "export_file_exists", f"{final} exists already; it is not replaced")
            written.append(_write_one(plan, cursor, end_us, final, cancelled, hashed))
            if plan.truncated_at_us is None:
                break
            cursor = plan.truncated_at_us
    except BaseException as exc:
        for done in written:  # _write_one already removed what it was writing
            done.path.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError):  # the name was taken while this file was written
            raise NvrError(Kind.CONFLICT, "export_file_exists", str(exc)) from None
        if isinstance(exc, OSError):
            raise NvrError(Kind.UNAVAILABLE, "export_write_failed", f"the output cannot be written: {exc}") from None
        raise
    return written
