"""Capacity forecast: how many days of footage each volume can keep for each camera, and whose policy it cannot meet.

The model (docs/retention/policies.md, "Capacity", has the formulas and their limits):

- A camera's rate is *measured*: the bytes of its segments that ended in the last 7 days divided by their recorded
  media time in days. Fewer than an hour of media in that window is no measurement (a few seconds say little
  about a day); such a camera adds nothing to the forecast and says why. A camera writing to several volumes
  splits its rate by its share of recent bytes on each.
- A volume can give footage ``usable = free - critical reserve + unheld footage`` bytes: every byte not under an
  evidence hold becomes deletable once old enough, held bytes are there for good, and the reserve is where the
  recorder stops writing.
- The sweeper deletes only footage past its retention, oldest first across cameras. So in the steady state every
  camera keeps its effective ``min_days`` (policy, never below the floor) and the space left over is shared
  oldest-first: each camera keeps ``clamp(L, min_days, max_days)`` days, the level ``L`` chosen so the volume is
  exactly used. When even the minimums do not fit (``sum rate * min_days > usable``) the volume fills with footage
  still inside retention: the cameras with the shortest retention are cut at their minimum and the others keep
  ``min(T, min_days)`` days, ``T`` again chosen so the volume is exactly used; a camera left below its minimum
  cannot have its policy met (``policy_unmeetable``), and recording there would stop for lack of space.

:func:`forecast` takes overrides (another policy for some cameras, a camera not yet recording) so a change can be
judged before it is saved; :func:`check_change` refuses a change that makes any camera's outlook worse unless it is
acknowledged.
"""

from __future__ import annotations

import math
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nvr.clock import iso
from nvr.config import Settings
from nvr.errors import Kind, NvrError
from nvr.models import Camera, Meta, RetentionPolicy, Segment, Volume
from retention.protect import DAY_US, deletable, held
from storage import volumes as vol

WINDOW_DAYS = 7
WINDOW_US = WINDOW_DAYS * DAY_US
MIN_MEASURED_US = 3600 * 1_000_000
"""Less recorded media than this in the window is no measurement."""
_EPSILON_DAYS = 1e-6


@dataclass
class CameraInput:
    """One camera as the catalogue has it: its policy and what it recorded in the window, per volume."""

    camera_id: str
    state: str
    policy: str
    min_days: int
    max_days: int | None
    recent_bytes: int = 0
    recent_media_us: int = 0
    bytes_by_volume: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        """Measured bytes per day of recorded media, or None without enough footage to tell."""
        if self.recent_media_us < MIN_MEASURED_US or self.recent_bytes <= 0:
            return None
        return self.recent_bytes * DAY_US / self.recent_media_us

    @property
    def writes(self) -> bool:
        """Counts towards the volumes' intake: a decommissioned camera never records again."""
        return self.state != "decommissioned"


@dataclass
class VolumeInput:
    id: str | None
    path: str
    error: str | None = None
    free_bytes: int | None = None
    total_bytes: int | None = None
    footage_bytes: int = 0
    held_bytes: int = 0
    deletable_bytes: int | None = None
    """What may be deleted this moment; read for the forecast shown, not for checking a change (it needs none)."""


@dataclass
class Snapshot:
    """Everything the forecast reads, read once, so a before/after comparison sees the same disk and catalogue."""

    now_us: int
    floor_days: int
    reserve_bytes: int
    default_policy: tuple[str, int, int | None]
    cameras: dict[str, CameraInput]
    volumes: list[VolumeInput]


@dataclass(frozen=True)
class CapacityWarning:
    code: str
    camera: str
    needs_days: int
    holds_days: float
    volume: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "camera": self.camera,
            "needs_days": self.needs_days,
            "holds_days": round(self.holds_days, 2),
            "volume": self.volume,
        }

    def text(self) -> str:
        return (
            f"camera {self.camera} needs {self.needs_days} days but volume {self.volume} holds only "
            f"{self.holds_days:.1f} days of its footage"
        )


