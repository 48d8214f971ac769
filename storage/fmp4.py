"""Fragmented-MP4 structure scanning and crash recovery by truncation to the last complete fragment.

The recorder writes segments with ``movflags=frag_keyframe+empty_moov+default_base_moof``: ``ftyp`` and an empty
``moov`` first, then one ``moof`` + ``mdat`` pair per GOP, strictly appended, and at a clean close an optional
``mfra`` index. A killed process or a power loss therefore leaves a *prefix* of that layout, possibly followed by
bytes the file system exposes after the crash (zeros or stale blocks). Every fragment that is completely present
is self-contained and playable, so recovery only has to find where the last complete fragment ends and cut there.

The scanner reads box headers only and seeks over ``mdat`` payloads, so memory use does not depend on the size of
the file; only the small ``moov`` and ``moof`` boxes are read whole (bounded by ``MAX_METADATA_BOX``).

How damage is told apart from a file that is not ours (see ``scan``):

* Crash signatures end the scan and mark the tail *torn*: a box header cut short, a box reaching past the end of
  the file, a header that is not a valid box header (zero-filled or stale blocks), a box with size 0 ("to end of
  file", which a fragmenting writer never emits), a ``moof`` with no ``mdat`` after it. Whatever precedes the first
  such point has been checked box by box, so cutting there never removes a complete fragment.
* Complete, well-formed boxes in an order the fragmenting muxer never produces (no ``ftyp`` first, no ``mvex``,
  ``mdat`` without ``moof``, unknown top-level boxes, anything after ``mfra``), or a complete fragment whose
  ``moof`` cannot be parsed, raise ``Fmp4Error``. Such a file is not a torn fMP4 and must not be "repaired" by
  cutting it; the caller should set it aside rather than delete or truncate it.

Decisions:

* ``mfra``: a complete trailing ``mfra`` is part of a clean file, which is never modified. When a file is cut,
  the cut is at the end of the last complete fragment, so a (complete or partial) ``mfra`` is dropped: it is an
  optional random-access index that players rebuild from the fragments, and its offsets would not be re-checked.
* Garbage: non-zero bytes at offset 0 that are not a box header, or a first box other than ``ftyp``, raise
  ``Fmp4Error`` (not an ISO-BMFF file we wrote: do not delete evidence automatically). An all-zero header at
  offset 0 is what a crash leaves when blocks were allocated but never written, so it yields "nothing usable",
  as does an empty file. Invalid bytes *after* a valid beginning are a torn tail.

Limits: completeness is structural. A payload whose blocks were lost inside an ``mdat`` that is complete by size
cannot be detected without decoding; the ``trun`` data ranges are checked against their ``mdat``, nothing more.
Stale-block garbage that happens to form a valid, complete header of an unknown box type (printable type *and* a
size that fits in the file) raises ``Fmp4Error`` instead of being cut: rare, and erring towards not cutting.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

__all__ = [
    "MAX_METADATA_BOX",
    "Fmp4Error",
    "Fragment",
    "MoofTiming",
    "RecoveryResult",
    "Scan",
    "TfdtField",
    "TrackInit",
    "parse_moof_timing",
    "read_init_tracks",
    "scan",
    "truncate_to_complete",
]

# moov/moof are read whole. An empty moov is ~1 KiB and a moof ~16 bytes per sample, so anything near this size
# means a corrupt size field, not a real box; refusing keeps a bad header from allocating gigabytes.
MAX_METADATA_BOX = 16 * 1024 * 1024

# Top-level boxes an fMP4 writer may legitimately put between fragments (ffmpeg: sidx, prft; others: styp, emsg).
# They are skipped; anything else unknown is treated as "not our layout".
_SKIPPABLE = frozenset({b"free", b"skip", b"sidx", b"ssix", b"styp", b"prft", b"emsg", b"uuid"})

# trun flags: presence of optional fields, each 4 bytes (ISO/IEC 14496-12 8.8.8).
_TRUN_DATA_OFFSET = 0x000001
_TRUN_FIRST_SAMPLE_FLAGS = 0x000004
_TRUN_SAMPLE_DURATION = 0x000100
_TRUN_SAMPLE_SIZE = 0x000200
_TRUN_SAMPLE_FLAGS = 0x000400
_TRUN_SAMPLE_CTO = 0x000800
# tfhd flags.
_TFHD_BASE_DATA_OFFSET = 0x000001
_TFHD_SAMPLE_DESCRIPTION_INDEX = 0x000002
_TFHD_DEFAULT_DURATION = 0x000008
_TFHD_DEFAULT_SIZE = 0x000010
_TFHD_DEFAULT_FLAGS = 0x000020
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000


class Fmp4Error(ValueError):
    """The file's structure is corrupt or is not the fragmented-MP4 layout the recorder writes."""


