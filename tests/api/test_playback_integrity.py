"""Playback never serves bytes that fail their hash, nor bytes of a catalogue row that does not recompute.

Real database, real HTTP, real segment files: five distinct 2 s clips (each its own picture, so each file's
``mdat`` payloads are its own) in the recorder's fMP4 layout, registered with their hashes and chain links
exactly as the recorder registers what it writes (tests/support/footage.py does the same with one clip).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from integrity.verify_archive import open_findings
from nvr.clock import iso, parse_iso
from nvr.models import AuditEvent, IntegrityFinding, ReadPin, Segment
from storage import catalog
from tests.api.conftest import DAY_US, Api
from tests.support import footage
from tests.support.footage import CLIP_SECONDS
from tests.support.media import top_boxes

SEG_US = CLIP_SECONDS * 1_000_000
SEGMENTS = 5


def _add_distinct_segments(api: Api, camera_id: str, start_us: int) -> list[Path]:
    """SEGMENTS touching segments from ``start_us``, no two files alike; returns the files in seq order."""
    footage.add_segments(api.rt, camera_id, start_us, SEGMENTS, first_variant=0)
    return [footage.segment_path(api.rt, camera_id, seq) for seq in range(1, SEGMENTS + 1)]


@pytest.fixture
def archive(api: Api) -> tuple[Api, list[Path], dict[str, str]]:
    """cam-a with five distinct segments, olga with a playback grant; the query for all five."""
    footage.add_camera(api.rt, "cam-a")
    start = api.clock.now_us() - DAY_US
    files = _add_distinct_segments(api, "cam-a", start)
    api.user("boss", ["approver"])
    api.user("olga", ["officer"])
    api.grant("boss", "olga", ["cam-a"])
    params = {"start": iso(start) or "", "end": iso(start + SEGMENTS * SEG_US) or "", "purpose": "integrity check"}
    return api, files, params


def _window_us(params: dict[str, str]) -> tuple[int, int]:
    return parse_iso(params["start"]), parse_iso(params["end"])


def _mdats(data: bytes) -> list[bytes]:
    return [data[a:b] for box, a, b in top_boxes(data) if box == b"mdat"]


def _flip_one_byte(path: Path) -> None:
    """Same size, one bit pattern changed in the middle of the first mdat's payload: the structure still scans."""
    data = bytearray(path.read_bytes())
    _box, a, b = next(box for box in top_boxes(bytes(data)) if box[0] == b"mdat")
    data[(a + b) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _events(api: Api, action: str) -> list[AuditEvent]:
    with api.rt.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def _wait_events(api: Api, action: str, count: int, timeout: float = 10.0) -> list[AuditEvent]:
    """Wait (bounded) for the stream's closing transaction; the assertions are on what it wrote."""
    deadline = time.monotonic() + timeout
    while len(found := _events(api, action)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def _findings(api: Api) -> list[IntegrityFinding]:
    with api.rt.db.session() as s:
        return open_findings(s)


def _start_us(api: Api, seq: int) -> int:
    with api.rt.db.session() as s:
        start = s.scalar(select(Segment.start_us).where(Segment.camera_id == "cam-a", Segment.seq == seq))
    assert start is not None
    return int(start)


def _health_alarms(api: Api) -> list[str]:
    with api.client() as c:
        return list(c.get("/api/v1/health").json()["alarms"])


def _assert_refused_before_any_byte(api: Api, r: httpx.Response, seq: int, kind: str) -> None:
    """500 segment_damaged naming the segment, a JSON error and no footage, a finding, playback.damaged, and the
    refused playback.start; never an allowed start, never a stream end, no pin left."""
    assert (r.status_code, r.json()["error"]["code"]) == (500, "segment_damaged"), r.text
    assert r.headers["content-type"] == "application/json"
    assert f"seq {seq} " in r.json()["error"]["message"]
    assert b"ftyp" not in r.content and b"mdat" not in r.content
    (finding,) = _findings(api)
    assert (finding.kind, finding.camera_id, finding.seq, finding.source) == (kind, "cam-a", seq, "playback")
    assert finding.subject == f"segment cam-a #{seq}"
    (damaged,) = _events(api, "playback.damaged")
    assert (damaged.outcome, damaged.camera_id, damaged.object_id) == ("failed", "cam-a", f"segment cam-a #{seq}")
    assert (damaged.reason or "").startswith(f"segment_damaged camera cam-a seq {seq}: {kind}: ")
    assert damaged.actor_id == api.ids["olga"] and damaged.request_id == r.headers["x-request-id"]
    assert damaged.purpose == "integrity check" and damaged.case_ref == "CASE-2026-042"
    assert [(e.outcome, e.reason) for e in _events(api, "playback.start")] == [("failed", "segment_damaged")]
    assert _events(api, "playback.end") == []
    assert "integrity_mismatch" in _health_alarms(api)
    with api.rt.db.session() as s:
        assert s.scalar(select(ReadPin.id)) is None


def test_an_intact_window_streams_and_says_each_segment_is_verified(archive) -> None:
    api, files, params = archive
    with api.client("olga") as c:
        r = c.get("/api/v1/cameras/cam-a/playback", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["x-nvr-integrity"] == "verified-per-segment"
    assert len(r.content) == int(r.headers["content-length"])
    assert _mdats(r.content) == [m for f in files for m in _mdats(f.read_bytes())]
    assert len({m for f in files for m in _mdats(f.read_bytes())}) == SEGMENTS * CLIP_SECONDS  # all distinct
    assert _findings(api) == [] and _events(api, "playback.damaged") == []
    (end,) = _wait_events(api, "playback.end", 1)
    assert (end.outcome, end.reason, end.bytes) == ("ok", None, len(r.content))


def test_one_flipped_byte_in_the_first_segment_refuses_the_request_before_any_byte(archive) -> None:
    api, files, params = archive
    size = files[0].stat().st_size
    _flip_one_byte(files[0])
    assert files[0].stat().st_size == size  # size and structure are fine: only the hash can tell
    assert "integrity_mismatch" not in _health_alarms(api)
    with api.client("olga") as c:
        r = c.get("/api/v1/cameras/cam-a/playback", params=params)
    _assert_refused_before_any_byte(api, r, 1, "hash_mismatch")
    assert "sha256" in r.json()["error"]["message"]
    # Asked again: refused again (a second audit event), the finding is not duplicated.
    with api.client("olga") as c:
        again = c.get("/api/v1/cameras/cam-a/playback", params=params)
    assert (again.status_code, again.json()["error"]["code"]) == (500, "segment_damaged")
    assert len(_findings(api)) == 1 and len(_events(api, "playback.damaged")) == 2


def test_one_flipped_byte_in_the_third_segment_ends_the_stream_after_the_second(archive) -> None:
    api, files, params = archive
    _flip_one_byte(files[2])
    received = bytearray()
    with api.client("olga") as c, c.stream("GET", "/api/v1/cameras/cam-a/playback", params=params) as r:
        assert r.status_code == 200  # the first segment was fine: the stream started
        assert r.headers["x-nvr-integrity"] == "verified-per-segment"
        total = int(r.headers["content-length"])
        with pytest.raises(httpx.RemoteProtocolError):  # the server closed short of Content-Length
            for chunk in r.iter_raw():
                received += chunk
    data = bytes(received)
    assert len(data) < total
    # Segments 1 and 2 whole, to their last mdat byte (the boxes parse to the end), and nothing of segment 3.
    first_two = _mdats(files[0].read_bytes()) + _mdats(files[1].read_bytes())
    assert _mdats(data) == first_two
    assert top_boxes(data)[-1][2] == len(data) and data.endswith(first_two[-1])
    third = files[2].read_bytes()
    assert all(m not in data for m in _mdats(third))
    (end,) = _wait_events(api, "playback.end", 1)
    assert (end.outcome, end.bytes) == ("failed", len(data))
    assert (end.reason or "").startswith("segment_damaged camera cam-a seq 3: hash_mismatch: sha256 ")
    (damaged,) = _events(api, "playback.damaged")
    assert damaged.seq < end.seq and damaged.reason == end.reason  # one transaction, damage first
    assert (damaged.window_start_us, damaged.object_id) == (_start_us(api, 3), "segment cam-a #3")
    (finding,) = _findings(api)
    assert (finding.kind, finding.seq, finding.source) == ("hash_mismatch", 3, "playback")
    # The start was allowed (the first segment was fine), and it is the only start event: the body cut short of its
    # Content-Length is not audited a second time as a failed start.
    starts = _events(api, "playback.start")
    assert [(e.outcome, e.reason) for e in starts] == [("allowed", "segments 1..5")]
    assert "integrity_mismatch" in _health_alarms(api)
    with api.rt.db.session() as s:
        assert s.scalar(select(ReadPin.id)) is None


def test_forged_bytes_with_the_row_hash_updated_to_match_are_refused_by_the_chain_link(archive) -> None:
    api, files, params = archive
    forged = files[3].read_bytes()  # other footage, a valid fMP4: what a forger would put in place
    files[0].write_bytes(forged)
    with api.rt.db.session() as s:
        s.execute(
            update(Segment)
            .where(Segment.camera_id == "cam-a", Segment.seq == 1)
            .values(sha256=hashlib.sha256(forged).hexdigest(), bytes=len(forged))
        )
    with api.client("olga") as c:
        r = c.get("/api/v1/cameras/cam-a/playback", params=params)
    _assert_refused_before_any_byte(api, r, 1, "chain_break")
    assert "chain link" in r.json()["error"]["message"]


@pytest.mark.parametrize("seq", [1, 3])
def test_a_row_whose_times_were_shifted_is_refused_by_the_chain_link(archive, seq) -> None:
    api, _files, params = archive
    with api.rt.db.session() as s:
        s.execute(
            update(Segment)
            .where(Segment.camera_id == "cam-a", Segment.seq == seq)
            .values(start_us=Segment.start_us + 500_000, end_us=Segment.end_us + 500_000)
        )
    with api.client("olga") as c:
        r = c.get("/api/v1/cameras/cam-a/playback", params=params)
    # Known from the rows alone, so refused before the first byte even when it is not the first segment.
    _assert_refused_before_any_byte(api, r, seq, "chain_break")


def test_a_row_rewritten_with_a_recomputed_link_no_longer_joins_the_next_one(archive) -> None:
    api, _files, params = archive
    from integrity import chain

    with api.rt.db.session() as s:
        row = s.scalars(select(Segment).where(Segment.camera_id == "cam-a", Segment.seq == 2)).one()
        row.start_us += 500_000
        row.end_us += 500_000
        row.link = chain.link(row.prev_link, catalog.linked_fields(row))  # consistent with itself
    with api.client("olga") as c:
        r = c.get("/api/v1/cameras/cam-a/playback", params=params)
    _assert_refused_before_any_byte(api, r, 3, "chain_break")  # seq 3's prev_link is the old link of seq 2
    assert "prev_link" in r.json()["error"]["message"]


def test_the_reader_stops_reading_and_hashing_once_nobody_waits(archive) -> None:
    """A player that seeks away drops its stream: the worker thread must not read and hash the next segment."""
    from api import footage as service
    from storage.reader import PlaybackStopped, start_playback

    api, files, params = archive
    with api.rt.db.session() as s:
        refs = service.playback_refs(s, "cam-a", *_window_us(params))
    plan = service.plan(refs, *_window_us(params))
    gone = False
    chunks = start_playback(plan, stop=lambda: gone)
    first = next(chunks)  # the first segment whole (its last chunk does not wait for the second segment)
    assert _mdats(first) == _mdats(files[0].read_bytes())
    gone = True
    with pytest.raises(PlaybackStopped):
        next(chunks)
