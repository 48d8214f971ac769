"""Per-camera recording status, computed from the catalogue, so any process can answer ``nvr status``.

States: ``recording`` (segments are being written), ``reconnecting`` (the stream ended or is being opened, and
the worker is trying again), ``error`` (a fault a person must look at: unreachable, refused credentials, no video,
unsupported codec, volume missing or full; the worker keeps retrying), ``offline`` (no recorder is working on the
camera: the process is not running, its heartbeat is stale, or the camera is not active).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from nvr.clock import iso
from nvr.models import Camera, CameraStateChange, Gap, RecorderState, Segment

DAY_US = 86_400_000_000
# Three missed heartbeats (written every 5 s) and the recorder is taken for gone.
STALE_US = 20_000_000


@dataclass
class GapView:
    start: str | None
    end: str | None
    reason: str
    detail: str | None


@dataclass
class CameraStatus:
    camera_id: str
    name: str
    camera_state: str
    state: str
    reason: str | None
    since: str | None
    last_segment_end: str | None
    segments_24h: int
    gaps_24h: list[GapView] = field(default_factory=list)
    recorded_share_24h: float | None = None
    """Recorded time (finished segments, plus the one being written while recording) over the part of the last
    24 h in which the camera was active (None if it never was)."""
    window_start: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _active_since(session: Session, camera_id: str, window_start: int) -> int | None:
    """When, within the window, the camera was first active: the share is measured from there."""
    changes = list(
        session.execute(
            select(CameraStateChange.to_state, CameraStateChange.at_us)
            .where(CameraStateChange.camera_id == camera_id)
            .order_by(CameraStateChange.id)
        )
    )
    active_from = None
    for to_state, at in changes:
        if to_state == "active" and active_from is None:
            active_from = at
    if active_from is None:
        return None
    return max(active_from, window_start)


def camera_status(session: Session, cam: Camera, now_us: int) -> CameraStatus:
    window_start = now_us - DAY_US
    rs = session.get(RecorderState, cam.id)
    state: str
    reason: str | None
    since: int | None
    if cam.state != "active":
        state, reason, since = "offline", f"camera is {cam.state}", cam.state_changed_us
    elif rs is None:
        state, reason, since = "offline", "no recorder has run for this camera", None
    elif rs.state != "offline" and now_us - rs.heartbeat_us > STALE_US:
        state, reason, since = "offline", f"recorder not running (last heartbeat {iso(rs.heartbeat_us)})", rs.since_us
    else:
        state, reason, since = rs.state, rs.reason, rs.since_us
    last_end = session.scalar(select(func.max(Segment.end_us)).where(Segment.camera_id == cam.id))
    segs: list[tuple[int, int]] = [
        (a, b)
        for a, b in session.execute(
            select(Segment.start_us, Segment.end_us).where(
                Segment.camera_id == cam.id, Segment.end_us > window_start, Segment.start_us < now_us
            )
        )
    ]
    n_segments = len(segs)
    gaps = list(
        session.scalars(
            select(Gap)
            .where(Gap.camera_id == cam.id, or_(Gap.end_us.is_(None), Gap.end_us > window_start))
            .order_by(Gap.start_us)
        )
    )
    base = _active_since(session, cam.id, window_start)
    share = None
    if state == "recording" and rs is not None:
        # The segment being written is footage too (its fragments are on disk); count it up to now.
        open_from = last_end if last_end is not None and last_end >= rs.since_us - 5_000_000 else rs.since_us
        segs.append((open_from, now_us))
    if base is not None and now_us > base:
        # Union of recorded intervals clipped to [base, now]; segments of one run touch, so merge as we go.
        covered = 0
        cur_s: int | None = None
        cur_e: int | None = None
        for s, e in sorted((max(s, base), min(e, now_us)) for s, e in segs):
            if e <= s:
                continue
            if cur_e is None or s > cur_e:
                if cur_e is not None:
                    assert cur_s is not None  # cur_s and cur_e are only ever assigned together
                    covered += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        if cur_e is not None:
            assert cur_s is not None  # cur_s and cur_e are only ever assigned together
            covered += cur_e - cur_s
        share = round(min(1.0, covered / (now_us - base)), 4)
    return CameraStatus(
        camera_id=cam.id,
        name=cam.name,
        camera_state=cam.state,
        state=state,
        reason=reason,
        since=iso(since),
        last_segment_end=iso(last_end),
        segments_24h=n_segments,
        gaps_24h=[GapView(iso(g.start_us), iso(g.end_us), g.reason, g.detail) for g in gaps],
        recorded_share_24h=share,
        window_start=iso(base) if base is not None else None,
    )


def all_status(session: Session, now_us: int, include_inactive: bool = True) -> list[CameraStatus]:
    q = select(Camera).order_by(Camera.id)
    if not include_inactive:
        q = q.where(Camera.state == "active")
    return [camera_status(session, c, now_us) for c in session.scalars(q)]
