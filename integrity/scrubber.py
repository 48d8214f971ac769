"""The background scrubber: re-hash every segment, slowly and forever, so silent corruption is found while a copy
may still exist.

A pass walks the segments in id order from a cursor kept in the ``meta`` table (key ``scrub``, a JSON object with
the cursor and running totals), so a restart continues where the last process stopped and any process can report
the totals. Reading is limited to ``scrub_read_mb_per_second`` by a token bucket (the sleep is injectable, so tests
assert on the requested pauses rather than wall time); 0 turns the scrubber off. A pass starts at most every
``scrub_pass_interval_hours``.

Each segment is re-hashed with its row's ``hash_alg`` and compared with the row
(integrity.verify_archive.check_file). A ``hash_mismatch`` or ``missing_file`` becomes an open
:class:`~nvr.models.IntegrityFinding` (one per problem: an open one is not duplicated) and one audit event
(``integrity.scrub.mismatch`` / ``integrity.scrub.missing``, outcome ``failed``, by the system); while any finding
is open /health carries the ``integrity_mismatch`` alarm. A later scrub that finds the segment fine again resolves
its findings, and so does the sweeper deleting it (its number is then inside a tombstone). Every completed pass
writes ``integrity.scrub.pass`` with its counts. Segments on a volume without its identity file (not mounted) are
skipped: that is the ``volume_unavailable`` storage alarm, not thousands of findings.

Metrics (:func:`metric_families`) are read from the database at scrape time, so the API process reports what the
recorder process's scrubber did.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import select
from sqlalchemy.orm import Session

from integrity import audit_log
from integrity.verify_archive import (
    VOLUME_IDENTITY_FILE,
    FileHash,
    check_file,
    check_sidecar,
    hash_file,
    open_counts,
    open_finding,
    row_alg,
    still_current,
)
from nvr.background import BackgroundLoop
from nvr.clock import Clock, iso
from nvr.config import Settings
from nvr.db import Database
from nvr.models import IntegrityFinding, Meta, Segment, Volume

log = logging.getLogger(__name__)

META_KEY = "scrub"
CHUNK = 1 << 20
"""Smaller reads than ``nvr verify``: the rate limit then paces in steps of at most a second at the default rate."""
SEGMENT_KINDS = ("hash_mismatch", "missing_file")
ACTIONS = {"hash_mismatch": "integrity.scrub.mismatch", "missing_file": "integrity.scrub.missing"}
_FRESH: dict[str, Any] = {
    "cursor": 0,
    "in_pass": False,
    "pass_started_us": None,
    "last_pass_started_us": None,
    "last_pass_finished_us": None,
    "segments_total": 0,
    "bytes_total": 0,
    "passes_total": 0,
    "pass": {},
}


def load_state(session: Session) -> dict[str, Any]:
    row = session.get(Meta, META_KEY)
    state = json.loads(json.dumps(_FRESH))
    if row is not None:
        state.update(json.loads(row.value))
    return state


def save_state(session: Session, state: dict[str, Any]) -> None:
    row = session.get(Meta, META_KEY)
    text = json.dumps(state, sort_keys=True)
    if row is None:
        session.add(Meta(key=META_KEY, value=text))
    else:
        row.value = text
    session.flush()


class RateLimiter:
    """A token bucket of ``bytes_per_second`` holding at most one second's worth: :meth:`take` sleeps off the debt."""

    # sleep's return value is ignored (the Scrubber's default returns Event.wait(...) and None).
    def __init__(self, bytes_per_second: float, monotonic_us: Callable[[], int], sleep: Callable[[float], object]):
        self.rate = bytes_per_second
        self._mono, self._sleep = monotonic_us, sleep
        self._tokens = 0.0
        self._t = monotonic_us()

    def take(self, n: int) -> None:
        now = self._mono()
        self._tokens = min(self.rate, self._tokens + (now - self._t) / 1e6 * self.rate) - n
        self._t = now
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)
            self._tokens = 0.0
            self._t = self._mono()


@dataclass
class PassCounts:
    segments: int = 0
    bytes: int = 0
    skipped: int = 0
    mismatch: int = 0
    missing: int = 0
    new_findings: int = 0
    resolved: int = 0


