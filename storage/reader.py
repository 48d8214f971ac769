"""Playback: splice the fragments of several segment files into one progressive fragmented MP4.

A browser ``<video>`` element or ffplay plays the result directly (no MSE): one init section (``ftyp`` +
``moov``, copied from the first segment used), then the ``moof`` + ``mdat`` pairs of every segment that covers
the requested window, in wall-clock order. Only headers are read to plan; ``mdat`` payloads are streamed through
untouched, in bounded chunks, and never re-encoded.

What is rewritten, in place (every ``moof`` keeps its size, so the moof-relative ``trun`` data offsets that
``default_base_moof`` produces stay valid):

* ``mfhd`` sequence numbers become 1, 2, 3, … over the whole stream.
* ``tfdt`` base media decode times are shifted per track and per segment so each track's decode timeline is
  continuous: within a segment the file's own decode-time differences are kept exactly; at a segment boundary a
  track resumes where its previous fragment ended (last ``tfdt`` + the fragment's sample durations, taken from
  ``trun``, else the ``tfhd`` default, else the ``trex`` default). A track that is missing from the start of a
  segment (or of the stream) starts at the video's position at its first fragment, never before the track's
  previous end, so it cannot drift ahead of the picture. Because every track runs on its own sample durations,
  audio stays with the video it was recorded with: over touching segments the per-boundary differences cancel
  out; each collapsed gap can shift audio against video by at most about one audio frame (~21 ms for AAC).
  A 32-bit (version 0) ``tfdt`` whose new value would not fit raises
  ``NvrError(FAILED_PRECONDITION, "tfdt_overflow")`` while planning instead of wrapping around.
* Anything else after the init section of each file (a trailing ``mfra`` index, ``free``, ``sidx``…) is not
  copied: its offsets would describe the source file, not the stream.

Window: the stream starts at the fragment (a GOP, beginning with a keyframe) containing ``start_us``, or at the
first fragment after it when ``start_us`` falls before any footage, and ends after the fragment containing
``end_us`` (the end is exclusive: a fragment starting exactly at ``end_us`` is not sent). A fragment's wall time
is its segment's ``start_us`` plus its video ``tfdt`` minus the file's first video ``tfdt``, converted from the
video timescale; the last fragment of a file ends at the segment's ``end_us``.

Gaps: segments whose rows do not touch (``next.start_us - prev.end_us`` more than 1 ms) are still played back to
back: the hole is collapsed in the media timeline, and reported in ``PlaybackPlan.gaps`` with the media position
where it was collapsed, so a player can show wall time. Rows that overlap (a clock step backwards) are also
played back to back, in ``start_us`` order, and are not reported as gaps.

Truncation: one init section can only describe fragments whose tracks decode the same way. When a later segment's
init differs in anything that matters for decoding (track IDs, handler types, timescales, the ``stsd`` sample
descriptions, i.e. codec, resolution and parameter sets, or the ``trex`` defaults), for example after a camera
reconnected with a new resolution or SPS, the stream stops before that segment and ``truncated_at_us`` says
where (that segment's ``start_us``); the caller asks for the rest as a separate stream starting there, which
then uses that segment's init section.

Integrity: every file used must exist, have exactly the size its catalogue row records and scan as a clean
fragmented MP4 (``storage.fmp4.scan`` reads every moof), otherwise ``NvrError(DATA_LOSS, "segment_damaged")``.
Planning checks all of that before any byte is produced; streaming re-checks each file's size and each
``moof`` + ``mdat`` as it goes, in case a file changed in between (the client then gets a stream cut short).
``PlaybackPlan.total_bytes`` is the exact length of the stream, so it can be sent as Content-Length.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from nvr.errors import Kind, NvrError
from storage.fmp4 import Fmp4Error, Fragment, TrackInit, parse_moof_timing, read_init_tracks, scan

__all__ = ["GapInfo", "PlaybackPlan", "SegmentRef", "iter_playback", "plan_playback"]

TOUCH_TOLERANCE_US = 1_000  # rows closer than this are one continuous recording, not a gap
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SegmentRef:
    """One catalogue row, as far as playback needs it."""

    path: Path
    seq: int
    start_us: int
    end_us: int
    bytes: int


@dataclass(frozen=True)
class GapInfo:
    start_us: int  # wall time where footage stopped (end of the earlier segment)
    end_us: int  # wall time where it resumed (start of the later segment)
    media_offset_us: int  # position in the served media timeline where the hole was collapsed


@dataclass(frozen=True)
class _Part:
    """The fragments served from one file, and how its decode times move."""

    ref: SegmentRef
    fragments: tuple[tuple[int, int], ...]  # (moof offset, fragment end) in the file
    first_sequence: int  # output mfhd sequence number of the first fragment
    deltas: dict[int, int]  # track_ID -> value added to every tfdt of that track
    default_durations: dict[int, int]  # track_ID -> trex default sample duration


@dataclass(frozen=True)
class PlaybackPlan:
    first_us: int  # wall time of the first frame served (the keyframe at or before the requested start)
    end_us: int  # wall time where the served media ends
    media_duration_us: int  # length of the served video timeline (gaps collapsed)
    gaps: list[GapInfo]
    truncated_at_us: int | None  # wall time of the first segment left out because its init is incompatible
    segments: list[int]  # seqs used, in order
    total_bytes: int  # exact number of bytes iter_playback yields
    _init: bytes = field(default=b"", repr=False, compare=False)
    _parts: tuple[_Part, ...] = field(default=(), repr=False, compare=False)


def _damaged(seg: SegmentRef, what: str) -> NvrError:
    return NvrError(Kind.DATA_LOSS, "segment_damaged", f"segment seq {seg.seq} ({seg.path.name}): {what}")


def _open_checked(seg: SegmentRef) -> BinaryIO:
    """Open a segment file and check its size against the row; any mismatch is data loss."""
    try:
        f = open(seg.path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except FileNotFoundError:
        raise _damaged(seg, "file is missing") from None
    except OSError as exc:
        raise _damaged(seg, f"file cannot be opened ({exc.strerror})") from None
    size = os.fstat(f.fileno()).st_size
    if size != seg.bytes:
        f.close()
        raise _damaged(seg, f"file holds {size} bytes, the catalogue recorded {seg.bytes}")
    return f


def _read_exact(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        raise Fmp4Error(f"{n} bytes at {offset} could not be read (file shorter than expected)")
    return data


def _moof_size(f: BinaryIO, offset: int) -> int:
    return _box_end(f, offset, b"moof") - offset


def _box_end(f: BinaryIO, offset: int, box_type: bytes) -> int:
    size, found = struct.unpack(">I4s", _read_exact(f, offset, 8))
    if found != box_type:
        raise Fmp4Error(f"no {box_type.decode()} at {offset}")
    if size == 1:
        (size,) = struct.unpack(">Q", _read_exact(f, offset + 8, 8))
    return offset + size


def _us(ticks: int, timescale: int) -> int:
    return ticks * 1_000_000 // timescale


def _ticks(value: int, from_scale: int, to_scale: int) -> int:
    return value * to_scale // from_scale


@dataclass
class _Timeline:
    """Running output decode-time state over the whole stream."""

    tracks: dict[int, TrackInit]
    video: int
    ends: dict[int, int] = field(default_factory=dict)  # track_ID -> end of its output decode timeline
    sequence: int = 0

    def video_end(self) -> int:
        return self.ends.get(self.video, 0)


def _video_track(tracks: dict[int, TrackInit]) -> int | None:
    return min((t for t, info in tracks.items() if info.handler == "vide"), default=None)


def _select(
    seg: SegmentRef, fragments: list[Fragment], video: int, timescale: int, start_us: int, end_us: int
) -> list[tuple[int, int, int]]:
    """(index, wall start, wall end) of the fragments of ``seg`` that overlap [start_us, end_us)."""
    origin: int | None = None
    walls: list[int] = []
    for frag in fragments:
        tfdt = frag.base_decode_times.get(video)
        if tfdt is None:  # no video in this fragment: it starts where the previous one did
            walls.append(walls[-1] if walls else seg.start_us)
            continue
        if origin is None:
            origin = tfdt
        walls.append(seg.start_us + _us(tfdt - origin, timescale))
    chosen: list[tuple[int, int, int]] = []
    for i, wall in enumerate(walls):
        wall_end = walls[i + 1] if i + 1 < len(walls) else max(seg.end_us, wall + 1)
        if wall < end_us and wall_end > start_us:
            chosen.append((i, wall, wall_end))
    return chosen


def _plan_part(seg: SegmentRef, f: BinaryIO, frags: list[Fragment], tl: _Timeline) -> _Part:
    """Fix this file's per-track tfdt shifts and advance the timeline.

    The scanner already read every moof (first tfdt and sample count per track), so only the last moof holding
    each track is parsed again here, for its sample durations and the 32-bit check (decode times only grow).
    """
    defaults = {t: info.trex[1] for t, info in tl.tracks.items()}
    video_scale = tl.tracks[tl.video].timescale
    entering = dict(tl.ends)  # track ends before this segment
    video_pos = tl.video_end()  # output decode time of the video at the current fragment
    deltas: dict[int, int] = {}
    last_with: dict[int, int] = {}  # track_ID -> index of the last fragment with samples of it
    for index, frag in enumerate(frags):
        unknown = set(frag.sample_counts) - set(tl.tracks)
        if unknown:
            raise Fmp4Error(f"moof at {frag.offset} has fragments of tracks {sorted(unknown)} the moov lacks")
        # Video first: a track that starts late is anchored to where the picture is.
        for track, value in sorted(frag.base_decode_times.items(), key=lambda item: item[0] != tl.video):
            if track not in deltas:
                if index == 0 and track in entering:
                    start = entering[track]  # continue the track across the boundary
                elif track == tl.video:
                    start = video_pos
                else:
                    scale = tl.tracks[track].timescale
                    start = max(entering.get(track, 0), _ticks(video_pos, video_scale, scale))
                deltas[track] = start - value
            if value + deltas[track] < 0:
                raise Fmp4Error(f"moof at {frag.offset}: track {track} decode time runs backwards")
            if track == tl.video:
                video_pos = value + deltas[track]
        for track, count in frag.sample_counts.items():
            if count:
                if track not in frag.base_decode_times:
                    # Decode time implied by the previous fragment: cannot be moved. FFmpeg always writes tfdt.
                    raise Fmp4Error(f"moof at {frag.offset}: track {track} has samples but no tfdt")
                last_with[track] = index
    for index in sorted(set(last_with.values())):
        frag = frags[index]
        timing = parse_moof_timing(_read_exact(f, frag.offset, _moof_size(f, frag.offset)), defaults)
        for tfdt in timing.tfdts:
            new = tfdt.value + deltas.get(tfdt.track_id, 0)
            if tfdt.version == 0 and new > _U32:
                raise NvrError(
                    Kind.FAILED_PRECONDITION,
                    "tfdt_overflow",
                    f"segment seq {seg.seq}: a 32-bit tfdt cannot hold decode time {new} of track "
                    f"{tfdt.track_id} in the assembled stream; request a shorter window",
                )
        for track, at in last_with.items():
            if at == index:
                end = frag.base_decode_times[track] + deltas[track] + timing.durations[track]
                tl.ends[track] = max(tl.ends.get(track, 0), end)
    first_sequence = tl.sequence + 1
    tl.sequence += len(frags)
    if tl.sequence > _U32:
        raise NvrError(Kind.FAILED_PRECONDITION, "too_many_fragments", "window holds more than 2^32 fragments")
    fragments = tuple((frag.offset, frag.end) for frag in frags)
    return _Part(seg, fragments, first_sequence, deltas, defaults)


def plan_playback(segments: list[SegmentRef], start_us: int, end_us: int) -> PlaybackPlan:
    """Work out what to send for the wall-clock window [start_us, end_us), reading headers only.

    Raises ``NvrError``: ``INVALID_ARGUMENT`` for an empty window, ``NOT_FOUND`` ("no_footage") when no
    fragment covers it, ``DATA_LOSS`` ("segment_damaged") when a file it needs is missing or not what its row
    says, ``FAILED_PRECONDITION`` when the stream cannot be expressed (32-bit tfdt overflow).
    """
    if end_us <= start_us:
        raise NvrError(Kind.INVALID_ARGUMENT, "bad_window", f"window end {end_us} is not after its start {start_us}")
    candidates = sorted(
        (s for s in segments if s.start_us < end_us and s.end_us > start_us), key=lambda s: (s.start_us, s.seq)
    )
    init = b""
    first_tracks: dict[int, TrackInit] | None = None
    tl: _Timeline | None = None
    parts: list[_Part] = []
    gaps: list[GapInfo] = []
    first_us = last_end_us = 0
    truncated_at: int | None = None
    for seg in candidates:
        with _open_checked(seg) as f:
            try:
                result = scan(f)
                if result.tail != "clean":
                    raise Fmp4Error(f"torn: {result.tail_reason}")
                if result.init_end is None or not result.fragments:
                    raise Fmp4Error("no init section or no complete fragment")
                tracks = read_init_tracks(f, result.init_end)
                video = _video_track(tracks)
                if video is None:
                    raise Fmp4Error("no video track")
                if first_tracks is not None and tracks != first_tracks:
                    truncated_at = max(seg.start_us, start_us)
                    break
                chosen = _select(seg, result.fragments, video, tracks[video].timescale, start_us, end_us)
                if not chosen:
                    continue
                if tl is None:
                    first_tracks = tracks
                    tl = _Timeline(tracks, video)
                    init = _read_exact(f, 0, result.init_end)
                    first_us = chosen[0][1]
                elif seg.start_us - parts[-1].ref.end_us > TOUCH_TOLERANCE_US:
                    collapsed_at = _us(tl.video_end(), tracks[video].timescale)
                    gaps.append(GapInfo(parts[-1].ref.end_us, seg.start_us, collapsed_at))
                parts.append(_plan_part(seg, f, [result.fragments[i] for i, _, _ in chosen], tl))
                last_end_us = chosen[-1][2]
            except Fmp4Error as exc:
                raise _damaged(seg, str(exc)) from None
            except OSError as exc:
                raise _damaged(seg, f"read failed ({exc})") from None
    if tl is None:
        raise NvrError(Kind.NOT_FOUND, "no_footage", f"no recorded footage between {start_us} and {end_us}")
    total = len(init) + sum(end - offset for part in parts for offset, end in part.fragments)
    return PlaybackPlan(
        first_us=first_us,
        end_us=last_end_us,
        media_duration_us=_us(tl.video_end(), tl.tracks[tl.video].timescale),
        gaps=gaps,
        truncated_at_us=truncated_at,
        segments=[part.ref.seq for part in parts],
        total_bytes=total,
        _init=init,
        _parts=tuple(parts),
    )


def _rewrite(moof: bytes, sequence: int, part: _Part) -> bytes:
    timing = parse_moof_timing(moof, part.default_durations)
    deltas = part.deltas
    out = bytearray(moof)
    struct.pack_into(">I", out, timing.sequence_at, sequence)
    for tfdt in timing.tfdts:
        if tfdt.track_id not in deltas:
            raise Fmp4Error(f"moof holds track {tfdt.track_id}, which was not there when the stream was planned")
        new = tfdt.value + deltas[tfdt.track_id]
        if new < 0 or new > (_U32 if tfdt.version == 0 else 0xFFFFFFFFFFFFFFFF):
            raise Fmp4Error(f"track {tfdt.track_id} decode time {new} does not fit its tfdt")
        struct.pack_into(">I" if tfdt.version == 0 else ">Q", out, tfdt.at, new)
    return bytes(out)


def iter_playback(plan: PlaybackPlan, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Yield the planned stream in chunks of ``chunk_size`` bytes (the last may be shorter).

    Memory stays near ``chunk_size``: payloads are read piecewise. A file that no longer matches its row or the
    plan raises ``NvrError(DATA_LOSS, "segment_damaged")`` mid-stream, before any byte of the bad fragment.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    buf = bytearray(plan._init)
    for part in plan._parts:
        seg = part.ref
        with _open_checked(seg) as f:
            try:
                for n, (offset, end) in enumerate(part.fragments):
                    size = _moof_size(f, offset)
                    if _box_end(f, offset + size, b"mdat") != end:
                        raise Fmp4Error(f"fragment at {offset} is no longer the moof + mdat that was planned")
                    buf += _rewrite(_read_exact(f, offset, size), part.first_sequence + n, part)
                    pos = offset + size
                    while True:
                        while len(buf) >= chunk_size:
                            yield bytes(buf[:chunk_size])
                            del buf[:chunk_size]
                        if pos >= end:
                            break
                        want = min(end - pos, chunk_size - len(buf))
                        buf += _read_exact(f, pos, want)
                        pos += want
            except Fmp4Error as exc:
                raise _damaged(seg, str(exc)) from None
            except OSError as exc:
                raise _damaged(seg, f"read failed ({exc})") from None
    if buf:
        yield bytes(buf)