class _Torn(Exception):
    """Internal: the scan reached crash damage; carries the reason for ``Scan.tail_reason``."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class Fragment:
    """One complete ``moof`` + ``mdat`` pair (one GOP)."""

    offset: int  # of the moof
    end: int  # offset just after the mdat
    sequence_number: int
    sample_counts: dict[int, int]  # track_ID -> samples in this fragment
    base_decode_times: dict[int, int] = field(default_factory=dict)  # track_ID -> tfdt, in the track timescale


@dataclass(frozen=True)
class Scan:
    """What a file holds, as far as it can be trusted.

    ``complete_end`` is where a recovered file should end: after the last complete fragment, after the init
    section when there is no complete fragment, or 0 when even the init section is incomplete.
    """

    file_size: int
    init_end: int | None  # after ftyp+moov; None if the init section is missing or incomplete
    tracks: dict[int, str]  # track_ID -> handler type from moov ("vide", "soun", ...)
    fragments: list[Fragment]
    complete_end: int
    tail: Literal["clean", "torn"]
    tail_reason: str | None  # why the tail is torn; None when clean
    has_mfra: bool  # a complete mfra closes the file

    @property
    def usable(self) -> bool:
        """True when a player can use something: an init section and at least one complete fragment."""
        return self.init_end is not None and bool(self.fragments)

    def sample_totals(self) -> dict[int, int]:
        """Samples per track_ID over all complete fragments."""
        totals: dict[int, int] = {}
        for frag in self.fragments:
            for track, count in frag.sample_counts.items():
                totals[track] = totals.get(track, 0) + count
        return totals


@dataclass(frozen=True)
class RecoveryResult:
    """What ``truncate_to_complete`` did. On ``"unusable"`` the file was not modified and the caller deletes it."""

    path: Path
    action: Literal["untouched", "truncated", "unusable"]
    original_size: int
    new_size: int
    fragments_kept: int
    frames_kept: dict[int, int]  # track_ID -> samples (video frames / audio frames) left in the file
    tracks: dict[int, str]  # track_ID -> handler type, to tell video from audio in frames_kept
    reason: str | None  # the torn-tail reason, or why nothing is usable

    @property
    def usable(self) -> bool:
        return self.action != "unusable"


@dataclass(frozen=True)
class _Header:
    type: bytes
    offset: int
    header_size: int
    size: int  # 0 means "to end of file"

    @property
    def end(self) -> int:
        return self.offset + self.size


def _name(box_type: bytes) -> str:
    return box_type.decode("latin-1")


def _read_at(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def _read_top_header(f: BinaryIO, offset: int, file_size: int) -> _Header:
    """Read and validate one top-level box header, raising ``_Torn`` (or ``Fmp4Error`` at offset 0)."""
    raw = _read_at(f, offset, 8)
    if offset == 0 and raw[4:8] != b"ftyp"[: len(raw) - 4] and raw != b"\0" * len(raw):
        # Checked before completeness: a text file's first word would otherwise read as a box past EOF.
        raise Fmp4Error(f"not an fMP4 file: it does not start with an 'ftyp' box (first bytes {raw!r})")
    if len(raw) < 8:
        raise _Torn(offset, f"box header at {offset} cut short ({len(raw)} of 8 bytes)")
    size, box_type = struct.unpack(">I4s", raw)
    header_size = 8
    problem: str | None = None
    if raw == b"\0" * 8:
        # Not even checked as garbage at offset 0: allocated-but-unwritten blocks are a crash artifact.
        raise _Torn(offset, f"zero-filled bytes at {offset} (blocks never written before the crash)")
    if not all(0x20 <= c <= 0x7E for c in box_type):
        problem = f"invalid box type {box_type!r} at {offset}"
    elif size == 1:
        ext = _read_at(f, offset + 8, 8)
        if len(ext) < 8:
            raise _Torn(offset, f"64-bit box size at {offset} cut short")
        (size,) = struct.unpack(">Q", ext)
        header_size = 16
        if size < 16:
            problem = f"invalid 64-bit box size {size} for {_name(box_type)!r} at {offset}"
    elif 0 < size < 8:
        problem = f"invalid box size {size} for {_name(box_type)!r} at {offset}"
    if problem is not None:
        if offset == 0:
            raise Fmp4Error(f"not an ISO-BMFF file: {problem}")
        raise _Torn(offset, problem)
    if size == 0:
        raise _Torn(offset, f"{_name(box_type)!r} at {offset} has size 0 (runs to end of file, never complete)")
    header = _Header(box_type, offset, header_size, size)
    if header.end > file_size:
        raise _Torn(offset, f"{_name(box_type)!r} at {offset} needs {size} bytes, only {file_size - offset} left")
    return header


def _children(data: bytes, start: int, end: int, where: str) -> Iterator[tuple[bytes, int, int]]:
    """Child boxes of an in-memory container as (type, payload_start, payload_end); any inconsistency raises."""
    pos = start
    while pos < end:
        if end - pos < 8:
            raise Fmp4Error(f"{where}: {end - pos} stray bytes at the end of the container")
        size, box_type = struct.unpack_from(">I4s", data, pos)
        header_size = 8
        if size == 1:
            if end - pos < 16:
                raise Fmp4Error(f"{where}: 64-bit size of {_name(box_type)!r} cut short")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header_size = 16
        elif size == 0:
            size = end - pos
        if size < header_size or pos + size > end:
            raise Fmp4Error(f"{where}: child {_name(box_type)!r} has size {size}, overruns its container")
        yield box_type, pos + header_size, pos + size
        pos += size


def _full_box(data: bytes, start: int, end: int, need: int, what: str) -> tuple[int, int]:
    """Version and flags of a FullBox whose payload must hold at least ``need`` bytes after them."""
    if end - start < 4 + need:
        raise Fmp4Error(f"{what} is too short ({end - start} bytes)")
    version_flags = struct.unpack_from(">I", data, start)[0]
    return version_flags >> 24, version_flags & 0xFFFFFF


def _tkhd_track_id(data: bytes, start: int, end: int, where: str) -> int:
    """track_ID of a tkhd box (after version/flags and the creation/modification times, 32 or 64 bits each)."""
    version, _ = _full_box(data, start, end, 12, "tkhd")
    skip = 16 if version == 1 else 8
    if end - start < 4 + skip + 4:
        raise Fmp4Error(f"{where}: tkhd too short")
    return struct.unpack_from(">I", data, start + 4 + skip)[0]


def _parse_moov(data: bytes, offset: int) -> dict[int, str]:
    """Track IDs and handler types; insists on mvex because only a fragmented file can be cut per fragment."""
    tracks: dict[int, str] = {}
    has_mvex = False
    where = f"moov at {offset}"
    for box_type, start, end in _children(data, 0, len(data), where):
        if box_type == b"mvex":
            has_mvex = True
        elif box_type == b"trak":
            track_id: int | None = None
            handler = "?"
            for t_type, t_start, t_end in _children(data, start, end, f"{where}/trak"):
                if t_type == b"tkhd":
                    track_id = _tkhd_track_id(data, t_start, t_end, where)
                elif t_type == b"mdia":
                    for m_type, m_start, m_end in _children(data, t_start, t_end, f"{where}/mdia"):
                        if m_type == b"hdlr":
                            _full_box(data, m_start, m_end, 8, "hdlr")
                            handler = _name(data[m_start + 8 : m_start + 12])
            if track_id is None:
                raise Fmp4Error(f"{where}: trak without tkhd")
            tracks[track_id] = handler
    if not has_mvex:
        raise Fmp4Error(f"{where} has no mvex: not a fragmented MP4, refusing to treat it as one")
    return tracks


@dataclass(frozen=True)
class _MoofInfo:
    sequence_number: int
    sample_counts: dict[int, int]
    base_decode_times: dict[int, int]
    data_ranges: list[tuple[int, int]]  # absolute [start, end) of sample data, where sizes are known


def _parse_moof(data: bytes, offset: int) -> _MoofInfo:
    where = f"moof at {offset}"
    sequence_number: int | None = None
    counts: dict[int, int] = {}
    tfdts: dict[int, int] = {}
    ranges: list[tuple[int, int]] = []
    for box_type, start, end in _children(data, 0, len(data), where):
        if box_type == b"mfhd":
            _full_box(data, start, end, 4, "mfhd")
            sequence_number = struct.unpack_from(">I", data, start + 4)[0]
        elif box_type == b"traf":
            _parse_traf(data, start, end, offset, where, counts, tfdts, ranges)
    if sequence_number is None:
        raise Fmp4Error(f"{where} has no mfhd")
    if not counts:
        raise Fmp4Error(f"{where} has no traf")
    return _MoofInfo(sequence_number, counts, tfdts, ranges)


def _parse_traf(
    data: bytes,
    start: int,
    end: int,
    moof_offset: int,
    where: str,
    counts: dict[int, int],
    tfdts: dict[int, int],
    ranges: list[tuple[int, int]],
) -> None:
    track_id: int | None = None
    base: int | None = None
    default_size: int | None = None
    next_data = None  # where a trun without data_offset continues (ISO 14496-12 8.8.8.1)
    for box_type, b_start, b_end in _children(data, start, end, f"{where}/traf"):
        if box_type == b"tfhd":
            if track_id is not None:
                raise Fmp4Error(f"{where}: traf with two tfhd")
            _, flags = _full_box(data, b_start, b_end, 4, "tfhd")
            track_id = struct.unpack_from(">I", data, b_start + 4)[0]
            pos = b_start + 8
            if flags & _TFHD_BASE_DATA_OFFSET:
                if pos + 8 > b_end:
                    raise Fmp4Error(f"{where}: tfhd shorter than its flags say")
                base = struct.unpack_from(">Q", data, pos)[0]
                pos += 8
            elif flags & _TFHD_DEFAULT_BASE_IS_MOOF:
                base = moof_offset
            optional = [_TFHD_SAMPLE_DESCRIPTION_INDEX, _TFHD_DEFAULT_DURATION, _TFHD_DEFAULT_SIZE, _TFHD_DEFAULT_FLAGS]
            for bit in optional:
                if flags & bit:
                    if pos + 4 > b_end:
                        raise Fmp4Error(f"{where}: tfhd shorter than its flags say")
                    if bit == _TFHD_DEFAULT_SIZE:
                        default_size = struct.unpack_from(">I", data, pos)[0]
                    pos += 4
            if pos > b_end:
                raise Fmp4Error(f"{where}: tfhd shorter than its flags say")
            next_data = base
        elif track_id is None:
            raise Fmp4Error(f"{where}: traf child {_name(box_type)!r} before tfhd")
        elif box_type == b"tfdt":
            _version, value = _read_tfdt(data, b_start, b_end, where)
            tfdts.setdefault(track_id, value)
        elif box_type == b"trun":
            count, data_range = _parse_trun(data, b_start, b_end, where, base, next_data, default_size)
            counts[track_id] = counts.get(track_id, 0) + count
            if data_range is not None:
                ranges.append(data_range)
                next_data = data_range[1]
            else:
                next_data = None
    if track_id is None:
        raise Fmp4Error(f"{where}: traf without tfhd")
    counts.setdefault(track_id, 0)


def _read_tfdt(data: bytes, b_start: int, b_end: int, where: str) -> tuple[int, int]:
    """(version, baseMediaDecodeTime) of a tfdt box whose payload starts at ``b_start``."""
    version, _ = _full_box(data, b_start, b_end, 4, "tfdt")
    if version == 1:
        _full_box(data, b_start, b_end, 8, "tfdt v1")
        return version, struct.unpack_from(">Q", data, b_start + 4)[0]
    if version == 0:
        return version, struct.unpack_from(">I", data, b_start + 4)[0]
    raise Fmp4Error(f"{where}: tfdt version {version}")


def _parse_trun(
    data: bytes,
    start: int,
    end: int,
    where: str,
    base: int | None,
    next_data: int | None,
    default_size: int | None,
) -> tuple[int, tuple[int, int] | None]:
    """Sample count, and the absolute byte range of the samples when it can be worked out from this moof alone."""
    _, flags = _full_box(data, start, end, 4, "trun")
    (count,) = struct.unpack_from(">I", data, start + 4)
    pos = start + 8
    data_start = next_data
    if flags & _TRUN_DATA_OFFSET:
        if pos + 4 > end:
            raise Fmp4Error(f"{where}: trun shorter than its flags say")
        (data_offset,) = struct.unpack_from(">i", data, pos)
        pos += 4
        data_start = None if base is None else base + data_offset
    if flags & _TRUN_FIRST_SAMPLE_FLAGS:
        pos += 4
    per_sample = 4 * sum(
        1 for bit in (_TRUN_SAMPLE_DURATION, _TRUN_SAMPLE_SIZE, _TRUN_SAMPLE_FLAGS, _TRUN_SAMPLE_CTO) if flags & bit
    )
    # Exact length check: a complete trun of garbage almost never has a count matching its own size.
    if end - pos != count * per_sample:
        raise Fmp4Error(f"{where}: trun claims {count} samples but holds {end - pos} bytes of sample entries")
    if data_start is None:
        return count, None
    if flags & _TRUN_SAMPLE_SIZE:
        size_at = 4 if flags & _TRUN_SAMPLE_DURATION else 0
        total = sum(struct.unpack_from(">I", data, pos + i * per_sample + size_at)[0] for i in range(count))
    elif default_size is not None:
        total = default_size * count
    else:
        return count, None  # sizes only in trex; not worth parsing for a sanity check
    return count, (data_start, data_start + total)


def _read_box(f: BinaryIO, header: _Header) -> bytes:
    if header.size > MAX_METADATA_BOX:
        raise Fmp4Error(f"{_name(header.type)!r} at {header.offset} claims {header.size} bytes, implausible")
    payload = _read_at(f, header.offset + header.header_size, header.size - header.header_size)
    if len(payload) != header.size - header.header_size:
        raise _Torn(header.offset, f"{_name(header.type)!r} at {header.offset} could not be read in full")
    return payload


def _scan_fileobj(f: BinaryIO) -> Scan:
    file_size = f.seek(0, os.SEEK_END)
    init_end: int | None = None
    tracks: dict[int, str] = {}
    fragments: list[Fragment] = []
    seen_ftyp = False
    has_mfra = False
    pending: tuple[_Header, _MoofInfo | Fmp4Error] | None = None  # a moof awaiting its mdat
    tail_reason: str | None = None
    pos = 0
    try:
        while pos < file_size:
            header = _read_top_header(f, pos, file_size)
            box = header.type
            where = f"{_name(box)!r} at {pos}"
            if has_mfra:
                raise Fmp4Error(f"{where} follows mfra, which must be the last box")
            if not seen_ftyp:
                if box != b"ftyp":
                    raise Fmp4Error(f"not an fMP4 file: first box is {_name(box)!r}, not 'ftyp'")
                seen_ftyp = True
            elif init_end is None:
                if box == b"moov":
                    tracks = _parse_moov(_read_box(f, header), pos)
                    init_end = header.end
                elif box not in (b"free", b"skip"):
                    raise Fmp4Error(f"{where} where the init section expects 'moov'")
            elif pending is not None:
                moof_header, info = pending
                if box != b"mdat":
                    raise Fmp4Error(f"{where} follows the moof at {moof_header.offset} instead of its mdat")
                if isinstance(info, Fmp4Error):
                    raise info  # a complete fragment with an unreadable moof is corruption, not a crash
                payload_start = header.offset + header.header_size
                for start, end in info.data_ranges:
                    if start < payload_start or end > header.end:
                        raise Fmp4Error(
                            f"moof at {moof_header.offset} points at bytes {start}..{end}, outside its mdat "
                            f"({payload_start}..{header.end})"
                        )
                fragments.append(
                    Fragment(
                        offset=moof_header.offset,
                        end=header.end,
                        sequence_number=info.sequence_number,
                        sample_counts=info.sample_counts,
                        base_decode_times=info.base_decode_times,
                    )
                )
                pending = None
            elif box == b"moof":
                try:
                    parsed: _MoofInfo | Fmp4Error = _parse_moof(_read_box(f, header), pos)
                except Fmp4Error as exc:
                    # Deferred: if the mdat never made it to disk, this moof is merely torn (e.g. zero-filled).
                    parsed = exc
                pending = (header, parsed)
            elif box == b"mfra":
                has_mfra = True
            elif box == b"mdat":
                raise Fmp4Error(f"{where} is not preceded by a moof")
            elif box not in _SKIPPABLE:
                raise Fmp4Error(f"unexpected top-level box {where}")
            pos = header.end
        if pending is not None:
            raise _Torn(pending[0].offset, f"moof at {pending[0].offset} is not followed by its mdat")
    except _Torn as torn:
        tail_reason = torn.reason

    if init_end is None:
        complete_end = 0
    elif fragments:
        complete_end = fragments[-1].end
    else:
        complete_end = init_end
    return Scan(
        file_size=file_size,
        init_end=init_end,
        tracks=tracks,
        fragments=fragments,
        complete_end=complete_end,
        tail="clean" if tail_reason is None else "torn",
        tail_reason=tail_reason,
        has_mfra=has_mfra,
    )


def scan(source: str | os.PathLike[str] | BinaryIO) -> Scan:
    """Scan a file (path or seekable binary file object) box by box.

    Raises ``Fmp4Error`` when the file is corrupt in a way a crash cannot explain or is not a fragmented MP4;
    crash damage is reported as ``tail="torn"`` instead. A file object is left at an unspecified position.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return _scan_fileobj(f)
    return _scan_fileobj(source)


