"""Tombstones prove themselves: a tombstone stands for deleted footage only while the sweeper's audit events vouch
for every segment of it.

A tombstone (``segment_tombstones``) keeps the chain verifiable across footage retention deleted, but by itself it
proves nothing: rows deleted by hand minutes after they were recorded, with a tombstone inserted whose links join,
look exactly like retention. What cannot be forged without breaking the audit chain is the audit trail, and the
sweeper writes one ``retention.sweep`` event per *run* it deletes (consecutive rows of one camera whose links join,
``retention.sweeper.Run``), in the transaction that deletes the rows and writes the tombstone. Its ``reason`` is
readable and machine-parseable (:func:`run_reason`, :data:`RUN_REASON`)::

    reason max_age; seq 12..40 (29 segments); prev_link <64 hex>; last_link <64 hex>; min_days 30; floor 30

with ``camera_id`` the run's camera, ``window_start_us``/``window_end_us`` the run's oldest start and newest end,
``bytes`` its bytes, ``object_id`` ``sweep_batch:<id>`` and ``at_us`` the deletion time.

:func:`check_tombstones` accepts a tombstone only when the events of its camera whose reason parses name runs that,
joined in ``seq`` order, cover exactly ``first_seq..last_seq`` (no hole, no overlap, nothing beyond), each run
continuing from the previous run's ``last_link``, the first from the tombstone's ``prev_link`` and the last ending
at its ``last_link``; whose counts, bytes, oldest start and newest end add up to the tombstone's; whose newest event
(highest audit seq) is the tombstone's ``deleted_us`` and ``last_batch_id``; and where every run was deleted at
least ``max(floor, min_days)`` days after its newest end. Anything else is a ``forged_tombstone`` problem, one per
tombstone, naming what is unproven.

Tombstones written before per-run events existed (the sweeper then wrote one batch-level event whose reason was a
clipped summary) are accepted on a weaker proof: the batch-level event of their ``last_batch_id``, at their
``deleted_us``, must parse, name the camera with a range ending at the tombstone's ``last_seq``, and have been
written at least ``floor`` days after the batch's newest end. See docs/integrity/verify.md (``forged_tombstone``).

The audit chain itself is verified by :func:`integrity.audit_log.verify`; here the rows are only read.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from integrity.problems import Problem
from nvr.clock import iso
from nvr.db import Database
from nvr.models import AuditEvent, SegmentTombstone

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000
ACTION = "retention.sweep"
KIND = "forged_tombstone"
UNPROVEN = "no retention.sweep event proves it"
BATCH_OBJECT = re.compile(r"sweep_batch:(\d+)")
MAX_FAULTS = 5
"""Faults named in one problem's detail; more are counted."""

RUN_REASON = re.compile(
    r"reason (?P<why>[a-z_]+(?:,[a-z_]+)*); seq (?P<first>\d+)\.\.(?P<last>\d+) \((?P<segments>\d+) segments?\); "
    r"prev_link (?P<prev_link>[0-9a-f]{64}); last_link (?P<last_link>[0-9a-f]{64}); "
    r"min_days (?P<min_days>\d+); floor (?P<floor>\d+)"
)
"""A per-run ``retention.sweep`` event's reason, whole (``fullmatch``)."""

LEGACY_HEAD = re.compile(r"reason [a-z_]+(?:,[a-z_]+)*; \d+ segments of \d+ camera\(s\): (?P<parts>.*)", re.S)
"""The batch-level summary the sweeper wrote before per-run events. (Today's batch summary says ``… segments in N
run(s) of …`` and does not match: it proves nothing, the run events do.)"""
LEGACY_PART = re.compile(r"(?P<cam>\S+) seq (?P<ranges>\d+(?:\.\.\d+)?(?:,\d+(?:\.\.\d+)?)*) \(\d+ segments\)")


# --- the event format --------------------------------------------------------------------------------------------
def run_reason(
    why: str, first_seq: int, last_seq: int, segments: int, prev_link: str, last_link: str, min_days: int, floor: int
) -> str:
    """The reason of the ``retention.sweep`` event of one deleted run; :data:`RUN_REASON` parses it."""
    noun = "segment" if segments == 1 else "segments"
    return (
        f"reason {why}; seq {first_seq}..{last_seq} ({segments} {noun}); prev_link {prev_link}; "
        f"last_link {last_link}; min_days {min_days}; floor {floor}"
    )