@dataclass
class Forecast:
    snapshot: Snapshot
    volumes: list[dict[str, Any]]
    cameras: list[dict[str, Any]]
    warnings: list[CapacityWarning]

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": iso(self.snapshot.now_us),
            "window_days": WINDOW_DAYS,
            "floor_days": self.snapshot.floor_days,
            "critical_reserve_bytes": self.snapshot.reserve_bytes,
            "volumes": self.volumes,
            "cameras": self.cameras,
            "warnings": [w.as_dict() for w in self.warnings],
        }


# --- reading ------------------------------------------------------------------------------------------------
def snapshot(
    session: Session, settings: Settings, now_us: int, volumes: Sequence[Path], *, deletable_now: bool = True
) -> Snapshot:
    default = session.execute(
        select(RetentionPolicy.name, RetentionPolicy.min_days, RetentionPolicy.max_days).where(
            RetentionPolicy.is_default.is_(True)
        )
    ).first()
    database_id = session.scalar(select(Meta.value).where(Meta.key == "database_id")) or ""
    return Snapshot(
        now_us=now_us,
        floor_days=settings.retention_floor_days,
        reserve_bytes=settings.volume_min_free_bytes,
        default_policy=(default[0], default[1], default[2]) if default else ("", settings.retention_floor_days, None),
        cameras=_cameras(session, now_us),
        volumes=[
            _volume(session, database_id, Path(p), now_us, settings.retention_floor_days, deletable_now)
            for p in volumes
        ],
    )


def _cameras(session: Session, now_us: int) -> dict[str, CameraInput]:
    rows = session.execute(
        select(Camera.id, Camera.state, RetentionPolicy.name, RetentionPolicy.min_days, RetentionPolicy.max_days)
        .join(RetentionPolicy, RetentionPolicy.id == Camera.policy_id)
        .order_by(Camera.id)
    )
    cams = {r[0]: CameraInput(r[0], r[1], r[2], r[3], r[4]) for r in rows}
    recent = session.execute(
        select(Segment.camera_id, Segment.volume_id, func.sum(Segment.bytes), func.sum(Segment.media_duration_us))
        .where(Segment.end_us > now_us - WINDOW_US, Segment.sweep_batch_id.is_(None))
        .group_by(Segment.camera_id, Segment.volume_id)
    )
    for camera_id, volume_id, size, media in recent:
        c = cams[camera_id]
        c.recent_bytes += int(size or 0)
        c.recent_media_us += int(media or 0)
        c.bytes_by_volume[volume_id] = int(size or 0)
    return cams


def _bytes_by_volume(session: Session, volume_id: str, *conds: Any) -> int:
    return int(session.scalar(select(func.sum(Segment.bytes)).where(Segment.volume_id == volume_id, *conds)) or 0)


def _volume(
    session: Session, database_id: str, path: Path, now_us: int, floor_days: int, deletable_now: bool
) -> VolumeInput:
    row = session.scalar(select(Volume).where(Volume.path == str(path)))
    if row is None:
        return VolumeInput(None, str(path), error="volume_not_registered")
    out = VolumeInput(row.id, row.path)
    try:
        vol.check_volume(path, database_id, row.id)
        usage = shutil.disk_usage(path)
    except NvrError as exc:
        out.error = exc.code
    except OSError:
        out.error = "volume_unavailable"
    else:
        out.free_bytes, out.total_bytes = usage.free, usage.total
    out.footage_bytes = _bytes_by_volume(session, row.id)
    out.held_bytes = _bytes_by_volume(session, row.id, held())
    if deletable_now:
        out.deletable_bytes = _bytes_by_volume(session, row.id, deletable(now_us, floor_days))
    return out