def truncate_to_complete(path: str | os.PathLike[str]) -> RecoveryResult:
    """Cut a torn segment back to the end of its last complete fragment, durably.

    A clean file is never opened for writing, let alone modified (byte-identical afterwards). A file with no
    init section or no complete fragment is left as is and reported ``"unusable"``: deleting is the caller's
    decision. ``Fmp4Error`` propagates: such a file should be set aside, not cut. Must not run while something
    is still writing the file; a size change between scan and cut is detected and raised.
    """
    path = Path(path)
    result = scan(path)
    frames = result.sample_totals()

    def outcome(
        action: Literal["untouched", "truncated", "unusable"], new_size: int, reason: str | None
    ) -> RecoveryResult:
        return RecoveryResult(
            path=path,
            action=action,
            original_size=result.file_size,
            new_size=new_size,
            fragments_kept=len(result.fragments) if action != "unusable" else 0,
            frames_kept=frames if action != "unusable" else {},
            tracks=result.tracks,
            reason=reason,
        )

    if result.init_end is None:
        return outcome("unusable", result.file_size, result.tail_reason or "no complete ftyp+moov init section")
    if not result.fragments:
        return outcome("unusable", result.file_size, result.tail_reason or "no complete fragment")
    if result.tail == "clean":
        return outcome("untouched", result.file_size, None)

    fd = os.open(path, os.O_RDWR)
    try:
        if os.fstat(fd).st_size != result.file_size:
            raise Fmp4Error(f"{path} changed size while being recovered; is it still being written?")
        os.ftruncate(fd, result.complete_end)
        # The new size must be on disk before the segment is registered, or a second crash could resurrect the
        # torn tail under a row that claims it is complete.
        os.fsync(fd)
    finally:
        os.close(fd)
    return outcome("truncated", result.complete_end, result.tail_reason)


