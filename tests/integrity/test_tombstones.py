"""Tombstones prove themselves: a real sweep's tombstones are proven by its ``retention.sweep`` events; a tombstone
written or edited by hand, or a run deleted before its time, is a ``forged_tombstone`` even when the chain joins.

Real database, real segment files (tests/support/footage), the real sweeper with an injected clock.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from integrity import audit_chain, audit_log
from integrity.problems import Problem
from integrity.tombstones import check_tombstones, run_reason
from nvr.clock import FakeClock
from nvr.models import (
    AuditEvent,
    AuditHead,
    EvidenceHold,
    HoldCamera,
    RetentionPolicy,
    Segment,
    SegmentTombstone,
    SweepBatch,
)
from nvr.runtime import Runtime
from retention.sweeper import Sweeper
from storage import catalog
from tests.support.footage import add_camera, add_segments
from tests.support.tamper import delete_run

DAY = 86_400_000_000
T0 = 1_700_000_000_000_000
NOW = T0 + 40 * DAY


# --- helpers -------------------------------------------------------------------------------------------------------
def _archive(rt: Runtime, cameras: tuple[str, ...] = ("cam1", "cam2"), old: int = 10) -> None:
    """``old`` segments per camera 40 days before NOW (past a 30-day max_days), then 3 recorded minutes before NOW."""
    for cam in cameras:
        add_camera(rt, cam)
        add_segments(rt, cam, T0, old)
        add_segments(rt, cam, NOW - 10 * 60_000_000, 3)
    with rt.db.session() as s:
        s.execute(update(RetentionPolicy).values(min_days=30, max_days=30))


def _sweep(rt: Runtime, now: int = NOW, **kw: Any) -> Sweeper:
    sweeper = Sweeper(rt.db, rt.settings, FakeClock(now), **kw)
    sweeper.run()
    return sweeper


def _check(rt: Runtime) -> list[Problem]:
    return check_tombstones(rt.db, rt.settings.retention_floor_days)


def _tomb(rt: Runtime, camera_id: str, first_seq: int | None = None) -> SegmentTombstone:
    with rt.db.session() as s:
        q = select(SegmentTombstone).where(SegmentTombstone.camera_id == camera_id)
        if first_seq is not None:
            q = q.where(SegmentTombstone.first_seq == first_seq)
        t = s.scalars(q.order_by(SegmentTombstone.first_seq)).first()
        assert t is not None
        s.expunge(t)
        return t


def _chain_holds(rt: Runtime, camera_id: str) -> bool:
    with rt.db.session() as s:
        return catalog.verify_chain(s, camera_id) == []


def _only(problems: list[Problem], camera_id: str, first: int, last: int) -> Problem:
    assert len(problems) == 1, [p.line() for p in problems]
    (p,) = problems
    assert (p.kind, p.camera_id, p.seq, p.subject) == (
        "forged_tombstone",
        camera_id,
        first,
        f"tombstone {camera_id} #{first}..#{last}",
    ), p.line()
    return p


def _delete_rows(rt: Runtime, camera_id: str, first: int, last: int) -> dict[str, Any]:
    """Delete rows first..last and their files by hand; returns the tombstone body whose links make the chain join."""
    return delete_run(rt, camera_id, first, last)


# --- a real sweep proves its tombstones ----------------------------------------------------------------------------
def test_a_real_sweeps_tombstones_are_proven_across_batches_and_sweeps(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt)
    rt.settings.sweep_batch_size = 3  # 20 old segments in 7 batches: tombstones span runs of several batches
    with rt.db.session() as s:  # cam1 #5 is held at first: it goes two days later and fills the hole
        s5 = s.scalar(select(Segment.start_us).where(Segment.camera_id == "cam1", Segment.seq == 5))
        assert s5 is not None
        hold = EvidenceHold(
            case_ref="C-1", title="t", reason="r", start_us=s5, end_us=s5 + 1, state="active",
            placed_by_name="officer", placed_us=T0,
        )  # fmt: skip
        s.add(hold)
        s.flush()
        s.add(HoldCamera(hold_id=hold.id, camera_id="cam1"))

    _sweep(rt)
    assert _tomb(rt, "cam1", 1).last_seq == 4 and _tomb(rt, "cam1", 6).last_seq == 10
    assert _chain_holds(rt, "cam1") and _chain_holds(rt, "cam2")
    assert _check(rt) == []
    with rt.db.session() as s:
        s.execute(update(EvidenceHold).values(state="released"))
    _sweep(rt, NOW + 2 * DAY)  # the two tombstones and the run merge into one, proven by two sweeps' events
    t = _tomb(rt, "cam1")
    assert (t.first_seq, t.last_seq, t.deleted_us) == (1, 10, NOW + 2 * DAY)
    assert _tomb(rt, "cam2").last_seq == 10
    assert _chain_holds(rt, "cam1") and _chain_holds(rt, "cam2")
    assert _check(rt) == []


# --- a tombstone by hand ------------------------------------------------------------------------------------------
def test_a_tombstone_inserted_by_hand_over_the_newest_rows_is_forged(runtime: Runtime) -> None:
    """The attack: rows minutes old deleted, a tombstone whose links join the chain inserted in their place."""
    rt = runtime
    _archive(rt)
    _sweep(rt)
    assert _check(rt) == []
    body = _delete_rows(rt, "cam1", 11, 13)
    with rt.db.session() as s:
        s.execute(insert(SegmentTombstone).values(**body, deleted_us=NOW + 60_000_000, last_batch_id=99))
    assert _chain_holds(rt, "cam1")  # the chain joins across it: only the audit trail can tell
    p = _only(_check(rt), "cam1", 11, 13)
    assert p.at_us == body["start_us"] and "no retention.sweep event proves it" in p.detail


def test_a_hand_made_tombstone_pointing_at_a_real_batch_is_forged(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt)
    _sweep(rt)
    real = _tomb(rt, "cam2")
    body = _delete_rows(rt, "cam1", 11, 13)
    with rt.db.session() as s:  # a real batch's number and time: its events name other segments
        s.execute(insert(SegmentTombstone).values(**body, deleted_us=real.deleted_us, last_batch_id=real.last_batch_id))
    assert _chain_holds(rt, "cam1")
    p = _only(_check(rt), "cam1", 11, 13)
    assert "no retention.sweep event proves it" in p.detail


def test_a_real_tombstone_extended_by_hand_over_the_newest_rows_is_forged(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt)
    _sweep(rt)
    body = _delete_rows(rt, "cam1", 11, 13)
    with rt.db.session() as s:
        s.execute(
            update(SegmentTombstone)
            .where(SegmentTombstone.camera_id == "cam1")
            .values(
                last_seq=13, last_link=body["last_link"], end_us=body["end_us"],
                segments=SegmentTombstone.segments + 3, bytes=SegmentTombstone.bytes + body["bytes"],
            )
        )  # fmt: skip
    assert _chain_holds(rt, "cam1")
    p = _only(_check(rt), "cam1", 1, 13)
    assert "seq 11..13: no retention.sweep event proves it" in p.detail


EDITS: dict[str, tuple[dict[str, Any], str]] = {
    "last_seq": ({"last_seq": SegmentTombstone.last_seq - 1}, "beyond the tombstone's last_seq 9"),
    "first_seq": ({"first_seq": 2}, "overlaps before the tombstone's first_seq"),
    "prev_link": ({"prev_link": "0" * 64}, "not from the tombstone's prev_link"),
    "last_link": ({"last_link": "f" * 64}, "is not the last_link of event"),
    "deleted_us": ({"deleted_us": SegmentTombstone.deleted_us - 30 * DAY}, "deleted_us"),
    "start_us": ({"start_us": SegmentTombstone.start_us - 30 * DAY}, "its events' oldest start is"),
    "end_us": ({"end_us": SegmentTombstone.end_us + DAY}, "its events' newest end is"),
    "segments": ({"segments": SegmentTombstone.segments + 1}, "segments 11, its events name 10"),
    "bytes": ({"bytes": SegmentTombstone.bytes + 1}, "its events name"),
    "last_batch_id": ({"last_batch_id": SegmentTombstone.last_batch_id + 1}, "last_batch_id"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_real_tombstone_is_forged(runtime: Runtime, edit: str) -> None:
    rt = runtime
    _archive(rt)
    _sweep(rt)
    values, expected = EDITS[edit]
    with rt.db.session() as s:
        s.execute(update(SegmentTombstone).where(SegmentTombstone.camera_id == "cam1").values(**values))
    t = _tomb(rt, "cam1")
    p = _only(_check(rt), "cam1", t.first_seq, t.last_seq)
    assert expected in p.detail, p.detail
    assert p.at_us == t.start_us


# --- the audit trail cannot be written by hand -----------------------------------------------------------------------
@pytest.mark.parametrize("move_head", [False, True])
def test_a_sweep_event_inserted_by_sql_breaks_the_audit_chain(runtime: Runtime, move_head: bool) -> None:
    """What would prove a hand-made tombstone is an event only the audit writer can add: inserted by SQL, the audit
    chain no longer verifies. (An insider who also recomputes the hashes and moves the head is caught by the signed
    checkpoints of the audit head, not here.)"""
    rt = runtime
    _archive(rt)
    _sweep(rt)
    body = _delete_rows(rt, "cam1", 11, 13)
    with rt.db.session() as s:
        assert audit_log.verify(s)[1] is None
        head_seq, head_hash = s.execute(select(AuditHead.seq, AuditHead.hash)).one()
        row = {f: None for f in audit_chain.HASHED_FIELDS} | {
            "seq": head_seq + 1, "at_us": NOW + DAY, "actor_name": "system", "action": "retention.sweep",
            "camera_id": "cam1", "window_start_us": body["start_us"], "window_end_us": body["end_us"],
            "object_id": "sweep_batch:99", "outcome": "ok", "bytes": body["bytes"],
            "reason": f"reason max_age; seq 11..13 (3 segments); prev_link {body['prev_link']}; "
                      f"last_link {body['last_link']}; min_days 30; floor 30",
        }  # fmt: skip
        digest = audit_chain.link(head_hash, row) if not move_head else "0" * 64
        s.execute(insert(AuditEvent).values(**row, prev_hash=head_hash, hash=digest))
        if move_head:
            s.execute(update(AuditHead).values(seq=head_seq + 1, hash=digest))
    with rt.db.session() as s:
        _, problem = audit_log.verify(s)
    assert problem is not None and (problem.seq == head_seq + 1 or not move_head), problem


# --- deleted before its time -------------------------------------------------------------------------------------
def test_a_run_deleted_before_end_plus_floor_is_forged(runtime: Runtime) -> None:
    """A genuine-looking event (written by the audit writer, so the audit chain holds, in the sweeper's format, with
    links that join) whose time is minutes after the footage's end: the run went before end + floor."""
    rt = runtime
    _archive(rt, ("cam1",))
    _sweep(rt)
    body = _delete_rows(rt, "cam1", 11, 13)
    with rt.db.session() as s:
        batch = _batch(s, NOW, body)
        s.execute(insert(SegmentTombstone).values(**body, deleted_us=NOW, last_batch_id=batch))
        reason = run_reason("max_age", 11, 13, 3, body["prev_link"], body["last_link"], 30, 30)
        audit_log.record(
            s,
            NOW,
            audit_log.SYSTEM,
            audit_log.INTERNAL,
            audit_log.Event(
                "retention.sweep", "ok", camera_id="cam1", window_start_us=body["start_us"],
                window_end_us=body["end_us"], object_id=f"sweep_batch:{batch}", reason=reason, bytes=body["bytes"],
            ),
        )  # fmt: skip
    with rt.db.session() as s:
        assert audit_log.verify(s)[1] is None
    assert _chain_holds(rt, "cam1")
    p = _only(_check(rt), "cam1", 11, 13)
    assert "before its newest end" in p.detail and "+ 30 days (min_days 30, floor 30)" in p.detail, p.detail