# --- the model ----------------------------------------------------------------------------------------------
def level(items: Sequence[tuple[float, float, float]], space: float) -> float:
    """The ``x`` at which ``sum(rate * clamp(x, lo, hi))`` over ``items`` (rate, lo, hi) reaches ``space``.

    The sum is continuous, piecewise linear and rising in ``x``; the caller ensures ``sum(rate * lo) <= space``. Returns
    ``math.inf`` when even an unbounded ``x`` leaves space over (every item capped by a finite ``hi``).
    """

    def used(x: float) -> float:
        return sum(r * min(max(x, lo), hi) for r, lo, hi in items)

    points = sorted({lo for _, lo, _ in items} | {hi for _, _, hi in items if hi != math.inf})
    prev = points[0]
    if used(prev) >= space:
        return prev
    for p in points[1:]:
        if used(p) >= space:  # used(prev) < space <= used(p): the crossing lies in between
            return prev + (space - used(prev)) * (p - prev) / (used(p) - used(prev))
        prev = p
    slope = sum(r for r, _, hi in items if hi == math.inf)  # prev is the last breakpoint: every lo is below it
    return math.inf if slope == 0 else prev + (space - used(prev)) / slope


@dataclass(frozen=True)
class Flow:
    """One camera's footage arriving on one volume."""

    camera_id: str
    rate: float
    needs_days: int
    max_days: float


def days_held(flows: Sequence[Flow], usable: float) -> dict[str, float]:
    """Days of footage each flow keeps in the steady state (see the module's docstring)."""
    if not flows:
        return {}
    if sum(f.rate * f.needs_days for f in flows) <= usable:
        x = level([(f.rate, f.needs_days, f.max_days) for f in flows], usable)
        return {f.camera_id: min(max(x, f.needs_days), f.max_days) for f in flows}
    x = level([(f.rate, 0.0, f.needs_days) for f in flows], usable)
    return {f.camera_id: min(x, f.needs_days) for f in flows}


def _policy(snap: Snapshot, c: CameraInput | None, camera_id: str, min_over: dict, max_over: dict) -> tuple[int, Any]:
    """Effective (min_days, max_days) of a camera under the overrides; max_days ``math.inf`` when unlimited."""
    base_min, base_max = (c.min_days, c.max_days) if c else snap.default_policy[1:]
    min_days = max(int(min_over.get(camera_id, base_min)), snap.floor_days)
    max_days = max_over.get(camera_id, base_max)
    return min_days, math.inf if max_days is None else max(int(max_days), min_days)


def _roomiest(snap: Snapshot) -> VolumeInput | None:
    """Where the recorder would put a new camera: the readable volume with the most free space."""
    ok = [v for v in snap.volumes if v.free_bytes is not None]
    return max(ok, key=lambda v: v.free_bytes or 0, default=None)


def _flows(snap: Snapshot, min_over: dict, max_over: dict, extra: dict[str, float]) -> dict[str, list[Flow]]:
    by_volume: dict[str, list[Flow]] = {}
    for c in snap.cameras.values():
        rate = c.rate
        if rate is None or not c.writes or c.camera_id in extra:
            continue
        need, cap = _policy(snap, c, c.camera_id, min_over, max_over)
        for volume_id, size in c.bytes_by_volume.items():
            if size > 0:
                by_volume.setdefault(volume_id, []).append(Flow(c.camera_id, rate * size / c.recent_bytes, need, cap))
    target = _roomiest(snap)
    for camera_id, rate in extra.items():
        if target is not None and target.id is not None and rate > 0:
            need, cap = _policy(snap, snap.cameras.get(camera_id), camera_id, min_over, max_over)
            by_volume.setdefault(target.id, []).append(Flow(camera_id, float(rate), need, cap))
    return by_volume


def usable_bytes(v: VolumeInput, reserve: int) -> int | None:
    if v.free_bytes is None:
        return None
    return max(0, v.free_bytes - reserve + v.footage_bytes - v.held_bytes)