# --- decoding-relevant init fields and fragment timing (used to splice fragments of several files) -------------


@dataclass(frozen=True)
class TrackInit:
    """What the init section says about one track that matters for decoding its fragments.

    Two files whose tracks compare equal can have their fragments played under either file's init section.
    """

    track_id: int
    handler: str  # hdlr handler type: "vide", "soun", ...
    timescale: int  # mdhd: ticks per second of the track's decode times and sample durations
    sample_description: bytes  # payload of stsd: codec, resolution, parameter sets (avcC/hvcC), audio config
    trex: tuple[int, int, int, int]  # defaults: sample description index, duration, size, flags; zeros without trex


def _moov_tracks(data: bytes) -> dict[int, TrackInit]:
    where = "moov"
    traks: list[tuple[int, str, int, bytes]] = []
    trex: dict[int, tuple[int, int, int, int]] = {}
    for box_type, start, end in _children(data, 0, len(data), where):
        if box_type == b"mvex":
            for x_type, x_start, x_end in _children(data, start, end, f"{where}/mvex"):
                if x_type == b"trex":
                    _full_box(data, x_start, x_end, 20, "trex")
                    track_id, index, duration, size, flags = struct.unpack_from(">5I", data, x_start + 4)
                    trex[track_id] = (index, duration, size, flags)
        elif box_type == b"trak":
            traks.append(_trak_init(data, start, end, f"{where}/trak"))
    return {
        track_id: TrackInit(track_id, handler, timescale, stsd, trex.get(track_id, (0, 0, 0, 0)))
        for track_id, handler, timescale, stsd in traks
    }