@dataclass(frozen=True)
class RunClaim:
    """What one per-run ``retention.sweep`` event says was deleted, and when."""

    event_seq: int
    at_us: int
    batch_id: int | None
    first_seq: int
    last_seq: int
    segments: int
    prev_link: str
    last_link: str
    min_days: int
    floor: int
    start_us: int | None
    end_us: int | None
    bytes: int | None


def parse_run_event(
    event_seq: int,
    at_us: int,
    object_id: str | None,
    reason: str | None,
    window_start_us: int | None = None,
    window_end_us: int | None = None,
    size: int | None = None,
) -> RunClaim | None:
    """The claim of a per-run event; None when its reason is not in the per-run format (it proves nothing)."""
    m = RUN_REASON.fullmatch(reason or "")
    if m is None:
        return None
    b = BATCH_OBJECT.fullmatch(object_id or "")
    return RunClaim(
        event_seq=event_seq,
        at_us=at_us,
        batch_id=int(b.group(1)) if b else None,
        first_seq=int(m["first"]),
        last_seq=int(m["last"]),
        segments=int(m["segments"]),
        prev_link=m["prev_link"],
        last_link=m["last_link"],
        min_days=int(m["min_days"]),
        floor=int(m["floor"]),
        start_us=window_start_us,
        end_us=window_end_us,
        bytes=size,
    )


def legacy_ranges(reason: str | None, camera_id: str) -> list[tuple[int, int]]:
    """The seq ranges an old batch-level summary names for the camera ([] when it does not parse or was clipped
    before the camera)."""
    head = LEGACY_HEAD.fullmatch(reason or "")
    if head is None:
        return []
    out: list[tuple[int, int]] = []
    for part in head["parts"].split("; "):
        m = LEGACY_PART.fullmatch(part)
        if m is None or m["cam"] != camera_id:
            continue
        for r in m["ranges"].split(","):
            a, _, b = r.partition("..")
            out.append((int(a), int(b or a)))
    return out


def predate_run_events(s: Session, tombstones: Sequence[Mapping[str, Any]]) -> set[int]:
    """The ids of those tombstones (mappings with ``id``, ``camera_id``, ``deleted_us``, ``last_batch_id``) whose last
    batch wrote no per-run event for their camera: written before per-run events, proven only by their batch-level
    event. The sweeper does not extend them (a run beside one starts a tombstone of its own). One indexed read
    (``ix_audit_camera``: camera and time) per thousand tombstones."""
    out: set[int] = set()
    items = list(tombstones)
    A = AuditEvent
    for i in range(0, len(items), 1000):
        chunk = items[i : i + 1000]
        proven = {
            (cam, at, obj)
            for cam, at, obj, reason in s.execute(
                select(A.camera_id, A.at_us, A.object_id, A.reason).where(
                    A.camera_id.in_(sorted({str(t["camera_id"]) for t in chunk})),
                    A.at_us.in_(sorted({int(t["deleted_us"]) for t in chunk})),
                    A.action == ACTION,
                )
            )
            if RUN_REASON.fullmatch(reason or "")
        }
        out |= {
            int(t["id"])
            for t in chunk
            if (t["camera_id"], t["deleted_us"], f"sweep_batch:{t['last_batch_id']}") not in proven
        }
    return out


# --- the check ---------------------------------------------------------------------------------------------------
_TOMB_FIELDS = ("camera_id", "first_seq", "last_seq", "prev_link", "last_link", "start_us", "end_us", "segments",
                "bytes", "deleted_us", "last_batch_id")  # fmt: skip


@dataclass(frozen=True)
class _Tomb:
    camera_id: str
    first_seq: int
    last_seq: int
    prev_link: str
    last_link: str
    start_us: int
    end_us: int
    segments: int
    bytes: int
    deleted_us: int
    last_batch_id: int


SessionFactory = Callable[[], AbstractContextManager[Session]]


def check_tombstones(session_factory_or_db: Database | SessionFactory, floor_days: int) -> list[Problem]:
    """Every tombstone not proven by the sweeper's ``retention.sweep`` events, as ``forged_tombstone`` problems
    (sorted by camera and seq); [] when all are proven. Read-only.

    ``floor_days``: the retention floor (``settings.retention_floor_days``); every run must have been deleted at
    least ``max(floor_days, its event's min_days, its event's floor)`` days after its newest end. Per camera, one
    read of its tombstones and one of its ``retention.sweep`` events (through ``ix_audit_camera``), in one short
    transaction; a camera with a problem is read again before it is reported (a sweep may have committed between
    the two reads)."""
    factory = session_factory_or_db.session if isinstance(session_factory_or_db, Database) else session_factory_or_db
    with factory() as s:
        cameras = list(s.scalars(select(SegmentTombstone.camera_id).distinct().order_by(SegmentTombstone.camera_id)))
    problems: list[Problem] = []
    legacy = 0
    for cam in cameras:
        found, weak = _check_camera(factory, cam, floor_days)
        if found:
            found, weak = _check_camera(factory, cam, floor_days)
        problems += found
        legacy += weak
    if legacy:
        log.info("%d tombstone(s) predate per-run sweep events: accepted on their batch-level event", legacy)
    return problems


