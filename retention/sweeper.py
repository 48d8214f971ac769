"""The retention sweeper: deletes footage whose retention has passed, through a garbage list that survives crashes.

A segment is deleted only when :func:`retention.protect.deletable` holds for it (retention passed, no hold, no live
read pin, not already on the garbage list) **and** there is a reason: its camera's policy has a ``max_days`` it is
older than (``max_age``), or its volume is above the high-water mark (``space``: oldest first across cameras until
the expected usage is under the low-water mark). Nothing else is ever deleted.

Each batch of at most ``sweep_batch_size`` segments goes through the garbage list (docs/retention/sweeper.md):

1. ``marked``: one transaction inserts a :class:`~nvr.models.SweepBatch` and marks the candidates with its id in one
   ``UPDATE`` that re-checks the protection in the same statement; commit. Marked rows are no longer footage.
2. ``rechecked``: after that commit, rows a hold, pin or policy raise committed meanwhile protect are unmarked; the
   batch moves to ``unlinking`` in the same transaction. Readers commit their pin before reading, so either this
   re-check sees the pin or the reader sees the mark.
3. ``unlinked``: every file of the batch is unlinked (already gone after a crash: fine), the directories are fsynced
   and those left empty removed; then the state is committed.
4. ``done``: one transaction writes the tombstones, deletes the rows, closes the batch and writes the audit events
   (one ``retention.sweep`` per run, which proves its tombstone, then one summary of the batch).

A batch not ``done`` is resumed at the start of every run, so a crash at any step leaves no file without a row,
and after the resume no row without a file. Every state change is claimed with ``UPDATE … WHERE state = <expected>``,
so two sweepers (the server's schedule and ``nvr retention sweep``) never complete one batch twice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import threading
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    CursorResult,
    Select,
    Table,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    not_,
    select,
    update,
)
from sqlalchemy.orm import Session

from integrity import audit_log, trusted_time
from integrity.tombstones import predate_run_events, run_reason
from integrity.trusted_time import ClockStatus, TrustedClock
from nvr.background import BackgroundLoop
from nvr.clock import Clock, iso
from nvr.config import Settings
from nvr.db import Database
from nvr.errors import NvrError
from nvr.models import Camera, RetentionPolicy, Segment, SegmentTombstone, SweepBatch, Volume
from retention import protect
from storage import volumes as vol
from storage.keyring import SIDECAR_SUFFIX

log = logging.getLogger(__name__)

DAY_US = protect.DAY_US
MAX_AGE, SPACE = "max_age", "space"
STEPS = ("marked", "rechecked", "unlinking", "unlinked", "removed")
"""Names passed to ``step_hook``: after the mark commit, after the re-check commit, after about half of a batch's
files are unlinked, after the ``unlinked`` commit, after the final commit."""
PLAN_BATCHES = 50
"""Candidates are read this many batches at a time: bounded memory however large the backlog."""
UNLINK_THREADS = 4
"""Threads unlinking, fsyncing and removing folders for a batch."""
IN_CHUNK = 5_000
"""Ids per ``IN (...)`` list: below SQLite's and PostgreSQL's bound-parameter limits for any batch size."""

_SEGMENTS = typing.cast(Table, Segment.__table__)
_TOMBSTONES = typing.cast(Table, SegmentTombstone.__table__)
_BATCHES = typing.cast(Table, SweepBatch.__table__)
_TOMBSTONE_FIELDS = ("first_seq", "last_seq", "prev_link", "last_link", "start_us", "end_us", "segments", "bytes",
                     "deleted_us", "last_batch_id")  # fmt: skip
_CANDIDATE_COLS = (
    Segment.id,
    Segment.camera_id,
    Segment.seq,
    Segment.volume_id,
    Segment.start_us,
    Segment.end_us,
    Segment.bytes,
)


# --- the report ----------------------------------------------------------------------------------------------------
@dataclass
class CameraSweep:
    """What was (or, in a dry run, would be) deleted of one camera."""

    camera_id: str
    segments: int = 0
    bytes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    oldest_start_us: int | None = None
    newest_end_us: int | None = None
    reasons: set[str] = field(default_factory=set)

    def add(self, segments: int, size: int, seqs: tuple[int, int], span: tuple[int, int], reason: str) -> None:
        self.segments += segments
        self.bytes += size
        self.first_seq = _min(self.first_seq, seqs[0])
        self.last_seq = _max(self.last_seq, seqs[1])
        self.oldest_start_us = _min(self.oldest_start_us, span[0])
        self.newest_end_us = _max(self.newest_end_us, span[1])
        self.reasons.add(reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "camera_id": self.camera_id,
            "segments": self.segments,
            "bytes": self.bytes,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "oldest_start": iso(self.oldest_start_us),
            "newest_end": iso(self.newest_end_us),
            "reasons": sorted(self.reasons),
        }


@dataclass
class VolumeUsage:
    """A volume's file system before and after the sweep (after: measured; in a dry run: expected)."""

    volume_id: str
    path: str
    identity: str
    """``ok``, or the error code that kept the sweeper away from it (``volume_identity_missing``, …)."""
    total_bytes: int | None = None
    used_bytes_before: int | None = None
    used_bytes_after: int | None = None
    swept_bytes: int = 0
    high_water_percent: float = 0.0
    low_water_percent: float = 0.0

    @property
    def above_high_water_after(self) -> bool | None:
        if not self.total_bytes or self.used_bytes_after is None:
            return None
        return self.used_bytes_after * 100 > self.high_water_percent * self.total_bytes

    def as_dict(self) -> dict[str, Any]:
        def pct(used: int | None) -> float | None:
            return None if not self.total_bytes or used is None else round(used * 100 / self.total_bytes, 2)

        return {
            "volume_id": self.volume_id,
            "path": self.path,
            "identity": self.identity,
            "total_bytes": self.total_bytes,
            "used_bytes_before": self.used_bytes_before,
            "used_bytes_after": self.used_bytes_after,
            "used_percent_before": pct(self.used_bytes_before),
            "used_percent_after": pct(self.used_bytes_after),
            "swept_bytes": self.swept_bytes,
            "high_water_percent": self.high_water_percent,
            "low_water_percent": self.low_water_percent,
            "above_high_water_after": self.above_high_water_after,
        }