def compute(
    snap: Snapshot,
    *,
    min_days_override: dict[str, int] | None = None,
    max_days_override: dict[str, int | None] | None = None,
    extra_cameras: dict[str, float] | None = None,
) -> Forecast:
    min_over, max_over, extra = min_days_override or {}, max_days_override or {}, extra_cameras or {}
    flows = _flows(snap, min_over, max_over, extra)
    held_days: dict[str, dict[str, float]] = {}
    volumes, warnings = [], []
    for v in snap.volumes:
        here = flows.get(v.id or "", [])
        usable = usable_bytes(v, snap.reserve_bytes)
        days = days_held(here, usable) if usable is not None else {}
        intake = sum(f.rate for f in here)
        for f in here:
            if f.camera_id in days:
                held_days.setdefault(f.camera_id, {})[v.id or ""] = days[f.camera_id]
                if days[f.camera_id] < f.needs_days - _EPSILON_DAYS:
                    warnings.append(
                        CapacityWarning("policy_unmeetable", f.camera_id, f.needs_days, days[f.camera_id], v.id or "")
                    )
        volumes.append(_volume_view(v, snap.reserve_bytes, usable, intake, [f.camera_id for f in here]))
    cameras = [
        _camera_view(snap, c, min_over, max_over, flows, held_days)
        for c in snap.cameras.values()
        if c.camera_id not in extra
    ]
    cameras += [_new_camera_view(snap, cid, rate, min_over, max_over, held_days) for cid, rate in extra.items()]
    return Forecast(snap, volumes, cameras, warnings)


def _round(x: float | None) -> float | None:
    return None if x is None or x == math.inf else round(x, 2)


def _volume_view(v: VolumeInput, reserve: int, usable: int | None, intake: float, cams: list[str]) -> dict[str, Any]:
    return {
        "id": v.id,
        "path": v.path,
        "error": v.error,
        "free_bytes": v.free_bytes,
        "total_bytes": v.total_bytes,
        "critical_reserve_bytes": reserve,
        "footage_bytes": v.footage_bytes,
        "held_bytes": v.held_bytes,
        "deletable_now_bytes": v.deletable_bytes,
        "usable_bytes": usable,
        "bytes_per_day": round(intake, 1),
        "days_at_current_rate": _round(usable / intake) if usable is not None and intake > 0 else None,
        "cameras": sorted(set(cams)),
    }


def _note(c: CameraInput) -> str | None:
    if not c.writes:
        return "decommissioned: records nothing more"
    if c.rate is not None:
        return None
    if c.recent_media_us == 0:
        return f"not measured: no footage in the last {WINDOW_DAYS} days"
    return (
        f"not measured: only {c.recent_media_us / 60_000_000:.0f} minute(s) of footage in the last {WINDOW_DAYS} "
        f"days (at least {MIN_MEASURED_US // 60_000_000} needed)"
    )


def _camera_view(
    snap: Snapshot, c: CameraInput, min_over: dict, max_over: dict, flows: dict[str, list[Flow]], kept: dict
) -> dict[str, Any]:
    need, cap = _policy(snap, c, c.camera_id, min_over, max_over)
    per_volume = [
        {
            "volume": vid,
            "bytes_per_day": round(f.rate, 1),
            "share": round(f.rate / c.rate, 4) if c.rate else None,
            "holds_days": _round(kept.get(c.camera_id, {}).get(vid)),
        }
        for vid, fs in sorted(flows.items())
        for f in fs
        if f.camera_id == c.camera_id
    ]
    days = kept.get(c.camera_id)
    return {
        "camera": c.camera_id,
        "state": c.state,
        "policy": c.policy,
        "min_days": need,
        "max_days": None if cap == math.inf else cap,
        "measured": c.rate is not None,
        "estimated": False,
        "bytes_per_day": None if c.rate is None else round(c.rate, 1),
        "measured_media_hours": round(c.recent_media_us / 3_600_000_000, 2),
        "volumes": per_volume,
        "holds_days": _round(min(days.values())) if days else None,
        "note": _note(c),
    }