def _check_camera(factory: SessionFactory, camera_id: str, floor_days: int) -> tuple[list[Problem], int]:
    T, A = SegmentTombstone, AuditEvent
    with factory() as s:
        tombs = [
            _Tomb(*r)
            for r in s.execute(
                select(*(getattr(T, f) for f in _TOMB_FIELDS)).where(T.camera_id == camera_id).order_by(T.first_seq)
            )
        ]
        events = s.execute(
            select(A.seq, A.at_us, A.object_id, A.reason, A.window_start_us, A.window_end_us, A.bytes)
            .where(A.camera_id == camera_id, A.action == ACTION)
            .execution_options(yield_per=10_000)
        )
        claims = sorted(
            (c for e in events if (c := parse_run_event(*e)) is not None),
            key=lambda c: (c.first_seq, c.event_seq),
        )
        unproven: list[tuple[_Tomb, list[str]]] = []
        orphans: list[_Tomb] = []
        for t in tombs:
            touching = _touching(claims, t.first_seq, t.last_seq)
            if touching:
                faults = _faults(t, touching, floor_days)
                if faults:
                    unproven.append((t, faults))
            else:
                orphans.append(t)
        weak, legacy_faults = _legacy(s, camera_id, orphans, floor_days)
        unproven += legacy_faults
    problems = [_problem(t, faults) for t, faults in sorted(unproven, key=lambda u: u[0].first_seq)]
    return problems, weak


def _touching(claims: Sequence[RunClaim], first: int, last: int) -> list[RunClaim]:
    """The claims naming any seq of first..last. ``claims`` sorted by first_seq; genuine runs never overlap, so the
    backward scan for runs starting before ``first`` stops at once."""
    hi = bisect.bisect_right(claims, last, key=lambda c: c.first_seq)
    lo = bisect.bisect_left(claims, first, key=lambda c: c.first_seq)
    before = []
    i = lo - 1
    while i >= 0 and claims[i].last_seq >= first:
        before.append(claims[i])
        i -= 1
    return [*reversed(before), *claims[lo:hi]]


def _faults(t: _Tomb, claims: list[RunClaim], floor_days: int) -> list[str]:
    """What the claims (sorted by first_seq) leave unproven of the tombstone; [] when they prove it."""
    faults: list[str] = []
    used: list[RunClaim] = []
    pos, prev, prev_name = t.first_seq, t.prev_link, "the tombstone's prev_link"
    for c in claims:
        name = f"event {c.event_seq} (seq {c.first_seq}..{c.last_seq})"
        if c.first_seq < pos:
            where = "before the tombstone's first_seq" if c.first_seq < t.first_seq else "seqs already named"
            faults.append(f"{name} overlaps {where}")
            if c.last_seq < pos:
                continue
        elif c.first_seq > pos:
            faults.append(f"seq {_span(pos, c.first_seq - 1)}: {UNPROVEN}")
        elif c.prev_link != prev:
            faults.append(f"{name} continues from prev_link {c.prev_link[:16]}…, not from {prev_name} {prev[:16]}…")
        used.append(c)
        pos, prev, prev_name = c.last_seq + 1, c.last_link, f"the last_link of event {c.event_seq}"
        faults += _timing(c, name, floor_days)
    if pos <= t.last_seq:
        faults.append(f"seq {_span(pos, t.last_seq)}: {UNPROVEN}")
    elif pos > t.last_seq + 1:
        faults.append(f"the events name seqs up to {pos - 1}, beyond the tombstone's last_seq {t.last_seq}")
    elif prev != t.last_link:
        faults.append(f"last_link {t.last_link[:16]}… is not the {prev_name.removeprefix('the ')} {prev[:16]}…")
    faults += _totals(t, used)
    return faults


