"""What protects a segment from deletion, as SQL conditions over ``segments``: the one definition every path uses.

A segment may be deleted only when all of these hold (docs/design/invariants.md, invariant 4):

- its retention has passed: ``retain_until_us`` is past, and so is its end plus its camera's *current* policy's
  ``min_days`` and the system floor (a policy raised while the segment was being registered still counts);
- no evidence hold that is not released covers it (a hold whose release was only requested still protects);
- no live read pins it (a playback stream or export in progress; :data:`storage.pins.PIN_STALE_US`);
- it is not already on the garbage list.

The conditions are correlated ``EXISTS`` subqueries so they run inside the one statement that selects candidates;
there is no window between checking and selecting in which a hold or pin could slip through unseen.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ColumnElement, and_, cast, exists, not_, or_, select

from nvr.models import Camera, EvidenceHold, HoldCamera, ReadPin, RetentionPolicy, Segment
from storage.pins import PIN_STALE_US

DAY_US = 86_400_000_000
PROTECTING_HOLD_STATES = ("active", "release_requested")


def hold_protects(camera_id: Any, start_us: Any, end_us: Any) -> ColumnElement[bool]:
    """Over ``hold_cameras`` joined to ``evidence_holds``: an unreleased hold names the camera and overlaps
    [start_us, end_us) (an open end reaches to the future). Values or columns; the one definition of hold coverage,
    used for segments here, for new segments and for listings in retention.holds."""
    return and_(
        HoldCamera.camera_id == camera_id,
        EvidenceHold.state.in_(PROTECTING_HOLD_STATES),
        EvidenceHold.start_us < end_us,
        or_(EvidenceHold.end_us.is_(None), EvidenceHold.end_us > start_us),
    )


def protecting_hold_exists(camera_id: Any, start_us: Any, end_us: Any) -> ColumnElement[bool]:
    return exists(
        select(HoldCamera.hold_id)
        .join(EvidenceHold, EvidenceHold.id == HoldCamera.hold_id)
        .where(hold_protects(camera_id, start_us, end_us))
    )


def held() -> ColumnElement[bool]:
    """An unreleased hold names the segment's camera and overlaps it."""
    return protecting_hold_exists(Segment.camera_id, Segment.start_us, Segment.end_us)


def pinned(now_us: int) -> ColumnElement[bool]:
    """A live read covers part of the segment."""
    return exists(
        select(ReadPin.id).where(
            ReadPin.camera_id == Segment.camera_id,
            ReadPin.start_us < Segment.end_us,
            ReadPin.end_us > Segment.start_us,
            ReadPin.heartbeat_us >= now_us - PIN_STALE_US,
        )
    )


def retention_passed(now_us: int, floor_days: int) -> ColumnElement[bool]:
    """Stored ``retain_until_us`` is past, and the current policy and floor would not keep it either."""
    policy_keeps = exists(
        select(Camera.id)
        .join(RetentionPolicy, RetentionPolicy.id == Camera.policy_id)
        .where(
            Camera.id == Segment.camera_id,
            Segment.end_us + cast(RetentionPolicy.min_days, BigInteger) * DAY_US > now_us,
        )
    )
    return and_(
        Segment.retain_until_us <= now_us,
        Segment.end_us + floor_days * DAY_US <= now_us,
        not_(policy_keeps),
    )


def deletable(now_us: int, floor_days: int) -> ColumnElement[bool]:
    """Everything that must hold before any code path may delete the segment."""
    return and_(
        Segment.sweep_batch_id.is_(None),
        retention_passed(now_us, floor_days),
        not_(held()),
        not_(pinned(now_us)),
    )
