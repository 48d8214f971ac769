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

Integrity: no byte of a segment is produced before that segment has passed every check; a failure raises
:class:`SegmentDamaged` (``NvrError(DATA_LOSS, "segment_damaged")`` naming the seq and which check failed, with
the integrity finding kind it amounts to). Planning, before any byte exists, refuses a segment whose catalogue row
the caller found inconsistent (``SegmentRef.row_problem``: its chain link does not recompute), whose file is missing,
has another size than its row records or does not scan as a clean fragmented MP4 (``storage.fmp4.scan`` reads
every moof). Streaming then reads each file **whole** into one buffer, checks its size again and, when the row's
``sha256`` is given, hashes that buffer and compares; the fragments are checked against the plan and sent from that
same buffer, so the bytes sent are exactly the bytes hashed (no second read, nothing to change in between). A
segment that fails stops the stream before its first byte: whatever was pending from the segments before it is
yielded first (they are whole), then the error is raised. :func:`start_playback` does the first segment's read and
hash at once, so a damaged first segment is refused before anything is sent. Memory: one segment's file at a time.
``PlaybackPlan.total_bytes`` is the exact length of the stream, so it can be sent as Content-Length.

Byte ranges (HTTP Range): :func:`start_range` yields bytes ``first`` .. ``last`` of that same stream, exactly its
slice. A part's length in the stream is known from the plan (moofs keep their size, mdats are copied), so the parts
a range touches are found without reading anything; only those are read, each whole and hashed as above before any
of its bytes is produced, then trimmed to the range. :func:`fingerprint` hashes what determines the bytes (a strong
``ETag``).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from integrity import suites
from nvr.errors import Kind, NvrError
from storage import crypt, segment_io
from storage.fmp4 import Fmp4Error, Fragment, TrackInit, parse_moof_timing, read_init_tracks, scan
from storage.keyring import Keyring

__all__ = [
    "GapInfo",
    "PlaybackPlan",
    "PlaybackStopped",
    "SegmentDamaged",
    "SegmentRef",
    "check_span",
    "fingerprint",
    "iter_playback",
    "plan_playback",
    "start_playback",
    "start_range",
]

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
    sha256: str | None = None
    """The file's digest (under ``hash_alg``) as the catalogue recorded it. When set, the file is hashed before any
    of its bytes is produced; None (the export, which re-hashes its originals itself) checks sizes and structure
    only."""
    row_problem: str | None = None
    """Why the caller found the catalogue row itself inconsistent (its chain link does not recompute), if it did:
    the segment is then refused (``chain_break``) before its file is opened."""
    hash_alg: str = suites.DEFAULT_HASH
    """The algorithm of ``sha256`` (the row's ``hash_alg``: ``sha256`` or ``sm3``)."""
    encryption: str | None = None
    """The row's ``encryption``: the file is encrypted at rest (storage.crypt) and ``sha256``/``bytes`` describe the
    stored bytes; everything else here works on the plaintext, decrypted with the data key from ``keyring``."""
    keyring: Keyring | None = None
    name: str = ""
    """The segment's name its wrapped data key is bound to (storage.segment_io.segment_name)."""


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


class SegmentDamaged(NvrError):
    """``DATA_LOSS`` ``segment_damaged``: one segment failed a check, and none of its bytes was produced.

    ``problem`` is the integrity finding kind it amounts to: ``hash_mismatch`` (the file's bytes or size are not the
    recorded ones), ``missing_file`` (gone or unreadable), ``chain_break`` (the catalogue row does not recompute), or
    None when the bytes are the recorded ones but not what the plan expected (they changed while being read) or not a
    clean fragmented MP4. ``what`` says which check failed, for a person.
    """

    def __init__(self, seg: SegmentRef, problem: str | None, what: str) -> None:
        super().__init__(Kind.DATA_LOSS, "segment_damaged", f"segment seq {seg.seq} ({seg.path.name}): {what}")
        self.segment = seg
        self.problem = problem
        self.what = what


class PlaybackStopped(Exception):
    """The caller's ``stop()`` said the reader is no longer wanted (the client went away): not damage."""


Stop = Callable[[], bool]


def _damaged(seg: SegmentRef, problem: str | None, what: str) -> SegmentDamaged:
    return SegmentDamaged(seg, problem, what)


def _data_key(seg: SegmentRef) -> bytes:
    try:
        return segment_io.data_key(seg.path, seg.keyring, seg.name)[1]
    except NvrError as exc:
        if exc.code.startswith("master_key"):
            raise  # the archive's key store is the problem, not this segment
        raise _damaged(seg, "missing_file", f"its data key cannot be had ({exc.code}: {exc.message})") from None