def _trak_init(data: bytes, start: int, end: int, where: str) -> tuple[int, str, int, bytes]:
    track_id: int | None = None
    handler = "?"
    timescale: int | None = None
    stsd: bytes | None = None
    for t_type, t_start, t_end in _children(data, start, end, where):
        if t_type == b"tkhd":
            track_id = _tkhd_track_id(data, t_start, t_end, where)
            continue
        if t_type != b"mdia":
            continue
        for m_type, m_start, m_end in _children(data, t_start, t_end, f"{where}/mdia"):
            if m_type == b"mdhd":
                version, _ = _full_box(data, m_start, m_end, 20, "mdhd")
                at = m_start + 4 + (16 if version == 1 else 8)
                if at + 4 > m_end:
                    raise Fmp4Error(f"{where}: mdhd too short")
                timescale = struct.unpack_from(">I", data, at)[0]
            elif m_type == b"hdlr":
                _full_box(data, m_start, m_end, 8, "hdlr")
                handler = _name(data[m_start + 8 : m_start + 12])
            elif m_type == b"minf":
                for i_type, i_start, i_end in _children(data, m_start, m_end, f"{where}/minf"):
                    if i_type == b"stbl":
                        for s_type, s_start, s_end in _children(data, i_start, i_end, f"{where}/stbl"):
                            if s_type == b"stsd":
                                stsd = data[s_start:s_end]
    if track_id is None:
        raise Fmp4Error(f"{where} without tkhd")
    if not timescale or stsd is None:
        raise Fmp4Error(f"{where}: track {track_id} has no mdhd timescale or no stsd")
    return track_id, handler, timescale, stsd