class Scrubber(BackgroundLoop):
    """Runs scrub passes in a daemon thread: :meth:`start`, :meth:`stop` (after the segment being hashed; the cursor
    is kept and the next start continues there), :meth:`wake` (start a pass now if one is due). A failing step is
    logged and the scrubber goes on."""

    thread_name = "integrity-scrubber"

    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        *,
        sleep: Callable[[float], None] | None = None,
        chunk: int = CHUNK,
    ) -> None:
        super().__init__()
        self.db, self.settings, self.clock = db, settings, clock
        self._sleep = sleep or (lambda seconds: self._stop.wait(seconds) and None)
        self._buf = bytearray(chunk)

    def start(self) -> None:
        super().start()
        rate = self.settings.scrub_read_mb_per_second
        log.info("integrity scrubber %s", f"started: {rate:g} MB/s" if rate > 0 else "off (rate 0)")

    def step(self) -> float:
        if self.settings.scrub_read_mb_per_second <= 0:
            return 3600.0
        due = self.due_in_seconds()
        if due <= 0:
            self.run_pass()
            return 0.0
        return min(300.0, due)

    def due_in_seconds(self) -> float:
        """0 when a pass is in progress or the last one started at least the pass interval ago."""
        with self.db.session() as s:
            state = load_state(s)
        if state["in_pass"] or state["last_pass_started_us"] is None:
            return 0.0
        next_us = state["last_pass_started_us"] + int(self.settings.scrub_pass_interval_hours * 3600e6)
        return max(0.0, (next_us - self.clock.now_us()) / 1e6)

    # -- a pass --
    def run_pass(self) -> PassCounts | None:
        """Continue (or start) the pass from the cursor to the last segment; None when stopped before its end."""
        limiter = RateLimiter(self.settings.scrub_read_mb_per_second * 1e6, self.clock.monotonic_us, self._sleep)
        with self.db.session() as s:
            state = load_state(s)
            if not state["in_pass"]:
                state.update(cursor=0, in_pass=True, pass_started_us=self.clock.now_us(), **{"pass": {}})
                state["last_pass_started_us"] = state["pass_started_us"]
                save_state(s, state)
        for row, volume in self._segments(int(state["cursor"])):
            if self._stop.is_set():
                return None
            self.scrub_one(row, volume, limiter)
        return self._finish_pass()

    def _segments(self, cursor: int, batch: int = 200) -> Iterator[tuple[Any, Path]]:
        while True:
            with self.db.session() as s:
                volumes = {v.id: Path(v.path) for v in s.scalars(select(Volume))}
                rows = s.execute(
                    select(
                        Segment.id, Segment.camera_id, Segment.seq, Segment.volume_id, Segment.rel_path,
                        Segment.bytes, Segment.sha256, Segment.hash_alg, Segment.start_us, Segment.end_us,
                        Segment.encryption,
                    )
                    .where(Segment.id > cursor, Segment.sweep_batch_id.is_(None))
                    .order_by(Segment.id)
                    .limit(batch)
                ).all()  # fmt: skip
            if not rows:
                return
            for r in rows:
                yield r, volumes[r.volume_id]
            cursor = rows[-1].id

    def scrub_one(self, row: Any, volume: Path, limiter: RateLimiter) -> str:
        """Re-hash one segment and record the outcome; returns ``ok``, ``skipped``, a problem kind, or ``gone``."""
        path = volume / row.rel_path
        mounted = (volume / VOLUME_IDENTITY_FILE).is_file()
        result: FileHash | OSError | None = None
        if mounted:
            try:
                result = hash_file(path, self._buf, on_chunk=limiter.take, hash_alg=row_alg(row))
            except OSError as exc:
                result = exc
        problem = check_file(row, result, path) if result is not None else None
        if problem is None and isinstance(result, FileHash):
            problem = check_sidecar(row, path)
        if problem is not None and not still_current(self.db, row.id, row.sha256):
            problem, outcome = None, "gone"  # swept (or re-registered) while we read: nothing to report
        else:
            outcome = "skipped" if result is None else (problem.kind if problem else "ok")
        now = self.clock.now_us()
        with self.db.session() as s:
            state = load_state(s)
            counts = PassCounts(**state["pass"])
            state["cursor"] = int(row.id)
            if result is None:
                counts.skipped += 1
            else:
                counts.segments += 1
                state["segments_total"] += 1
                size = result.size if isinstance(result, FileHash) else 0
                counts.bytes += size
                state["bytes_total"] += size
            if problem is not None:
                counts.mismatch += problem.kind == "hash_mismatch"
                counts.missing += problem.kind == "missing_file"
                if open_finding(s, problem, "scrubber", now) is not None:
                    counts.new_findings += 1
                    log.error("integrity scrub: %s %s: %s", problem.kind, problem.subject, problem.detail)
                    audit_log.record(
                        s,
                        now,
                        audit_log.SYSTEM,
                        audit_log.INTERNAL,
                        audit_log.Event(
                            ACTIONS[problem.kind],
                            "failed",
                            camera_id=row.camera_id,
                            window_start_us=row.start_us,
                            window_end_us=row.end_us,
                            object_id=problem.subject,
                            reason=problem.detail,
                        ),
                    )
            elif outcome == "ok":
                counts.resolved += resolve_segment(s, row.camera_id, row.seq, now)
            state["pass"] = counts.__dict__
            save_state(s, state)
        return outcome

    def _finish_pass(self) -> PassCounts:
        now = self.clock.now_us()
        with self.db.session() as s:
            state = load_state(s)
            counts = PassCounts(**state["pass"])
            counts.resolved += resolve_swept(s, now)
            state.update(cursor=0, in_pass=False, last_pass_finished_us=now, passes_total=state["passes_total"] + 1)
            state["pass"] = {}
            save_state(s, state)
            open_now = sum(open_counts(s).values())
            audit_log.record(
                s,
                now,
                audit_log.SYSTEM,
                audit_log.INTERNAL,
                audit_log.Event(
                    "integrity.scrub.pass",
                    "ok",
                    reason=f"pass started {iso(state['pass_started_us'])}: segments={counts.segments} "
                    f"bytes={counts.bytes} hash_mismatch={counts.mismatch} missing_file={counts.missing} "
                    f"new_findings={counts.new_findings} resolved={counts.resolved} skipped={counts.skipped} "
                    f"open_findings={open_now}",
                    bytes=counts.bytes,
                ),
            )
        log.info("integrity scrub pass done: %s", counts)
        return counts