def _open_stored(seg: SegmentRef, buffering: int = -1) -> BinaryIO:
    """Open a segment file as stored and check its size against the row; any mismatch is data loss."""
    try:
        f = open(seg.path, "rb", buffering=buffering)  # noqa: SIM115 - returned to the caller, who closes it
    except FileNotFoundError:
        raise _damaged(seg, "missing_file", "file is missing") from None
    except OSError as exc:
        raise _damaged(seg, "missing_file", f"file cannot be opened ({exc.strerror})") from None
    size = os.fstat(f.fileno()).st_size
    if size != seg.bytes:
        f.close()
        raise _damaged(seg, "hash_mismatch", f"file holds {size} bytes, the catalogue recorded {seg.bytes}")
    return f


def _open_checked(seg: SegmentRef) -> BinaryIO:
    """The segment's fMP4, its stored size checked against the row: the file itself, or for a segment encrypted
    at rest a view that decrypts (and authenticates) the records a read touches."""
    f = _open_stored(seg)
    if seg.encryption is not None:
        f.close()
        key = _data_key(seg)
        try:
            return segment_io.open_view(seg.path, key)
        except NvrError as exc:
            raise _damaged(seg, "hash_mismatch", f"{exc.code}: {exc.message}") from None
    return f


def _classify(seg: SegmentRef, what: str) -> SegmentDamaged:
    """A file of the recorded size that does not scan (or cannot be read) while planning: hash it to tell changed
    bytes (``hash_mismatch``) from a recorded file that never parsed (no finding kind). Rare: a failure path only."""
    if seg.sha256 is None:
        return _damaged(seg, None, what)
    try:
        with open(seg.path, "rb") as f:
            found = suites.digest(seg.hash_alg, f.read())
    except OSError as exc:
        return _damaged(seg, "missing_file", f"{what}; the file cannot be read ({exc.strerror or exc})")
    if found != seg.sha256:
        return _damaged(seg, "hash_mismatch", f"{what}; {seg.hash_alg} {found[:16]}… != recorded {seg.sha256[:16]}…")
    return _damaged(seg, None, f"{what} (its bytes are the recorded ones)")


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
        if seg.row_problem is not None:
            raise _damaged(seg, "chain_break", seg.row_problem)
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
                raise _classify(seg, str(exc)) from None
            except OSError as exc:
                raise _damaged(seg, "missing_file", f"read failed ({exc})") from None
            except NvrError as exc:  # an encrypted segment's record does not authenticate: its bytes changed
                if exc.code != "ciphertext_invalid" and not exc.code.startswith("encrypted_file"):
                    raise
                raise _classify(seg, f"{exc.code}: {exc.message}") from None
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


_HASH_READ = 256 << 10
"""Read (and hash) a file in pieces of this size: each is hashed while it is still in the CPU cache (~15 % faster
than one read of the whole file followed by one hash of it, measured on a 22.5 MB segment)."""


def _load(seg: SegmentRef, stop: Stop | None = None) -> bytearray:
    """The whole file in one buffer, its size checked again and, when the row's sha256 is known, hashed: everything
    sent from this segment is taken from this buffer, so what was checked is what is sent. Each piece is hashed
    from the buffer once it is there (not from a second read), and the buffer is never written again. ``stop()`` is
    asked between pieces: a reader nobody waits for any more does not read and hash the rest of a 60 MB file."""
    digest = suites.new_hash(seg.hash_alg) if seg.sha256 is not None else None
    with _open_stored(seg, buffering=0) as f:
        data = bytearray(seg.bytes)
        got = 0
        try:
            with memoryview(data) as view:
                while got < seg.bytes:
                    n = f.readinto(view[got : got + _HASH_READ])  # type: ignore[attr-defined]  # a FileIO
                    if not n:
                        break
                    if stop is not None and stop():
                        raise PlaybackStopped
                    if digest is not None:
                        digest.update(view[got : got + n])  # releases the GIL: other requests run meanwhile
                    got += n
            grown = f.read(1)
        except OSError as exc:
            raise _damaged(seg, "missing_file", f"read failed ({exc.strerror or exc})") from None
    if got != seg.bytes or grown:
        what = "grew" if grown else f"ended after {got} bytes"
        raise _damaged(seg, "hash_mismatch", f"the file {what} while it was read (the catalogue recorded {seg.bytes})")
    if digest is not None and seg.sha256 is not None and (found := digest.hexdigest()) != seg.sha256:
        raise _damaged(seg, "hash_mismatch", f"{seg.hash_alg} {found[:16]}… != recorded {seg.sha256[:16]}…")
    if seg.encryption is not None:
        try:
            return crypt.decrypt_buffer(data, _data_key(seg), seg.path.name)
        except NvrError as exc:
            if exc.code.startswith("master_key"):
                raise
            raise _damaged(seg, "hash_mismatch", f"{exc.code}: {exc.message}") from None
    return data