@dataclass
class SweepReport:
    dry_run: bool
    now_us: int
    cameras: dict[str, CameraSweep] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    """Batches completed by this run (resumed ones included)."""
    resumed: list[int] = field(default_factory=list)
    """Batches a previous run left unfinished that this run completed (or, dry run: would resume)."""
    volumes: list[VolumeUsage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    clock: ClockStatus | None = None
    """The trusted time's state at the start of the run (integrity.trusted_time)."""
    clock_untrusted: bool = False
    """The wall clock ran ahead of the trusted time: nothing was (or, dry run: would be) deleted."""

    @property
    def segments(self) -> int:
        return sum(c.segments for c in self.cameras.values())

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.cameras.values())

    def camera(self, camera_id: str) -> CameraSweep:
        return self.cameras.setdefault(camera_id, CameraSweep(camera_id))

    def volume(self, volume_id: str) -> VolumeUsage:
        found = next((v for v in self.volumes if v.volume_id == volume_id), None)
        if found is None:  # a volume registered since the run began
            found = VolumeUsage(volume_id, "?", "unknown")
            self.volumes.append(found)
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "at": iso(self.now_us),
            "segments": self.segments,
            "bytes": self.bytes,
            "cameras": [self.cameras[c].as_dict() for c in sorted(self.cameras)],
            "batches": self.batches,
            "resumed_batches": self.resumed,
            "volumes": [v.as_dict() for v in self.volumes],
            "errors": self.errors,
            "clock_untrusted": self.clock_untrusted,
            "clock": None if self.clock is None else self.clock.as_dict(),
        }


def _refuse(report: SweepReport, clock: ClockStatus, waiting: list[int]) -> None:
    """The report of a run that may delete nothing new because the wall clock ran ahead of the trusted time."""
    report.clock_untrusted, report.clock = True, clock
    verb = "would be deleted" if report.dry_run else "deleted"
    text = f"{clock.message()}: nothing {verb}"
    if waiting:
        text += f"; batch(es) {', '.join(map(str, waiting))} wait for a trusted clock"
    report.errors.append(text + " (after a real outage: 'nvr clock confirm --reason ...')")


def _min(a: int | None, b: int) -> int:
    return b if a is None else min(a, b)


def _max(a: int | None, b: int) -> int:
    return b if a is None else max(a, b)


# --- candidates as SQL -----------------------------------------------------------------------------------------------
def max_age_passed(now_us: int) -> Any:
    """The segment's camera's policy has a ``max_days`` and the segment ended at least that long ago."""
    return exists(
        select(Camera.id)
        .join(RetentionPolicy, RetentionPolicy.id == Camera.policy_id)
        .where(
            Camera.id == Segment.camera_id,
            RetentionPolicy.max_days.is_not(None),
            Segment.end_us + cast(RetentionPolicy.max_days, BigInteger) * DAY_US <= now_us,  # days * µs > 2^31
        )
    )


def _deletable_on(volume_ids: Sequence[str], now_us: int, floor_days: int, dialect: str) -> Select[Any]:
    """Deletable segments on the volumes, range-restricted on ``retain_until_us``: only rows whose retention can have
    passed are read, through that column's index."""
    q: Select[*tuple[Any, ...]] = select(*_CANDIDATE_COLS).where(
        Segment.retain_until_us <= now_us,
        Segment.volume_id.in_(list(volume_ids)),
        protect.deletable(now_us, floor_days),
    )
    if dialect == "sqlite":
        # Without statistics SQLite prefers the index on the mostly-NULL sweep_batch_id (every unmarked row) to the
        # range; driving the query from the range's ids (a covering index scan) keeps it to the rows past retention.
        r = _SEGMENTS.alias("due")
        q = q.where(Segment.id.in_(select(r.c.id).where(r.c.retain_until_us <= now_us)))
    return q


