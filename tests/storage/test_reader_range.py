"""Byte ranges of an assembled playback (storage.reader.start_range): every range is exactly the slice of the full
stream, only the segments it touches are read, and a damaged segment inside the range is refused before any of its
bytes (its neighbours outside the range do not matter).

Real files: FFmpeg-encoded H.264 clips (tests/support/footage.clip, a different picture per segment) in the
recorder's fragmented-MP4 layout, with their recorded SHA-256s."""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import pytest

from nvr.errors import Kind
from storage.reader import (
    PlaybackPlan,
    SegmentDamaged,
    SegmentRef,
    _part_lengths,
    fingerprint,
    iter_playback,
    plan_playback,
    start_range,
)
from tests.support.footage import CLIP_SECONDS, clip

SEG_US = CLIP_SECONDS * 1_000_000
T0 = 1_700_000_000_000_000
COUNT = 5


def _refs(root: Path) -> list[SegmentRef]:
    refs = []
    for i in range(COUNT):
        path = root / f"seg{i}.mp4"
        shutil.copyfile(clip(variant=i), path)
        data = path.read_bytes()
        start = T0 + i * SEG_US
        refs.append(SegmentRef(path, i + 1, start, start + SEG_US, len(data), hashlib.sha256(data).hexdigest()))
    return refs


@pytest.fixture
def refs(tmp_path: Path) -> list[SegmentRef]:
    return _refs(tmp_path)


def _plan(refs: list[SegmentRef]) -> PlaybackPlan:
    return plan_playback(refs, T0, T0 + COUNT * SEG_US)


def _boundaries(plan: PlaybackPlan) -> list[int]:
    """Where each segment's bytes begin in the stream (the first includes the init section)."""
    out, at = [], 0
    for n in _part_lengths(plan):
        out.append(at)
        at += n
    return out


def test_ranges_are_byte_identical_slices_of_the_full_stream(refs: list[SegmentRef]) -> None:
    plan = _plan(refs)
    full = b"".join(iter_playback(plan))
    assert len(full) == plan.total_bytes and len(plan.segments) == COUNT
    total = plan.total_bytes
    edges = _boundaries(plan)[1:]
    spans = [(0, 0), (0, total - 1), (total - 1, total - 1), (0, edges[0] - 1), (edges[0], edges[0])]
    for edge in edges:  # across every segment boundary, and exactly on it
        spans += [(edge - 1, edge), (edge - 100, edge + 100), (edge - 1, edge - 1), (edge, total - 1)]
    spans.append((edges[0] + 10, edges[-1] + 10))  # several whole segments in the middle
    rng = random.Random(13)
    for _ in range(40):
        a = rng.randrange(total)
        spans.append((a, rng.randrange(a, total)))
    for first, last in spans:
        for chunk_size in (1 << 20, 4096):
            got = b"".join(start_range(plan, first, last, chunk_size=chunk_size))
            assert got == full[first : last + 1], (first, last, chunk_size)


def test_a_range_reads_only_the_segments_it_touches(refs: list[SegmentRef]) -> None:
    plan = _plan(refs)
    full = b"".join(iter_playback(plan))
    edges = _boundaries(plan)
    for i in (0, 1, 3):  # the segments outside the range are gone: the range does not need them
        if i != 2:
            refs[i].path.unlink()
    got = b"".join(start_range(plan, edges[2] + 5, edges[3] - 1))
    assert got == full[edges[2] + 5 : edges[3]]


def _damage(ref: SegmentRef) -> None:
    data = bytearray(ref.path.read_bytes())
    data[-10] ^= 0xFF  # inside the last mdat: the file still scans, only its hash tells
    ref.path.write_bytes(bytes(data))


def test_a_damaged_first_segment_of_the_range_is_refused_before_any_byte(refs: list[SegmentRef]) -> None:
    plan = _plan(refs)
    edges = _boundaries(plan)
    _damage(refs[2])
    with pytest.raises(SegmentDamaged) as exc:
        start_range(plan, edges[2] + 1, edges[4])  # raises here: nothing to iterate
    assert exc.value.kind is Kind.DATA_LOSS and exc.value.segment.seq == 3 and exc.value.problem == "hash_mismatch"
    # A range that does not touch it is still served whole.
    full_before = b"".join(start_range(plan, 0, edges[2] - 1))
    assert len(full_before) == edges[2]


def test_a_damaged_later_segment_inside_the_range_stops_it_before_its_first_byte(refs: list[SegmentRef]) -> None:
    plan = _plan(refs)
    full = b"".join(iter_playback(plan))
    edges = _boundaries(plan)
    _damage(refs[3])
    first = edges[1] + 7
    got = bytearray()
    with pytest.raises(SegmentDamaged) as exc:
        for chunk in start_range(plan, first, plan.total_bytes - 1, chunk_size=4096):
            got.extend(chunk)
    assert exc.value.segment.seq == 4
    # Everything before the damaged segment came out, exactly; not one byte of it.
    assert bytes(got) == full[first : edges[3]]


def test_the_fingerprint_follows_the_bytes(refs: list[SegmentRef], tmp_path: Path) -> None:
    plan = _plan(refs)
    assert fingerprint(plan) == fingerprint(_plan(refs))
    shorter = plan_playback(refs, T0, T0 + 3 * SEG_US)
    assert fingerprint(shorter) != fingerprint(plan)
    other = [SegmentRef(r.path, r.seq, r.start_us, r.end_us, r.bytes, "0" * 64) for r in refs]
    assert fingerprint(_plan(other)) != fingerprint(plan)  # another recorded hash: other bytes would be served


def test_a_range_outside_the_stream_is_a_value_error(refs: list[SegmentRef]) -> None:
    plan = _plan(refs)
    for first, last in ((plan.total_bytes, plan.total_bytes), (5, 4), (-1, 3), (0, plan.total_bytes)):
        with pytest.raises(ValueError):
            start_range(plan, first, last)