def _timing(c: RunClaim, name: str, floor_days: int) -> list[str]:
    days = max(floor_days, c.min_days, c.floor)
    if c.segments != c.last_seq - c.first_seq + 1:
        return [f"{name} counts {c.segments} segments for {c.last_seq - c.first_seq + 1} numbers"]
    if c.end_us is None:
        return [f"{name} records no end time"]
    out = []
    if c.at_us < c.end_us + days * DAY_US:
        out.append(
            f"{name} was deleted at {iso(c.at_us)}, before its newest end {iso(c.end_us)} + {days} days "
            f"(min_days {c.min_days}, floor {max(floor_days, c.floor)})"
        )
    if max(c.min_days, c.floor) < floor_days:
        out.append(f"{name} was deleted under a minimum of {max(c.min_days, c.floor)} days, below the floor")
    return out


def _totals(t: _Tomb, used: list[RunClaim]) -> list[str]:
    """The tombstone's own columns must be what its runs add up to (a changed tombstone is forged too)."""
    if not used:
        return []
    out = []
    segments = sum(c.segments for c in used)
    if t.segments != segments:
        out.append(f"segments {t.segments}, its events name {segments}")
    size = sum(c.bytes or 0 for c in used)
    if t.bytes != size:
        out.append(f"bytes {t.bytes}, its events name {size}")
    starts = [c.start_us for c in used if c.start_us is not None]
    if starts and t.start_us != min(starts):
        out.append(f"start {iso(t.start_us)}, its events' oldest start is {iso(min(starts))}")
    ends = [c.end_us for c in used if c.end_us is not None]
    if ends and t.end_us != max(ends):
        out.append(f"end {iso(t.end_us)}, its events' newest end is {iso(max(ends))}")
    newest = max(used, key=lambda c: c.event_seq)
    if t.deleted_us != newest.at_us:
        out.append(f"deleted_us {iso(t.deleted_us)}, its newest event {newest.event_seq} is at {iso(newest.at_us)}")
    if t.last_batch_id != newest.batch_id:
        out.append(f"last_batch_id {t.last_batch_id}, its newest event {newest.event_seq} is batch {newest.batch_id}")
    return out


def _legacy(
    s: Session, camera_id: str, tombs: list[_Tomb], floor_days: int
) -> tuple[int, list[tuple[_Tomb, list[str]]]]:
    """Tombstones no per-run event names: accepted when the batch-level event of their last batch (written at their
    ``deleted_us``, before per-run events existed) names the camera with a range ending at their last_seq and came
    at least ``floor_days`` after that batch's newest end. Returns (accepted, the others with their faults)."""
    if not tombs:
        return 0, []
    A = AuditEvent
    at = {t.deleted_us for t in tombs}
    by_key: dict[tuple[int, str], list[Any]] = {}
    for chunk in _chunks(sorted(at), 1000):
        for e in s.execute(
            select(A.seq, A.at_us, A.camera_id, A.object_id, A.reason, A.window_end_us).where(
                A.action == ACTION, A.at_us.in_(chunk)
            )
        ):
            by_key.setdefault((e.at_us, e.object_id or ""), []).append(e)
    accepted, out = 0, []
    for t in tombs:
        events = by_key.get((t.deleted_us, f"sweep_batch:{t.last_batch_id}"), [])
        why = _legacy_fault(t, camera_id, events, floor_days)
        if why is None:
            accepted += 1
        else:
            out.append((t, [why]))
    return accepted, out


def _legacy_fault(t: _Tomb, camera_id: str, events: list[Any], floor_days: int) -> str | None:
    if any(RUN_REASON.fullmatch(e.reason or "") for e in events):
        return f"{UNPROVEN} (its last batch {t.last_batch_id} wrote per-run events, none naming these seqs)"
    for e in events:
        if e.camera_id not in (None, camera_id):
            continue
        ranges = legacy_ranges(e.reason, camera_id)
        if not any(b == t.last_seq and a >= t.first_seq for a, b in ranges):
            continue
        if e.window_end_us is None or e.at_us < e.window_end_us + floor_days * DAY_US:
            return (
                f"batch-level event {e.seq} of batch {t.last_batch_id} was written at {iso(e.at_us)}, before its "
                f"batch's newest end {iso(e.window_end_us)} + {floor_days} days"
            )
        return None
    return UNPROVEN


def _problem(t: _Tomb, faults: list[str]) -> Problem:
    shown = faults[:MAX_FAULTS]
    more = f"; and {len(faults) - MAX_FAULTS} more" if len(faults) > MAX_FAULTS else ""
    return Problem(
        KIND,
        t.camera_id,
        t.first_seq,
        t.start_us,
        f"tombstone {t.camera_id} #{t.first_seq}..#{t.last_seq}",
        "; ".join(shown) + more,
    )


def _span(a: int, b: int) -> str:
    return f"{a}" if a == b else f"{a}..{b}"


def _chunks(items: list[int], n: int) -> Iterable[list[int]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
