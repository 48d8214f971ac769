"""What every camera worker shares: settings, database, clock, volumes and the status board."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, update

from integrity import audit_log, suites
from nvr.clock import Clock
from nvr.cluster import Membership
from nvr.config import Settings
from nvr.db import Database
from nvr.errors import Kind, NvrError
from nvr.models import CameraEvent, Gap, RecorderState
from nvr.recorder.live import LiveHub, ViewerLimits
from storage import volumes as vol
from storage.keyring import Keyring, MasterKey

log = logging.getLogger(__name__)


@dataclass
class RecorderContext:
    settings: Settings
    db: Database
    clock: Clock
    database_id: str
    volumes: list[vol.VolumeInfo]
    on_storage_full: Callable[[], None] | None = None
    """Called when a worker finds no volume with room (``nvr serve`` wakes the sweeper with it)."""
    live: LiveHub | None = None
    """Where the workers publish their packets for live viewers (nvr.recorder.live); None: no live view."""
    membership: Membership | None = None
    """This process as a cluster node (nvr.cluster): which cameras it may record, under which lease tokens. None:
    record every active camera without fencing (tests and tools that drive a recorder directly)."""
    _last_hash_alg: str = field(default=suites.DEFAULT_HASH, init=False, repr=False)

    def hash_alg(self) -> str:
        """The hash algorithm of the active suite for a segment starting now (integrity.audit_log.active_hash_alg,
        cached for a few seconds). A value a little stale after a rotation is harmless: every segment row records
        the algorithm its digest and link use."""
        try:
            with self.db.session() as s:
                self._last_hash_alg = audit_log.active_hash_alg(s)
        except Exception as exc:  # the database away must not stop recording: the row says which was used
            log.warning(
                "cannot read the active crypto suite (%s); hashing new segments with %s", exc, self._last_hash_alg
            )
        return self._last_hash_alg

    @property
    def live_limits(self) -> ViewerLimits:
        return ViewerLimits(self.settings.live_viewer_queue_fragments, self.settings.live_viewer_queue_bytes)

    @property
    def keyring(self) -> Keyring:
        return Keyring(self.settings.master_keys_dir)

    def encryption_for(self, volume: vol.VolumeInfo, hash_alg: str) -> tuple[str, MasterKey] | None:
        """(cipher, master key) for a new segment on ``volume``, or None when the volume is not encrypted. The cipher
        is the one of the suite whose hash the segment uses (AES-256-GCM with SHA-256, SM4-GCM with SM3).

        Raises ``master_key_missing`` when the volume is encrypted and no master key is there: the recorder then
        stops with an alarm rather than write plaintext where ciphertext is expected."""
        if not (volume.encrypted or self.settings.encryption_at_rest):
            return None
        cipher = next(s.cipher for s in suites.SUITES.values() if s.hash_alg == hash_alg)
        return cipher, self.keyring.active()

    def pick_volume(self) -> vol.VolumeInfo:
        """The volume with the most free space above the critical mark, after checking its identity.

        Raises ``volume_identity_*`` when a folder is not this database's volume (say, a disk not mounted) and
        ``storage_full`` when every usable volume is below the critical mark: writing stops rather than breaking
        the retention floor or filling a system disk.
        """
        best: tuple[int, vol.VolumeInfo] | None = None
        problems = []
        for v in self.volumes:
            try:
                vol.check_volume(v.path, self.database_id, v.id)
                free = vol.free_bytes(v.path)
            except NvrError as exc:
                problems.append(exc)
                continue
            except OSError as exc:
                problems.append(NvrError(Kind.UNAVAILABLE, "volume_unavailable", f"volume {v.path}: {exc}"))
                continue
            if free < self.settings.volume_min_free_bytes:
                problems.append(
                    NvrError(
                        Kind.UNAVAILABLE,
                        "storage_full",
                        f"volume {v.path} has {free} bytes free, below the critical mark "
                        f"{self.settings.volume_min_free_bytes}",
                    )
                )
                continue
            if best is None or free > best[0]:
                best = (free, v)
        if best is not None:
            return best[1]
        if any(p.code == "storage_full" for p in problems):
            raise NvrError(Kind.UNAVAILABLE, "storage_full", "; ".join(p.message for p in problems))
        if problems:
            raise problems[0]
        raise NvrError(Kind.UNAVAILABLE, "volume_unavailable", "no archive volume is configured")

    # --- status board -------------------------------------------------------------------------------------
    def set_state(self, camera_id: str, state: str, reason: str | None) -> None:
        now = self.clock.now_us()
        with self.db.session() as s:
            row = s.get(RecorderState, camera_id)
            if row is None:
                s.add(RecorderState(camera_id=camera_id, state=state, reason=reason, since_us=now, heartbeat_us=now))
            else:
                if row.state != state:
                    row.since_us = now
                row.state, row.reason, row.heartbeat_us = state, reason, now

    def heartbeat(self, camera_ids: list[str]) -> None:
        if not camera_ids:
            return
        with self.db.session() as s:
            s.execute(
                update(RecorderState)
                .where(RecorderState.camera_id.in_(camera_ids))
                .values(heartbeat_us=self.clock.now_us())
            )

    def event(self, camera_id: str, kind: str, detail: str) -> None:
        with self.db.session() as s:
            s.add(CameraEvent(camera_id=camera_id, at_us=self.clock.now_us(), kind=kind, detail=detail))

    def alarm_storage_full(self, camera_id: str, detail: str) -> None:
        """Recording stopped for lack of space: an audit event (once per outage), then whoever must act."""
        with self.db.session() as s:
            audit_log.record(
                s,
                self.clock.now_us(),
                audit_log.SYSTEM,
                audit_log.INTERNAL,
                audit_log.Event("storage.full", "failed", camera_id=camera_id, reason=detail),
            )
        if self.on_storage_full is not None:
            self.on_storage_full()

    # --- gaps --------------------------------------------------------------------------------------------
    def open_gap(self, camera_id: str, start_us: int, reason: str, detail: str | None) -> int:
        """Record an outage as it begins (end unknown), so status shows it while it lasts."""
        with self.db.session() as s:
            existing = s.scalar(select(Gap).where(Gap.camera_id == camera_id, Gap.end_us.is_(None)))
            if existing is not None:
                existing.detail = detail
                return existing.id
            gap = Gap(camera_id=camera_id, start_us=start_us, end_us=None, reason=reason, detail=detail)
            s.add(gap)
            s.flush()
            return gap.id

    def close_gap(self, camera_id: str, end_us: int) -> None:
        with self.db.session() as s:
            for gap in s.scalars(select(Gap).where(Gap.camera_id == camera_id, Gap.end_us.is_(None))):
                gap.end_us = max(end_us, gap.start_us)

    def record_gap(self, camera_id: str, start_us: int, end_us: int, reason: str, detail: str | None) -> None:
        with self.db.session() as s:
            s.add(Gap(camera_id=camera_id, start_us=start_us, end_us=end_us, reason=reason, detail=detail))


def volume_infos(db: Database, paths: list[Path]) -> list[vol.VolumeInfo]:
    with db.session() as s:
        return vol.configured_volumes(s, paths)