def resolve_segment(session: Session, camera_id: str, seq: int, now_us: int) -> int:
    """Mark the open hash_mismatch / missing_file findings of a segment now found fine as *intact again*
    (``intact_us``); returns how many. They stay open: only a person resolves a finding, with a note
    (integrity.findings.resolve), so a tampered archive is never "repaired" silently."""
    rows = session.scalars(
        select(IntegrityFinding).where(
            IntegrityFinding.resolved_us.is_(None),
            IntegrityFinding.intact_us.is_(None),
            IntegrityFinding.kind.in_(SEGMENT_KINDS),
            IntegrityFinding.camera_id == camera_id,
            IntegrityFinding.seq == seq,
        )
    ).all()
    for f in rows:
        f.intact_us = now_us
    session.flush()
    return len(rows)


def resolve_swept(session: Session, now_us: int) -> int:
    """Findings of segments the sweeper has since deleted stay open too (what was damaged, and when, is still
    evidence); nothing is marked. Kept so callers need not change; returns 0."""
    return 0


# --- metrics -----------------------------------------------------------------------------------------------------
def metric_families(session: Session) -> list[Any]:
    """Prometheus families for a collector: ``nvr_scrub_segments_total``, ``nvr_scrub_bytes_total``,
    ``nvr_scrub_passes_total``, ``nvr_scrub_last_pass_timestamp_seconds`` and ``nvr_integrity_findings_open{kind}``."""
    state = load_state(session)
    segments = CounterMetricFamily(
        "nvr_scrub_segments", "Segments the scrubber re-hashed", value=state["segments_total"]
    )
    size = CounterMetricFamily("nvr_scrub_bytes", "Bytes the scrubber re-hashed", value=state["bytes_total"])
    passes = CounterMetricFamily("nvr_scrub_passes", "Completed scrub passes", value=state["passes_total"])
    last = GaugeMetricFamily(
        "nvr_scrub_last_pass_timestamp_seconds",
        "When the last completed scrub pass finished (0: never)",
        value=(state["last_pass_finished_us"] or 0) / 1e6,
    )
    findings = GaugeMetricFamily("nvr_integrity_findings_open", "Open integrity findings", labels=["kind"])
    for kind, n in open_counts(session).items():
        findings.add_metric([kind], float(n))
    return [segments, size, passes, last, findings]