def max_age_candidates(volume_ids: Sequence[str], now_us: int, floor_days: int, dialect: str) -> Select[Any]:
    return _deletable_on(volume_ids, now_us, floor_days, dialect).where(max_age_passed(now_us))


def space_candidates(
    volume_ids: Sequence[str], now_us: int, floor_days: int, dialect: str, need_bytes: int
) -> Select[Any]:
    """The oldest deletable segments (by start, across cameras) whose bytes first add up to ``need_bytes``; segments
    past ``max_days`` are left to the ``max_age`` pass. The running total is a window function: one statement."""
    running = func.sum(Segment.bytes).over(order_by=(Segment.start_us, Segment.id)).label("running")
    inner = (
        _deletable_on(volume_ids, now_us, floor_days, dialect).add_columns(running).where(not_(max_age_passed(now_us)))
    ).subquery()
    cols = [inner.c[c.key] for c in _CANDIDATE_COLS]
    return select(*cols).where(inner.c.running - inner.c.bytes < need_bytes)


# --- volumes ---------------------------------------------------------------------------------------------------------
@dataclass
class _Volume:
    id: str
    path: Path
    usage: VolumeUsage
    device: int | None = None


def _measure(path: Path) -> tuple[int, int]:
    """(total, used) of the file system: used = total - free, as the high- and low-water marks are defined."""
    du = shutil.disk_usage(path)
    return du.total, du.total - du.free


def _groups(volumes: Iterable[_Volume]) -> list[list[_Volume]]:
    """Volumes sharing a file system share its usage: one space decision per file system."""
    by_device: dict[int, list[_Volume]] = {}
    for v in volumes:
        if v.device is not None:
            by_device.setdefault(v.device, []).append(v)
    return list(by_device.values())


class _Deferred(Exception):
    """A batch cannot go on now (its volume is not mounted, a file cannot be removed); a later run resumes it."""