def _batch(s: Any, at_us: int, body: dict[str, Any]) -> int:
    return int(
        s.execute(
            insert(SweepBatch)
            .values(state="done", reason="max_age", segments=body["segments"], bytes=body["bytes"],
                    started_us=at_us, finished_us=at_us, actor="system")
            .returning(SweepBatch.id)
        ).scalar_one()
    )  # fmt: skip


def test_a_run_deleted_before_its_policy_minimum_is_forged(runtime: Runtime) -> None:
    """The policy was raised to 60 days after the batch's re-check: the rows went anyway (their files were gone),
    and the event records the minimum in force at deletion, which they had not reached."""
    rt = runtime
    _archive(rt, ("cam1",))

    def raise_policy(step: str) -> None:
        if step == "unlinked":
            with rt.db.session() as s:
                s.execute(update(RetentionPolicy).values(min_days=60))

    _sweep(rt, step_hook=raise_policy)
    p = _only(_check(rt), "cam1", 1, 10)
    assert "+ 60 days (min_days 60, floor 30)" in p.detail, p.detail


# --- tombstones from before per-run events -------------------------------------------------------------------------
def _old_sweep(rt: Runtime, camera_id: str, first: int, last: int, at_us: int, summary: str | None = None) -> int:
    """What the sweeper did before per-run events: rows deleted, a tombstone, one batch-level event (through the
    audit writer, so the audit chain holds) whose reason is a summary of the batch."""
    body = _delete_rows(rt, camera_id, first, last)
    with rt.db.session() as s:
        batch = _batch(s, at_us, body)
        s.execute(insert(SegmentTombstone).values(**body, deleted_us=at_us, last_batch_id=batch))
        n = last - first + 1
        reason = summary or (
            f"reason max_age; {n} segments of 2 camera(s): {camera_id} seq {first}..{last} ({n} segments); "
            f"zzz seq 1 (1 segments)"
        )
        audit_log.record(
            s,
            at_us,
            audit_log.SYSTEM,
            audit_log.INTERNAL,
            audit_log.Event(
                "retention.sweep", "ok", window_start_us=body["start_us"], window_end_us=body["end_us"],
                object_id=f"sweep_batch:{batch}", reason=reason, bytes=body["bytes"],
            ),
        )  # fmt: skip
    return int(batch)


