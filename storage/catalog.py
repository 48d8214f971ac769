"""The segment catalogue: registering finished segments with their chain link, and reading them back."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from integrity import chain
from nvr.models import Camera, RetentionPolicy, Segment, SegmentTombstone

DAY_US = 86_400_000_000


def last_segment(session: Session, camera_id: str) -> Segment | None:
    return session.scalar(select(Segment).where(Segment.camera_id == camera_id).order_by(Segment.seq.desc()).limit(1))


def register_segment(
    session: Session,
    *,
    camera_id: str,
    volume_id: str,
    rel_path: str,
    start_us: int,
    media_duration_us: int,
    size: int,
    frames: int,
    codecs: str,
    clock_offset_us: int,
    sha256: str,
    recovered: bool,
    now_us: int,
    floor_days: int,
) -> Segment:
    """Insert the next row of the camera's chain. Runs inside the caller's transaction; flushes, never commits.

    One writer per camera appends (one worker thread, or start-up recovery before the workers start); the
    unique (camera_id, seq) constraint turns any second writer into an error instead of a forked chain.
    """
    head_seq, head_link = chain_head(session, camera_id)
    end_us = start_us + media_duration_us
    row = Segment(
        camera_id=camera_id,
        seq=head_seq + 1,
        volume_id=volume_id,
        rel_path=rel_path,
        start_us=start_us,
        end_us=end_us,
        media_duration_us=media_duration_us,
        bytes=size,
        frames=frames,
        codecs=codecs,
        clock_offset_us=clock_offset_us,
        sha256=sha256,
        prev_link=head_link,
        recovered=recovered,
        created_us=now_us,
        retain_until_us=end_us + min_days(session, camera_id, floor_days) * DAY_US,
    )
    row.link = chain.link(row.prev_link, linked_fields(row))
    session.add(row)
    session.flush()
    return row


def linked_fields(row: Segment) -> dict[str, object]:
    return {f: getattr(row, f) for f in chain.LINKED_FIELDS}


def min_days(session: Session, camera_id: str, floor_days: int) -> int:
    """Days a segment of the camera finished now must be kept: its policy's ``min_days``, never below the floor."""
    policy_days = session.scalar(
        select(RetentionPolicy.min_days)
        .join(Camera, Camera.policy_id == RetentionPolicy.id)
        .where(Camera.id == camera_id)
    )
    return max(int(policy_days or 0), floor_days)


def chain_head(session: Session, camera_id: str) -> tuple[int, str]:
    """(seq, link) the camera's next segment continues from, across what retention deleted: the newest of its last
    row and its last tombstone (the newest rows may be gone while older, held ones stay); (0, genesis) if none.

    ``register_segment`` must continue from this, not from the last row alone: once every row of a camera (or its
    newest ones) has been swept, restarting at seq 1 from genesis would fork the chain.
    """
    last = last_segment(session, camera_id)
    tomb = session.execute(
        select(SegmentTombstone.last_seq, SegmentTombstone.last_link)
        .where(SegmentTombstone.camera_id == camera_id)
        .order_by(SegmentTombstone.last_seq.desc())
        .limit(1)
    ).first()
    heads = [(last.seq, last.link)] if last else []
    heads += [(int(tomb[0]), str(tomb[1]))] if tomb else []
    return max(heads, default=(0, chain.genesis(camera_id)))


def verify_chain(session: Session, camera_id: str) -> list[chain.ChainProblem]:
    """Recompute the camera's whole chain from its rows and the tombstones of what retention deleted.

    Reads every row of the camera (seq order, linked fields only): an audit-time check, not a per-request one.
    """
    fields = (*chain.LINKED_FIELDS, "prev_link", "link")
    rows = session.execute(
        select(*(getattr(Segment, f) for f in fields)).where(Segment.camera_id == camera_id).order_by(Segment.seq)
    )
    tombstones = session.execute(
        select(
            SegmentTombstone.first_seq,
            SegmentTombstone.last_seq,
            SegmentTombstone.prev_link,
            SegmentTombstone.last_link,
        ).where(SegmentTombstone.camera_id == camera_id)
    )
    return chain.verify_with_tombstones(
        camera_id, [dict(r._mapping) for r in rows], [dict(t._mapping) for t in tombstones]
    )
