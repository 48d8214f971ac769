"""Read pins: a segment being read must not be deleted while the read lasts.

A reader (a playback stream, later an export) inserts a ``read_pins`` row naming a camera and a time range and
refreshes its heartbeat while it runs; the retention sweeper asks :func:`pinned` before deleting a segment. A pin
whose heartbeat is older than :data:`PIN_STALE_US` belongs to a process that died, and no longer holds anything.
(The open file descriptor protects the bytes of a running read on POSIX anyway; the pin keeps the row and the
file's name, so the read stays verifiable.)

A playback session's pin (``kind`` ``session``, api.footage) also holds while no request of it runs, until its
``idle_until_us``: between a player's range requests its footage stays protected and it still counts as a stream.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.orm import Session

from nvr.models import ReadPin

PIN_STALE_US = 30_000_000


def live(now_us: int) -> ColumnElement[bool]:
    """A pin that holds at ``now_us``: its heartbeat is fresh, or it is an idle session still within its idle time."""
    return or_(ReadPin.heartbeat_us >= now_us - PIN_STALE_US, ReadPin.idle_until_us >= now_us)


def live_count(s: Session, grant_id: int, now_us: int) -> int:
    return int(
        s.scalar(select(func.count()).select_from(ReadPin).where(ReadPin.grant_id == grant_id, live(now_us))) or 0
    )


def heartbeat(s: Session, pin_id: int, now_us: int) -> None:
    s.execute(update(ReadPin).where(ReadPin.id == pin_id).values(heartbeat_us=now_us))


def unpin(s: Session, pin_id: int) -> None:
    s.execute(delete(ReadPin).where(ReadPin.id == pin_id))


def pinned(s: Session, camera_id: str, start_us: int, end_us: int, now_us: int) -> bool:
    """True while a live read covers any part of [start_us, end_us) of the camera."""
    hit = s.scalar(
        select(ReadPin.id)
        .where(
            ReadPin.camera_id == camera_id,
            ReadPin.start_us < end_us,
            ReadPin.end_us > start_us,
            live(now_us),
        )
        .limit(1)
    )
    return hit is not None