def test_a_tombstone_from_before_per_run_events_is_accepted_on_its_batch_event(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt, ("cam1",))
    _old_sweep(rt, "cam1", 1, 6, NOW - DAY)
    assert _chain_holds(rt, "cam1")
    assert _check(rt) == []
    # The sweeper does not extend it (its proof would no longer cover it): the next run gets a tombstone of its own.
    _sweep(rt)
    with rt.db.session() as s:
        tombs = s.execute(
            select(SegmentTombstone.first_seq, SegmentTombstone.last_seq).order_by(SegmentTombstone.first_seq)
        ).all()
    assert [tuple(t) for t in tombs] == [(1, 6), (7, 10)]
    assert _chain_holds(rt, "cam1")
    assert _check(rt) == []


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("clipped", "no retention.sweep event proves it"),
        ("other_range", "no retention.sweep event proves it"),
        ("too_early", "before its batch's newest end"),
        ("deleted_us", "no retention.sweep event proves it"),
    ],
)
def test_an_old_tombstone_its_batch_event_does_not_prove_is_forged(runtime: Runtime, case: str, expected: str) -> None:
    rt = runtime
    _archive(rt, ("cam1",))
    summary = {
        "clipped": "reason max_age; 6 segments of 300 camera(s): a seq 1 (1 segments); b seq 1…",
        "other_range": "reason max_age; 3 segments of 1 camera(s): cam1 seq 1..3 (3 segments)",
    }.get(case)
    at = T0 + 20 * DAY if case == "too_early" else NOW - DAY
    _old_sweep(rt, "cam1", 1, 6, at, summary)
    if case == "deleted_us":
        with rt.db.session() as s:
            s.execute(update(SegmentTombstone).values(deleted_us=SegmentTombstone.deleted_us - DAY))
    p = _only(_check(rt), "cam1", 1, 6)
    assert expected in p.detail, p.detail


def test_checking_reads_each_cameras_events_once(runtime: Runtime) -> None:
    """Hundreds of tombstones and the audit events of many sweeps: one read of tombstones and one of events per
    camera (plus the camera list), whatever the numbers."""
    rt = runtime
    _archive(rt, ("cam1", "cam2", "cam3"))
    rt.settings.sweep_batch_size = 2
    _sweep(rt)
    from sqlalchemy import event

    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(rt.db.engine, "before_cursor_execute", count)
    try:
        assert _check(rt) == []
    finally:
        event.remove(rt.db.engine, "before_cursor_execute", count)
    reads = [st for st in statements if st.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 1 + 2 * 3, reads
    with rt.db.session() as s:
        assert s.scalar(select(func.count()).select_from(SegmentTombstone)) == 3
