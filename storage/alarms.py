"""Storage alarms, computed from the volumes and the recorders' reported states, so any process can tell.

A volume is ``ok``, ``high_water`` (fuller than the sweeper's high-water mark: it is deleting expired footage),
``critical`` (free space below ``volume_min_free_bytes``: the recorder stops writing there) or ``unavailable``
(missing, foreign identity, unreadable). ``storage_full`` is raised when a camera's recorder stopped because no
volume had room: the recorder reports ``error`` with a reason starting ``storage_full``. ``integrity_mismatch`` is
raised while the scrubber or ``nvr verify --record`` has an open finding (a segment whose bytes no longer match
its hash, a missing file…; integrity.verify_archive). ``checkpoints_stale`` is raised when checkpoints were being
written and the newest is now more than three intervals old (the scheduler cannot sign: a lost key file, a
database error; its log says which), since footage recorded meanwhile is not yet covered by any signature.
``clock_untrusted`` is raised while the wall clock runs ahead of the trusted time (integrity.trusted_time: the newest
signed checkpoint plus the monotonic time since) by more than ``clock_tolerance_minutes``: retention deletes nothing
meanwhile. It is per process (its own monotonic reading), so the caller passes the process's status in.
``master_key_missing`` is raised when footage is (or is to be) encrypted at rest and the master-key folder holds no
usable key (gone, unreadable, a damaged file or one readable by others): encrypted footage can then be neither
recorded nor played back, and the detail says which.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from integrity.trusted_time import ClockStatus
from integrity.verify_archive import open_counts
from nvr.clock import iso
from nvr.config import Settings
from nvr.errors import NvrError
from nvr.models import Camera, Checkpoint, RecorderState, Segment
from nvr.status import STALE_US
from storage import volumes as vol
from storage.keyring import Keyring


@dataclass
class VolumeState:
    id: str | None
    path: str
    state: str
    total_bytes: int | None = None
    free_bytes: int | None = None
    used_percent: float | None = None
    detail: str | None = None


@dataclass
class StorageAlarms:
    volumes: list[VolumeState] = field(default_factory=list)
    storage_full_cameras: list[str] = field(default_factory=list)
    storage_full_since: str | None = None
    integrity_findings: dict[str, int] = field(default_factory=dict)
    newest_checkpoint: str | None = None
    checkpoints_stale: bool = False
    clock: ClockStatus | None = None
    master_key: str | None = None
    """Why encryption at rest has no usable master key (``code: message``), or None when it has one or is unused."""

    @property
    def storage_full(self) -> bool:
        return bool(self.storage_full_cameras)

    @property
    def clock_untrusted(self) -> bool:
        return self.clock is not None and not self.clock.trusted

    @property
    def codes(self) -> list[str]:
        out = []
        if self.storage_full:
            out.append("storage_full")
        if any(v.state == "critical" for v in self.volumes) and not self.storage_full:
            out.append("volume_critical")
        if any(v.state == "unavailable" for v in self.volumes):
            out.append("volume_unavailable")
        if any(self.integrity_findings.values()):
            out.append("integrity_mismatch")
        if self.checkpoints_stale:
            out.append("checkpoints_stale")
        if self.clock_untrusted:
            out.append("clock_untrusted")
        if self.master_key is not None:
            out.append("master_key_missing")
        return out

    def as_dict(self) -> dict:
        return {
            "alarms": self.codes,
            "storage_full": {"cameras": self.storage_full_cameras, "since": self.storage_full_since}
            if self.storage_full
            else None,
            "volumes": [asdict(v) for v in self.volumes],
            "integrity_findings": {k: n for k, n in self.integrity_findings.items() if n},
            "newest_checkpoint": self.newest_checkpoint,
            "clock": None if self.clock is None else self.clock.as_dict(),
            "master_key": self.master_key,
        }


def volume_state(settings: Settings, database_id: str, volume_id: str | None, path: Path) -> VolumeState:
    try:
        vol.check_volume(path, database_id, volume_id)
        usage = shutil.disk_usage(path)
    except NvrError as exc:
        return VolumeState(volume_id, str(path), "unavailable", detail=f"{exc.code}: {exc.message}")
    except OSError as exc:
        return VolumeState(volume_id, str(path), "unavailable", detail=str(exc))
    used = 100.0 * (usage.total - usage.free) / usage.total if usage.total else 100.0
    if usage.free < settings.volume_min_free_bytes:
        state = "critical"
    elif used > settings.retention_high_water_percent:
        state = "high_water"
    else:
        state = "ok"
    return VolumeState(volume_id, str(path), state, usage.total, usage.free, round(used, 2))


def storage_alarms(
    session: Session, settings: Settings, database_id: str, now_us: int, clock: ClockStatus | None = None
) -> StorageAlarms:
    """``clock``: this process's trusted-time status (``TrustedClock.status()``), for ``clock_untrusted``."""
    out = StorageAlarms(clock=clock)
    for path in settings.effective_volumes:
        row = session.scalar(select(vol.Volume).where(vol.Volume.path == str(path)))
        out.volumes.append(volume_state(settings, database_id, row.id if row else None, path))
    rows = session.execute(
        select(RecorderState.camera_id, RecorderState.since_us)
        .join(Camera, Camera.id == RecorderState.camera_id)
        .where(
            Camera.state == "active",
            RecorderState.state == "error",
            RecorderState.reason.like("storage_full%"),
            RecorderState.heartbeat_us >= now_us - STALE_US,
        )
        .order_by(RecorderState.camera_id)
    ).all()
    out.storage_full_cameras = [r[0] for r in rows]
    if rows:
        out.storage_full_since = iso(min(r[1] for r in rows))
    out.integrity_findings = open_counts(session)
    out.master_key = master_key_problem(session, settings)
    newest = session.scalar(select(func.max(Checkpoint.created_us)))
    if newest is not None:
        out.newest_checkpoint = iso(newest)
        out.checkpoints_stale = now_us - newest > 3 * settings.checkpoint_interval_minutes * 60_000_000
    return out


def master_key_problem(session: Session, settings: Settings) -> str | None:
    """Why there is no usable master key while encryption at rest is in use (setting, an encrypted volume or an
    encrypted segment), or None."""
    in_use = (
        settings.encryption_at_rest
        or session.scalar(select(vol.Volume.id).where(vol.Volume.encryption.is_not(None)).limit(1)) is not None
        or session.scalar(select(Segment.id).where(Segment.encryption.is_not(None)).limit(1)) is not None
    )
    if not in_use:
        return None
    try:
        Keyring(settings.master_keys_dir).active()
    except NvrError as exc:
        return f"{exc.code}: {exc.message}"
    except OSError as exc:
        return f"master_key_missing: {settings.master_keys_dir}: {exc}"
    return None