def read_init_tracks(source: str | os.PathLike[str] | BinaryIO, init_end: int) -> dict[int, TrackInit]:
    """Parse the ``moov`` of the init section ``[0, init_end)`` (``Scan.init_end``) into per-track decoding facts."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return read_init_tracks(f, init_end)
    pos = 0
    try:
        while pos < init_end:
            header = _read_top_header(source, pos, init_end)
            if header.type == b"moov":
                return _moov_tracks(_read_box(source, header))
            pos = header.end
    except _Torn as torn:
        raise Fmp4Error(f"init section: {torn.reason}") from None
    raise Fmp4Error("init section has no moov")


@dataclass(frozen=True)
class TfdtField:
    """One ``tfdt`` inside a moof, located so it can be rewritten in place."""

    track_id: int
    version: int  # 1: 64-bit value, 0: 32-bit value
    at: int  # byte offset of the value from the first byte of the moof box (its header included)
    value: int


@dataclass(frozen=True)
class MoofTiming:
    """Sequence number and decode timing of one ``moof`` (whole box bytes, header included)."""

    sequence_number: int
    sequence_at: int  # byte offset of the mfhd sequence_number from the first byte of the moof box
    tfdts: list[TfdtField]
    durations: dict[int, int]  # track_ID -> sum of the fragment's sample durations, in the track timescale
    sample_counts: dict[int, int]

    def base_decode_time(self, track_id: int) -> int | None:
        return next((t.value for t in self.tfdts if t.track_id == track_id), None)


def parse_moof_timing(moof: bytes, default_durations: dict[int, int] | None = None) -> MoofTiming:
    """Locate mfhd/tfdt fields and sum sample durations (trun, else tfhd default, else ``default_durations``).

    ``default_durations`` maps track_ID to the trex default_sample_duration of the file's init section.
    """
    if len(moof) < 8:
        raise Fmp4Error("moof too short")
    size, box_type = struct.unpack_from(">I4s", moof, 0)
    header = 8
    if size == 1:
        if len(moof) < 16:
            raise Fmp4Error("moof too short")
        size, header = struct.unpack_from(">Q", moof, 8)[0], 16
    if box_type != b"moof" or size != len(moof):
        raise Fmp4Error(f"not a whole moof box: {_name(box_type)!r} of {size} bytes, {len(moof)} given")
    sequence: tuple[int, int] | None = None
    tfdts: list[TfdtField] = []
    durations: dict[int, int] = {}
    counts: dict[int, int] = {}
    for child, start, end in _children(moof, header, len(moof), "moof"):
        if child == b"mfhd":
            _full_box(moof, start, end, 4, "mfhd")
            sequence = (struct.unpack_from(">I", moof, start + 4)[0], start + 4)
        elif child == b"traf":
            _traf_timing(moof, start, end, default_durations or {}, tfdts, durations, counts)
    if sequence is None:
        raise Fmp4Error("moof has no mfhd")
    if not counts:
        raise Fmp4Error("moof has no traf")
    return MoofTiming(sequence[0], sequence[1], tfdts, durations, counts)


def _traf_timing(
    data: bytes,
    start: int,
    end: int,
    default_durations: dict[int, int],
    tfdts: list[TfdtField],
    durations: dict[int, int],
    counts: dict[int, int],
) -> None:
    track_id: int | None = None
    default_duration: int | None = None
    for box_type, b_start, b_end in _children(data, start, end, "moof/traf"):
        if box_type == b"tfhd":
            _, flags = _full_box(data, b_start, b_end, 4, "tfhd")
            track_id = struct.unpack_from(">I", data, b_start + 4)[0]
            pos = b_start + 8 + (8 if flags & _TFHD_BASE_DATA_OFFSET else 0)
            pos += 4 if flags & _TFHD_SAMPLE_DESCRIPTION_INDEX else 0
            default_duration = default_durations.get(track_id)
            if flags & _TFHD_DEFAULT_DURATION:
                if pos + 4 > b_end:
                    raise Fmp4Error("moof/traf: tfhd shorter than its flags say")
                default_duration = struct.unpack_from(">I", data, pos)[0]
        elif track_id is None:
            raise Fmp4Error(f"moof/traf: {_name(box_type)!r} before tfhd")
        elif box_type == b"tfdt":
            version, value = _read_tfdt(data, b_start, b_end, "moof/traf")
            tfdts.append(TfdtField(track_id, version, b_start + 4, value))
        elif box_type == b"trun":
            _, flags = _full_box(data, b_start, b_end, 4, "trun")
            (count,) = struct.unpack_from(">I", data, b_start + 4)
            pos = b_start + 8 + (4 if flags & _TRUN_DATA_OFFSET else 0) + (4 if flags & _TRUN_FIRST_SAMPLE_FLAGS else 0)
            fields = (_TRUN_SAMPLE_DURATION, _TRUN_SAMPLE_SIZE, _TRUN_SAMPLE_FLAGS, _TRUN_SAMPLE_CTO)
            per_sample = 4 * sum(1 for bit in fields if flags & bit)
            if b_end - pos != count * per_sample:
                raise Fmp4Error(f"moof/traf: trun claims {count} samples but holds {b_end - pos} bytes of entries")
            if flags & _TRUN_SAMPLE_DURATION:  # the first field of each entry; one unpack for the whole table
                total = sum(struct.unpack_from(f">{count * per_sample // 4}I", data, pos)[:: per_sample // 4])
            elif default_duration is not None:
                total = default_duration * count
            else:
                raise Fmp4Error(f"moof/traf: track {track_id} sample durations are given nowhere (trun, tfhd, trex)")
            durations[track_id] = durations.get(track_id, 0) + total
            counts[track_id] = counts.get(track_id, 0) + count
    if track_id is None:
        raise Fmp4Error("moof/traf: traf without tfhd")
    counts.setdefault(track_id, 0)
    durations.setdefault(track_id, 0)
