"""The segment catalogue: registering finished segments with their chain link, and reading them back."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from integrity import chain
from nvr.models import Camera, RetentionPolicy, Segment

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
    prev = last_segment(session, camera_id)
    end_us = start_us + media_duration_us
    row = Segment(
        camera_id=camera_id,
        seq=(prev.seq + 1) if prev else 1,
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
        prev_link=prev.link if prev else chain.genesis(camera_id),
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