def _end_in(data: bytearray, offset: int, box_type: bytes) -> int:
    if offset + 8 > len(data):
        raise Fmp4Error(f"no {box_type.decode()} at {offset} (the file ends before)")
    size, found = struct.unpack_from(">I4s", data, offset)
    if found != box_type:
        raise Fmp4Error(f"no {box_type.decode()} at {offset}")
    if size == 1:
        if offset + 16 > len(data):
            raise Fmp4Error(f"no {box_type.decode()} at {offset} (the file ends before)")
        (size,) = struct.unpack_from(">Q", data, offset + 8)
    if size < 8 or offset + size > len(data):
        raise Fmp4Error(f"{box_type.decode()} at {offset} reaches past the end of the file")
    return offset + size


_Piece = bytes | memoryview


def _prepare(part: _Part, init: bytes = b"", stop: Stop | None = None) -> list[_Piece]:
    """Read and check one segment, then its output pieces (rewritten moofs, mdats as views of the checked buffer),
    led by its init section when ``init`` (what planning read) is given: the first segment's is sent too.

    Raises :class:`SegmentDamaged` before anything of the segment is produced."""
    seg = part.ref
    data = _load(seg, stop)
    view = memoryview(data)
    pieces: list[_Piece] = []
    try:
        if init:
            if view[: len(init)] != init:
                raise Fmp4Error("its init section is not the one planned")
            pieces.append(view[: len(init)])
        for n, (offset, end) in enumerate(part.fragments):
            moof_end = _end_in(data, offset, b"moof")
            if _end_in(data, moof_end, b"mdat") != end:
                raise Fmp4Error(f"fragment at {offset} is no longer the moof + mdat that was planned")
            pieces.append(_rewrite(bytes(view[offset:moof_end]), part.first_sequence + n, part))
            pieces.append(view[moof_end:end])
    except Fmp4Error as exc:
        # The buffer is the recorded bytes (or no hash was given): what the plan was made from is what changed.
        raise _damaged(seg, None, f"{exc} (the file changed after the stream was planned)") from None
    return pieces


def _part_lengths(plan: PlaybackPlan) -> list[int]:
    """Bytes each part puts into the stream (the first part's count includes the init section): a moof keeps its
    size when rewritten and an mdat is copied, so these are known from the plan alone, before any file is read."""
    lengths = [sum(end - offset for offset, end in part.fragments) for part in plan._parts]
    if lengths:
        lengths[0] += len(plan._init)
    return lengths


def _touched(plan: PlaybackPlan, first: int, last: int) -> list[tuple[int, int, int]]:
    """(part index, first byte, end byte) within each part's own output for the parts that stream bytes
    [first, last] touch, in order."""
    out: list[tuple[int, int, int]] = []
    at = 0
    for index, length in enumerate(_part_lengths(plan)):
        lo, hi = max(first, at), min(last + 1, at + length)
        if lo < hi:
            out.append((index, lo - at, hi - at))
        at += length
    return out


def _trim(pieces: list[_Piece], lo: int, hi: int) -> list[_Piece]:
    """Bytes [lo, hi) of the concatenation of ``pieces``, as views of them (nothing is copied)."""
    out: list[_Piece] = []
    at = 0
    for piece in pieces:
        view = memoryview(piece)
        a, b = max(lo - at, 0), min(hi - at, len(view))
        if a < b:
            out.append(view[a:b])
        at += len(view)
    return out