# --- the sweeper -----------------------------------------------------------------------------------------------------
class Sweeper:
    """One sweep: resume unfinished batches, then delete what has a reason to go. See the module docstring."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        *,
        actor: audit_log.Actor = audit_log.SYSTEM,
        meta: audit_log.RequestMeta = audit_log.INTERNAL,
        step_hook: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
        trusted: TrustedClock | None = None,
    ) -> None:
        self.db, self.settings = db, settings
        self.trusted = trusted or trusted_time.shared(db, settings, clock)
        self.clock: Clock = self.trusted
        """Every time the sweeper goes by (candidates, the protection its marks and re-checks test, the stamps of
        what it deleted) is the trusted time: ``min(wall, witnessed + tolerance)``, never a wall clock run ahead."""
        self.actor, self.meta = actor, meta
        self._hook = step_hook or (lambda _name: None)
        self._stop = stop or threading.Event()
        self._floor = settings.retention_floor_days
        self._database_id: str | None = None

    # -- entry points --
    def run(self, dry_run: bool = False) -> SweepReport:
        if dry_run:
            return self.plan()
        self.trusted.refresh()
        clock = self.trusted.status()
        self.trusted.record_state(clock, actor=self.actor, meta=self.meta)  # an outage's start or end, once each
        report = SweepReport(dry_run=False, now_us=self.clock.now_us(), clock=clock)
        volumes = self._volumes(report)
        if not clock.trusted:
            # Keep longer: nothing new is deleted. A batch whose files are all unlinked only lacks its bookkeeping
            # (tombstones, rows, audit events): finishing it deletes nothing more. Marked or half-unlinked ones wait.
            with self.db.session() as s:
                waiting = list(
                    s.scalars(select(SweepBatch.id).where(SweepBatch.state != "done").order_by(SweepBatch.id))
                )
                unlinked = set(s.scalars(select(SweepBatch.id).where(SweepBatch.state == "unlinked")))
            for batch_id in [b for b in waiting if b in unlinked]:
                self._complete(batch_id, report, resumed=True)
            _refuse(report, clock, [b for b in waiting if b not in unlinked])
            for v in volumes:
                if v.usage.identity == "ok":
                    v.usage.used_bytes_after = v.usage.used_bytes_before
            self._log(report)
            return report
        self._resume(report)
        ok = [v for v in volumes if v.usage.identity == "ok"]
        if ok:
            self._sweep(
                report, MAX_AGE, lambda now: max_age_candidates([v.id for v in ok], now, self._floor, self.db.dialect)
            )
        for group in _groups(ok):
            total, used = _measure(group[0].path)
            need = self._space_needed(total, used)
            while need > 0 and not self._stop.is_set():
                ids = [v.id for v in group]

                def candidates(now: int, n: int = need, ids: list[str] = ids) -> Select[Any]:
                    return space_candidates(ids, now, self._floor, self.db.dialect, n)

                freed = self._sweep(report, SPACE, candidates, once=True)
                if not freed:
                    break  # nothing more may go: the volume stays above the mark (the recorder's storage_full)
                need -= freed
        for v in ok:
            with contextlib.suppress(OSError):
                v.usage.used_bytes_after = _measure(v.path)[1]
        self._log(report)
        return report

    def plan(self) -> SweepReport:
        """What a run would delete now, per camera and volume; changes nothing and writes no audit event. Nothing
        at all while the clock is not trusted (``clock_untrusted``), as the run would."""
        self.trusted.refresh()
        clock = self.trusted.status()
        now = self.clock.now_us()
        report = SweepReport(dry_run=True, now_us=now, clock=clock)
        with self.db.session() as s:
            report.resumed = list(
                s.scalars(select(SweepBatch.id).where(SweepBatch.state != "done").order_by(SweepBatch.id))
            )
        volumes = self._volumes(report)
        ok = [v for v in volumes if v.usage.identity == "ok"]
        by_id = {v.id: v for v in ok}
        if not clock.trusted:
            with self.db.session() as s:
                unlinked = set(s.scalars(select(SweepBatch.id).where(SweepBatch.state == "unlinked")))
            _refuse(report, clock, [b for b in report.resumed if b not in unlinked])
        if ok and clock.trusted:
            self._aggregate(report, max_age_candidates(list(by_id), now, self._floor, self.db.dialect), MAX_AGE, by_id)
        for group in _groups(ok) if clock.trusted else []:
            total, used = group[0].usage.total_bytes or 0, group[0].usage.used_bytes_before or 0
            need = self._space_needed(total, used - sum(v.usage.swept_bytes for v in group))
            if need > 0:
                ids = [v.id for v in group]
                self._aggregate(report, space_candidates(ids, now, self._floor, self.db.dialect, need), SPACE, by_id)
        for v in ok:
            group_swept = sum(g.usage.swept_bytes for g in ok if g.device == v.device)
            v.usage.used_bytes_after = (v.usage.used_bytes_before or 0) - group_swept
        return report

    # -- planning helpers --
    def _space_needed(self, total: int, used: int) -> int:
        """Bytes to free: down to the low-water mark when the volume is above the high-water mark; and, when its
        free space is below the recorder's critical mark (``volume_min_free_bytes``; on a small volume or with a
        large reserve that comes before the high-water mark), until twice that mark is free, so a recorder stopped
        by ``storage_full`` can resume with room to spare. 0 when neither applies."""
        if total <= 0:
            return 0
        need = 0
        if used * 100 > self.settings.retention_high_water_percent * total:
            need = used - math.floor(self.settings.retention_low_water_percent * total / 100)
        critical = self.settings.volume_min_free_bytes
        if critical and total - used < critical:
            need = max(need, 2 * critical - (total - used))
        return max(0, need)

    def _volumes(self, report: SweepReport) -> list[_Volume]:
        out = []
        with self.db.session() as s:
            rows = s.execute(select(Volume.id, Volume.path).order_by(Volume.path)).all()
        for vid, path in rows:
            usage = VolumeUsage(
                vid,
                path,
                "ok",
                high_water_percent=self.settings.retention_high_water_percent,
                low_water_percent=self.settings.retention_low_water_percent,
            )
            v = _Volume(vid, Path(path), usage)
            try:
                self._check_volume(v.id, v.path)
                usage.total_bytes, usage.used_bytes_before = _measure(v.path)
                v.device = os.stat(v.path).st_dev
            except NvrError as exc:
                usage.identity = exc.code
                if v.path in self.settings.effective_volumes:  # a retired, unconfigured disk is no alarm
                    report.errors.append(f"volume {path}: {exc.code}: its footage was not swept")
            out.append(v)
        report.volumes = [v.usage for v in out]
        return out

    def _check_volume(self, volume_id: str, path: Path) -> None:
        if self._database_id is None:
            self._database_id = self.db.database_id()
        vol.check_volume(path, self._database_id, volume_id)

    def _aggregate(self, report: SweepReport, candidates: Select[Any], reason: str, by_id: dict[str, _Volume]) -> None:
        """Dry run: add the candidates' per-camera totals to the report, grouped in SQL (no row reaches Python)."""
        c = candidates.subquery()
        q = select(
            c.c.camera_id,
            c.c.volume_id,
            func.count(),
            func.sum(c.c.bytes),
            func.min(c.c.seq),
            func.max(c.c.seq),
            func.min(c.c.start_us),
            func.max(c.c.end_us),
        ).group_by(c.c.camera_id, c.c.volume_id)
        with self.db.session() as s:
            for cam, vid, n, size, s0, s1, t0, t1 in s.execute(q):
                report.camera(cam).add(int(n), int(size), (int(s0), int(s1)), (int(t0), int(t1)), reason)
                by_id[vid].usage.swept_bytes += int(size)

    # -- deleting --
    def _sweep(
        self, report: SweepReport, reason: str, candidates: Callable[[int], Select[Any]], once: bool = False
    ) -> int:
        """Delete candidates batch by batch, oldest start first; returns the bytes freed. ``once``: one read of the
        candidates (the space pass re-plans after each read, as its need shrinks)."""
        freed = 0
        while not self._stop.is_set():
            clock = self.trusted.status()
            if not clock.trusted:  # the wall clock ran ahead during the run: stop deciding by it
                if not report.clock_untrusted:
                    _refuse(report, clock, [])
                break
            now = self.clock.now_us()
            c = candidates(now).subquery()
            limit = PLAN_BATCHES * self.settings.sweep_batch_size
            with self.db.session() as s:
                ids = list(s.scalars(select(c.c.id).order_by(c.c.start_us, c.c.id).limit(limit)))
            if not ids:
                break
            progress = 0
            for chunk in _chunks(ids, self.settings.sweep_batch_size):
                if self._stop.is_set():
                    break
                batch_id = self._mark(chunk, reason)
                if batch_id is None:
                    continue
                swept = self._complete(batch_id, report, resumed=False)
                if swept is None:
                    return freed  # deferred: marking more would only pile up batches that cannot finish now
                freed += swept
                progress += 1
            if once or not progress:
                break
        return freed

    def _mark(self, ids: list[int], reason: str) -> int | None:
        """Step 1: a new batch and its rows marked, protection re-checked in the marking statement; committed."""
        now = self.clock.now_us()
        with self.db.session() as s:
            batch_id = s.execute(
                insert(_BATCHES)
                .values(state="marked", reason=reason, segments=0, bytes=0, started_us=now, actor=self.actor.name or "")
                .returning(_BATCHES.c.id)
            ).scalar_one()
            marked = 0
            for chunk in _chunks(ids, IN_CHUNK):
                marked += typing.cast(
                    CursorResult[Any],
                    s.execute(
                        update(_SEGMENTS)
                        .where(_SEGMENTS.c.id.in_(chunk), protect.deletable(now, self._floor))
                        .values(sweep_batch_id=batch_id)
                    ),
                ).rowcount
            if not marked:
                s.rollback()  # everything became protected since it was read: no batch at all
                return None
        self._hook("marked")
        return int(batch_id)

    def _resume(self, report: SweepReport) -> None:
        with self.db.session() as s:
            pending = list(s.scalars(select(SweepBatch.id).where(SweepBatch.state != "done").order_by(SweepBatch.id)))
        for batch_id in pending:
            self._complete(batch_id, report, resumed=True)

    def _complete(self, batch_id: int, report: SweepReport, *, resumed: bool) -> int | None:
        """Steps 2-4 from wherever the batch stands; returns the bytes freed (0 if another sweeper finished it), or
        None when it had to be left for a later run."""
        try:
            state = self._state(batch_id)
            if state == "marked":
                self._recheck(batch_id)
                self._hook("rechecked")
                state = "unlinking"
            if state == "unlinking":
                self._unlink(batch_id)
                self._hook("unlinked")
                state = "unlinked"
            if state != "unlinked":
                return 0
            result = self._remove(batch_id, report)
        except _Deferred as exc:
            report.errors.append(f"batch {batch_id}: {exc}; left for the next run")
            log.warning("sweep batch %d deferred: %s", batch_id, exc)
            return None
        self._hook("removed")
        if result is None:
            return 0
        report.batches.append(batch_id)
        if resumed:
            report.resumed.append(batch_id)
        return result

    def _state(self, batch_id: int) -> str:
        with self.db.session() as s:
            return str(s.scalar(select(SweepBatch.state).where(SweepBatch.id == batch_id)))

    def _recheck(self, batch_id: int) -> None:
        """Step 2: unmark what became protected while the marks were being committed; move on to ``unlinking``.

        Claimed by state: a second sweeper resuming the same batch after this commit finds it ``unlinking`` and never
        unmarks a row whose file may already be gone."""
        now = self.clock.now_us()
        still_deletable = and_(
            protect.retention_passed(now, self._floor), not_(protect.held()), not_(protect.pinned(now))
        )
        with self.db.session() as s:
            claimed = typing.cast(
                CursorResult[Any],
                s.execute(
                    update(_BATCHES)
                    .where(_BATCHES.c.id == batch_id, _BATCHES.c.state == "marked")
                    .values(state="unlinking")
                ),
            ).rowcount
            if claimed:
                s.execute(
                    update(_SEGMENTS)
                    .where(_SEGMENTS.c.sweep_batch_id == batch_id, not_(still_deletable))
                    .values(sweep_batch_id=None)
                )

    def _unlink(self, batch_id: int) -> None:
        """Step 3: remove the batch's files, make that durable, tidy empty directories; then commit ``unlinked``."""
        with self.db.session() as s:
            files = s.execute(
                select(Volume.id, Volume.path, Segment.camera_id, Segment.rel_path, Segment.encryption)
                .join(Volume, Volume.id == Segment.volume_id)
                .where(Segment.sweep_batch_id == batch_id)
            ).all()
        for vid, vpath in {(f[0], f[1]) for f in files}:
            try:
                self._check_volume(vid, Path(vpath))  # an unmounted disk must not pass for files already gone
            except NvrError as exc:
                raise _Deferred(f"volume {vpath}: {exc.code}") from None
        # Folder by folder; an encrypted segment's wrapped data key (storage.keyring) goes right after its file.
        paths = sorted(
            p
            for _vid, vpath, _cam, rel, enc in files
            for p in (
                (os.path.join(vpath, rel),)
                if enc is None
                else (os.path.join(vpath, rel), os.path.join(vpath, rel) + SIDECAR_SUFFIX)
            )
        )
        folders: dict[str, dict[str, None]] = {}  # camera folder -> the folders that lost files, in order
        for _v, vp, cam, rel, _enc in files:
            folders.setdefault(os.path.join(vp, cam), {})[os.path.dirname(os.path.join(vp, rel))] = None
        half = max(1, len(paths) // 2)
        # Unlinking waits on the file system's metadata work, which overlaps across folders: a few threads, one
        # folder per task, are about 1.5x faster than one by one here.
        with ThreadPoolExecutor(UNLINK_THREADS, thread_name_prefix="sweep-unlink") as pool:
            _unlink_all(pool, paths[:half])
            if paths:
                self._hook("unlinking")
            _unlink_all(pool, paths[half:])
            list(pool.map(_fsync_dir, [d for fs in folders.values() for d in fs]))
            list(pool.map(_remove_empty, folders.items()))
        with self.db.session() as s:
            s.execute(
                update(_BATCHES)
                .where(_BATCHES.c.id == batch_id, _BATCHES.c.state == "unlinking")
                .values(state="unlinked")
            )

    def _remove(self, batch_id: int, report: SweepReport) -> int | None:
        """Step 4, one transaction: tombstones, rows deleted, batch ``done``, the audit events (one per run, then the
        batch's summary: :func:`sweep_events`). None if another sweeper finished it first."""
        now = self.clock.now_us()
        with self.db.session() as s:
            claimed = typing.cast(
                CursorResult[Any],
                s.execute(
                    update(_BATCHES)
                    .where(_BATCHES.c.id == batch_id, _BATCHES.c.state == "unlinked")
                    .values(state="done", finished_us=now)
                ),
            ).rowcount
            if not claimed:
                return None
            reason = str(s.scalar(select(SweepBatch.reason).where(SweepBatch.id == batch_id)))
            rows = [
                _Row(*r)
                for r in s.execute(
                    select(
                        Segment.camera_id,
                        Segment.volume_id,
                        Segment.seq,
                        Segment.start_us,
                        Segment.end_us,
                        Segment.bytes,
                        Segment.prev_link,
                        Segment.link,
                    )
                    .where(Segment.sweep_batch_id == batch_id)
                    .order_by(Segment.camera_id, Segment.seq)
                )
            ]
            runs = _runs(rows)
            min_days = policy_min_days(s, batch_id)
            write_tombstones(s, runs, batch_id, now)
            s.execute(delete(_SEGMENTS).where(_SEGMENTS.c.sweep_batch_id == batch_id))
            size = sum(r.bytes for r in rows)
            s.execute(update(_BATCHES).where(_BATCHES.c.id == batch_id).values(segments=len(rows), bytes=size))
            for event in sweep_events(runs, rows, reason, batch_id, min_days, self._floor):
                audit_log.record(s, now, self.actor, self.meta, event)
        for run in runs:
            report.camera(run.camera_id).add(
                run.segments, run.bytes, (run.first_seq, run.last_seq), (run.start_us, run.end_us), reason
            )
        for r in rows:
            report.volume(r.volume_id).swept_bytes += r.bytes
        return size

    def _log(self, report: SweepReport) -> None:
        if report.segments or report.resumed:
            log.info(
                "retention sweep: %d segment(s), %d bytes of %d camera(s) in %d batch(es) (%d resumed)",
                report.segments,
                report.bytes,
                len(report.cameras),
                len(report.batches),
                len(report.resumed),
            )
        for e in report.errors:
            log.warning("retention sweep: %s", e)


def _chunks(items: list[int], n: int) -> Iterator[list[int]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _unlink_all(pool: ThreadPoolExecutor, paths: list[str]) -> None:
    """Unlink the files, a folder per task; a file already gone is fine, any other failure defers the batch."""
    by_dir: dict[str, list[str]] = {}
    for p in paths:
        by_dir.setdefault(os.path.dirname(p), []).append(p)
    problems = [p for p in pool.map(_unlink_folder, by_dir.values()) if p]
    if problems:
        raise _Deferred(problems[0])


def _unlink_folder(paths: list[str]) -> str | None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass  # unlinked by a run that crashed before committing ``unlinked``
        except OSError as exc:
            return f"cannot remove {p}: {exc.strerror}"
    return None


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # removed with its last file by an earlier, interrupted run
        vol.fsync_dir(Path(path))


def _remove_empty(camera_folders: tuple[str, dict[str, None]]) -> None:
    """Remove the folders left empty, deepest first, and their parents while empty, up to but never the camera's
    folder (the recorder writes below it; the hour folders of swept footage are at least the retention floor old).
    Best effort: a folder not empty, or already gone, stays as it is."""
    camera, folders = camera_folders
    for d in sorted(folders, key=len, reverse=True):
        while d != camera and d.startswith(camera + os.sep):
            try:
                os.rmdir(d)
            except OSError:
                break
            d = os.path.dirname(d)


# --- tombstones ------------------------------------------------------------------------------------------------------
@dataclass
class _Row:
    camera_id: str
    volume_id: str
    seq: int
    start_us: int
    end_us: int
    bytes: int
    prev_link: str
    link: str


@dataclass
class Run:
    """Consecutive deleted segments of one camera whose links join: what one tombstone stands for."""

    camera_id: str
    first_seq: int
    last_seq: int
    prev_link: str
    last_link: str
    start_us: int
    end_us: int
    segments: int
    bytes: int


def _runs(rows: list[_Row]) -> list[Run]:
    """Rows sorted by (camera, seq) cut into runs; a run ends where the numbers or the links do not continue, so a
    break among deleted rows stays visible as two tombstones that do not join."""
    runs: list[Run] = []
    for r in rows:
        last = runs[-1] if runs else None
        if last and last.camera_id == r.camera_id and last.last_seq + 1 == r.seq and last.last_link == r.prev_link:
            last.last_seq, last.last_link = r.seq, r.link
            last.start_us, last.end_us = min(last.start_us, r.start_us), max(last.end_us, r.end_us)
            last.segments += 1
            last.bytes += r.bytes
        else:
            runs.append(Run(r.camera_id, r.seq, r.seq, r.prev_link, r.link, r.start_us, r.end_us, 1, r.bytes))
    return runs


def write_tombstones(s: Session, runs: list[Run], batch_id: int, now_us: int) -> None:
    """Extend or merge the cameras' tombstones with the runs (a run between two tombstones joins them into one;
    never a tombstone older than per-run sweep events); statements in bulk: one read (and one of the neighbours'
    last events), then executemany for deletes, updates and inserts."""
    if not runs:
        return
    cams = sorted({r.camera_id for r in runs})
    existing = [dict(t._mapping) for t in s.execute(select(_TOMBSTONES).where(_TOMBSTONES.c.camera_id.in_(cams)))]
    by_last = {(t["camera_id"], t["last_seq"]): t for t in existing}
    by_first = {(t["camera_id"], t["first_seq"]): t for t in existing}
    # A tombstone from before per-run sweep events is proven only by its last batch's summary: never extended, so
    # each tombstone is proven wholly by per-run events or wholly by that summary (integrity.tombstones).
    beside = [by_last.get((r.camera_id, r.first_seq - 1)) for r in runs] + [
        by_first.get((r.camera_id, r.last_seq + 1)) for r in runs
    ]
    legacy = predate_run_events(s, [t for t in beside if t is not None])
    changed: dict[int, dict[str, Any]] = {}
    dropped: list[int] = []
    new: list[dict[str, Any]] = []
    for run in runs:
        left = by_last.get((run.camera_id, run.first_seq - 1))
        right = by_first.get((run.camera_id, run.last_seq + 1))
        left = left if left is not None and left["last_link"] == run.prev_link and left["id"] not in legacy else None
        right = right if right is not None and right["prev_link"] == run.last_link else None
        right = right if right is not None and right["id"] not in legacy else None
        body = {
            "camera_id": run.camera_id,
            "first_seq": left["first_seq"] if left else run.first_seq,
            "last_seq": right["last_seq"] if right else run.last_seq,
            "prev_link": left["prev_link"] if left else run.prev_link,
            "last_link": right["last_link"] if right else run.last_link,
            "start_us": min([run.start_us, *(t["start_us"] for t in (left, right) if t)]),
            "end_us": max([run.end_us, *(t["end_us"] for t in (left, right) if t)]),
            "segments": run.segments + sum(t["segments"] for t in (left, right) if t),
            "bytes": run.bytes + sum(t["bytes"] for t in (left, right) if t),
            "deleted_us": now_us,
            "last_batch_id": batch_id,
        }
        keep = left or right
        if keep is None:
            new.append(body)
            continue
        for t in (left, right):
            if t is not None:
                by_last.pop((run.camera_id, t["last_seq"]), None)
                by_first.pop((run.camera_id, t["first_seq"]), None)
        if left and right:
            dropped.append(right["id"])
            changed.pop(right["id"], None)
        keep.update(body)
        changed[keep["id"]] = keep
        by_last[(run.camera_id, keep["last_seq"])] = keep
        by_first[(run.camera_id, keep["first_seq"])] = keep
    if dropped:
        s.execute(delete(_TOMBSTONES).where(_TOMBSTONES.c.id.in_(dropped)))
    if changed:
        s.execute(
            update(_TOMBSTONES)
            .where(_TOMBSTONES.c.id == bindparam("b_id"))
            .values({k: bindparam(f"b_{k}") for k in _TOMBSTONE_FIELDS}),
            [{"b_id": t["id"], **{f"b_{k}": t[k] for k in _TOMBSTONE_FIELDS}} for t in changed.values()],
        )
    if new:
        s.execute(insert(_TOMBSTONES), new)


def summary(runs: list[Run], reason: str) -> str:
    """The batch summary's reason: the reason, then per camera its deleted seq ranges and count. Readable only (the
    audit writer clips it at 2000 characters); the per-run events are what prove the tombstones."""
    per_cam: dict[str, list[Run]] = {}
    for r in runs:
        per_cam.setdefault(r.camera_id, []).append(r)
    parts = []
    for cam in sorted(per_cam):
        rs = per_cam[cam]
        ranges = ",".join(f"{r.first_seq}..{r.last_seq}" if r.last_seq > r.first_seq else str(r.first_seq) for r in rs)
        parts.append(f"{cam} seq {ranges} ({sum(r.segments for r in rs)} segments)")
    total = sum(r.segments for r in runs)
    head = f"reason {reason}; {total} segments in {len(runs)} run(s) of {len(per_cam)} camera(s)"
    return head + (": " + "; ".join(parts) if parts else "")


def policy_min_days(s: Session, batch_id: int) -> dict[str, int]:
    """The ``min_days`` of each batch camera's policy now, at deletion (read before the rows are deleted)."""
    q = (
        select(Segment.camera_id, RetentionPolicy.min_days)
        .join(Camera, Camera.id == Segment.camera_id)
        .join(RetentionPolicy, RetentionPolicy.id == Camera.policy_id)
        .where(Segment.sweep_batch_id == batch_id)
        .distinct()
    )
    return {str(cam): int(days) for cam, days in s.execute(q)}


def sweep_events(
    runs: list[Run], rows: list[_Row], reason: str, batch_id: int, min_days: dict[str, int], floor: int
) -> list[audit_log.Event]:
    """A batch's ``retention.sweep`` audit events: one per run, whose reason (integrity.tombstones.run_reason) proves
    its tombstone (camera, window = the run's oldest start .. newest end, bytes, links, the policy's ``min_days``
    and the floor at deletion), then one summary of the batch (no camera; window and bytes of the whole batch),
    written even when every segment was spared at the re-check."""
    obj = f"sweep_batch:{batch_id}"
    events = [
        audit_log.Event(
            "retention.sweep",
            "ok",
            camera_id=r.camera_id,
            window_start_us=r.start_us,
            window_end_us=r.end_us,
            object_id=obj,
            reason=run_reason(reason, r.first_seq, r.last_seq, r.segments, r.prev_link, r.last_link, days, floor),
            bytes=r.bytes,
        )
        for r in runs
        for days in [min_days.get(r.camera_id, floor)]
    ]
    events.append(
        audit_log.Event(
            "retention.sweep",
            "ok",
            window_start_us=min((r.start_us for r in rows), default=None),
            window_end_us=max((r.end_us for r in rows), default=None),
            object_id=obj,
            reason=summary(runs, reason),
            bytes=sum(r.bytes for r in rows),
        )
    )
    return events


# --- the schedule ----------------------------------------------------------------------------------------------------
class SweepScheduler(BackgroundLoop):
    """Runs the sweeper in a daemon thread every ``sweep_interval_seconds`` (first run at start, which also resumes
    unfinished batches) and whenever :meth:`wake` is called (the recorder, when a volume is full). A failing run is
    logged and the schedule goes on. :meth:`stop` stops after the batch in progress (an interrupted batch would be
    resumed anyway)."""

    thread_name = "retention-sweeper"

    def __init__(self, db: Database, settings: Settings, clock: Clock, trusted: TrustedClock | None = None) -> None:
        super().__init__()
        self.db, self.settings, self.clock = db, settings, clock
        self.trusted = trusted or trusted_time.shared(db, settings, clock)
        """One trusted clock for every run: its monotonic reading since start is what a wall clock set ahead cannot
        fake."""
        self.last_report: SweepReport | None = None

    def start(self) -> None:
        super().start()
        log.info(
            "retention sweeper started: every %.0f s and whenever a volume is full",
            self.settings.sweep_interval_seconds,
        )

    def step(self) -> float:
        self.last_report = Sweeper(self.db, self.settings, self.clock, stop=self._stop, trusted=self.trusted).run()
        return self.settings.sweep_interval_seconds

    def failed(self, exc: Exception) -> float:
        log.exception("retention sweep failed; retrying in %s s", self.settings.sweep_interval_seconds)
        return self.settings.sweep_interval_seconds