def _new_camera_view(
    snap: Snapshot, camera_id: str, rate: float, min_over: dict, max_over: dict, kept: dict
) -> dict[str, Any]:
    need, cap = _policy(snap, snap.cameras.get(camera_id), camera_id, min_over, max_over)
    days = kept.get(camera_id)
    return {
        "camera": camera_id,
        "state": "new",
        "policy": snap.cameras[camera_id].policy if camera_id in snap.cameras else snap.default_policy[0],
        "min_days": need,
        "max_days": None if cap == math.inf else cap,
        "measured": False,
        "estimated": True,
        "bytes_per_day": round(rate, 1),
        "measured_media_hours": 0.0,
        "volumes": [
            {"volume": vid, "bytes_per_day": round(rate, 1), "share": 1.0, "holds_days": _round(d)}
            for vid, d in (days or {}).items()
        ],
        "holds_days": _round(min(days.values())) if days else None,
        "note": "estimated: the median measured rate of the other cameras",
    }


# --- entry points -------------------------------------------------------------------------------------------
def forecast(
    session: Session,
    settings: Settings,
    now_us: int,
    volumes: Sequence[Path],
    *,
    min_days_override: dict[str, int] | None = None,
    max_days_override: dict[str, int | None] | None = None,
    extra_cameras: dict[str, float] | None = None,
) -> Forecast:
    """The forecast over the configured ``volumes``; the overrides describe a change not saved yet: another
    ``min_days``/``max_days`` for some cameras, cameras not recording yet with their expected bytes per day."""
    return compute(
        snapshot(session, settings, now_us, volumes),
        min_days_override=min_days_override,
        max_days_override=max_days_override,
        extra_cameras=extra_cameras,
    )


def estimated_rate(snap: Snapshot) -> float | None:
    """A new camera's expected bytes per day: the median measured rate of the cameras still recording."""
    rates = [r for c in snap.cameras.values() if c.writes and (r := c.rate) is not None]
    return statistics.median(rates) if rates else None


def worse(before: list[CapacityWarning], after: list[CapacityWarning]) -> list[CapacityWarning]:
    """Warnings of ``after`` that are new, or where a camera needs more or holds less than ``before``."""
    old = {(w.camera, w.volume): w for w in before}
    out = []
    for w in after:
        prior = old.get((w.camera, w.volume))
        if prior is None or w.needs_days > prior.needs_days or w.holds_days < prior.holds_days - _EPSILON_DAYS:
            out.append(w)
    return out


def check_change(
    session: Session,
    settings: Settings,
    now_us: int,
    volumes: Sequence[Path],
    *,
    acknowledge: bool,
    min_days_override: dict[str, int] | None = None,
    max_days_override: dict[str, int | None] | None = None,
    new_camera: str | None = None,
) -> list[CapacityWarning]:
    """The warnings a change would add (a camera newly or further below its policy). Raises
    ``capacity_insufficient`` when there are some and they were not acknowledged; returns them otherwise.

    ``new_camera`` names a camera about to record: its rate is estimated by :func:`estimated_rate` (no measured
    camera, no estimate and so no warning)."""
    snap = snapshot(session, settings, now_us, volumes, deletable_now=False)
    extra = {}
    if new_camera is not None and (rate := estimated_rate(snap)) is not None:
        extra[new_camera] = rate
    before = compute(snap).warnings
    after = compute(
        snap, min_days_override=min_days_override, max_days_override=max_days_override, extra_cameras=extra
    ).warnings
    added = worse(before, after)
    if added and not acknowledge:
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "capacity_insufficient",
            "the capacity forecast says "
            + "; ".join(w.text() for w in added)
            + '. Free or add space, or save anyway by confirming (API: "acknowledge_capacity_warning": true; '
            "CLI: --yes)",
        )
    return added


def acknowledged_note(warnings: list[CapacityWarning]) -> str:
    """For the audit event's reason of a change saved despite warnings."""
    return "acknowledged capacity warning(s): " + "; ".join(w.text() for w in warnings) if warnings else ""