def _stream(
    plan: PlaybackPlan,
    chunk_size: int,
    first: list[_Piece] | None,
    early: bool = False,
    stop: Stop | None = None,
    span: tuple[int, int] | None = None,
) -> Iterator[bytes]:
    """The chunks of bytes ``span`` = [first, last] of the stream (all of it when None); ``first``: the pieces of the
    first touched part, already checked. ``early``: that part's last bytes go out without waiting for the next
    segment's check. Parts outside the span are neither read nor hashed; a part it touches is read and checked whole
    (:func:`_prepare`) before any of its bytes is produced, then trimmed to the span."""
    pending = bytearray()  # less than one chunk, waiting for more

    def chunks(pieces: list[_Piece]) -> Iterator[bytes]:
        for piece in pieces:
            view = memoryview(piece)
            if pending:
                take = min(chunk_size - len(pending), len(view))
                pending.extend(view[:take])
                view = view[take:]
                if len(pending) < chunk_size:
                    continue
                yield bytes(pending)
                pending.clear()
            while len(view) >= chunk_size:
                yield bytes(view[:chunk_size])
                view = view[chunk_size:]
            if view:
                pending.extend(view)

    lo_hi = span if span is not None else (0, plan.total_bytes - 1)
    for n, (index, lo, hi) in enumerate(_touched(plan, *lo_hi)):
        part = plan._parts[index]
        try:
            if n == 0 and first is not None:
                pieces, first = first, None
            else:
                pieces = _prepare(part, plan._init if index == 0 else b"", stop)
        except SegmentDamaged:
            if n > 0 and pending:
                yield bytes(pending)  # the segments before this one are whole: let them all out, then stop
            raise
        yield from chunks(_trim(pieces, lo, hi))
        del pieces
        if early and n == 0 and pending:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


def check_span(plan: PlaybackPlan, first: int, last: int) -> None:
    """``ValueError`` unless 0 <= first <= last < total_bytes (the HTTP layer answers 416 before asking)."""
    if not 0 <= first <= last < plan.total_bytes:
        raise ValueError(f"bytes {first}-{last} are not inside the stream's {plan.total_bytes} bytes")


def start_range(
    plan: PlaybackPlan, first: int, last: int, chunk_size: int = 1 << 20, stop: Stop | None = None
) -> Iterator[bytes]:
    """Bytes ``first`` .. ``last`` (inclusive) of the planned stream, exactly ``iter_playback``'s output sliced
    ``[first:last + 1]``, for an HTTP Range request: :func:`start_playback` for a span.

    Only the segments the span touches are read, each whole and hashed against its row before any of its bytes is
    produced (the module's integrity rule); the first of them is read and checked now, so a damaged one raises
    :class:`SegmentDamaged` before any byte exists, and its bytes are all yielded before the next is read."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    check_span(plan, first, last)
    index, _, _ = _touched(plan, first, last)[0]
    pieces = _prepare(plan._parts[index], plan._init if index == 0 else b"")
    return _stream(plan, chunk_size, pieces, early=True, stop=stop, span=(first, last))


def fingerprint(plan: PlaybackPlan) -> str:
    """What determines the stream's bytes, hashed (for a strong HTTP ``ETag``): each planned segment's seq, size,
    recorded sha256 and the fragments taken from it, the init section, and the total length. Two plans with the
    same fingerprint yield the same bytes (the reader refuses a file whose bytes are not the recorded ones)."""
    h = hashlib.sha256()
    h.update(f"{plan.total_bytes}:{plan.first_us}:{plan.end_us}:".encode())
    h.update(hashlib.sha256(plan._init).digest())
    for part in plan._parts:
        ref = part.ref
        h.update(f"|{ref.seq}:{ref.bytes}:{ref.sha256}:{part.first_sequence}:".encode())
        h.update(",".join(f"{a}-{b}" for a, b in part.fragments).encode())
        h.update(",".join(f"{t}={d}" for t, d in sorted(part.deltas.items())).encode())
    return h.hexdigest()


def start_playback(plan: PlaybackPlan, chunk_size: int = 1 << 20, stop: Stop | None = None) -> Iterator[bytes]:
    """:func:`iter_playback` for a client waiting for its first byte: the first segment is read, hashed and checked
    now, so a damaged first segment raises :class:`SegmentDamaged` here, before any byte exists (an HTTP layer can
    still answer with an error status); and the first segment's bytes are all yielded before the second segment is
    read (a chunk ends there even if shorter than ``chunk_size``), so the first byte never waits for a second hash.
    Reading a later segment raises :class:`PlaybackStopped` as soon as ``stop()`` is true (checked every 256 KiB).
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    first = _prepare(plan._parts[0], plan._init) if plan._parts else None
    return _stream(plan, chunk_size, first, early=True, stop=stop)


def iter_playback(plan: PlaybackPlan, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Yield the planned stream in chunks of ``chunk_size`` bytes (the last may be shorter).

    Each segment's file is read whole, checked (size, the row's sha256 when given, the planned fragments) and sent
    from that buffer: memory is one segment plus one chunk. A segment that fails raises :class:`SegmentDamaged`
    mid-stream, after the bytes of the segments before it and before any byte of its own.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    return _stream(plan, chunk_size, None)
