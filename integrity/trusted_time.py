"""Trusted time: the clock retention decides by, which a wall clock set ahead cannot move forward.

The wall clock can be set to anything by whoever controls the host; what the system has *witnessed* cannot. The
witness is the newest signed checkpoint (``created_us``, signed into its body) whose signature verifies with a
pinned key (:func:`integrity.keys.trusted_keys`). A :class:`TrustedClock` reads it once (at first use) and from then
on adds the monotonic time that passed in this process, which nobody can step::

    bound = anchor + (monotonic now - monotonic when the anchor was read)
    trusted   ⟺  wall <= bound + tolerance          (settings.clock_tolerance_minutes)
    now_us()  =  min(wall, bound + tolerance)         what retention compares against
    checkpoint_time_us() = min(wall, bound)           what a new checkpoint may be stamped with

While the clock is not trusted nothing is deleted (the sweeper, bundle expiry); the failure direction is always
"keep longer". The rule, its residual risks and the human resolution (``nvr clock confirm``) are in
docs/design/timekeeping.md ("Trusted time").

Details that matter:

- **Start-up.** The first read of a process (its start) may accept a wall clock up to the tolerance ahead of the
  anchor: nothing witnessed the downtime before the start, so the bound starts at the wall clock then (and a restart
  does not accumulate lag). A wall clock further ahead is untrusted, and the bound stays at the anchor.
- **Refresh.** :meth:`TrustedClock.refresh` re-reads the newest checkpoint. It moves the bound forward only to a
  checkpoint at most the tolerance ahead of it (another process's stamp), or to one a ``clock.confirm`` audit event
  precedes (``nvr clock confirm``); a checkpoint stamped further ahead by anything else is ignored in this process.
  The bound never moves back.
- **Stamps.** Every checkpoint must be stamped with :meth:`TrustedClock.checkpoint_time_us`, never with a wall
  clock that is ahead of the bound: otherwise the next start would take the jump for witnessed time.
- **No checkpoint verifies.** With no checkpoint at all, the newest rows the database witnessed (the newest
  segment's ``created_us``, the newest audit event's ``at_us``) are the anchor; with neither, there is nothing to
  protect yet and the bound starts at the wall clock. When checkpoints exist but none of the newest
  :data:`WALK_BACK` verifies, the clock is untrusted (an anchor that cannot be checked is no anchor).
- **Outages** are recorded once each: the first refusal writes a ``clock.untrusted`` audit event and a
  ``clock_untrusted`` row in the ``meta`` table; the first trusted look afterwards removes the row and writes
  ``clock.trusted``; ``nvr clock confirm`` removes it and writes ``clock.confirm`` (:meth:`record_state`,
  :func:`confirm`).
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from integrity import audit_log, checkpoints, keys
from nvr.clock import Clock, iso
from nvr.config import Settings
from nvr.db import Database
from nvr.errors import Kind, NvrError
from nvr.models import AuditEvent, Checkpoint, Meta, Segment

log = logging.getLogger(__name__)

WALK_BACK = 50
"""Checkpoints examined, newest first, for one that verifies."""
CONFIRM_WINDOW_US = 10 * 60 * 1_000_000
"""A checkpoint counts as confirmed when a ``clock.confirm`` event at most this long before it is covered by it."""
META_KEY = "clock_untrusted"
UNTRUSTED, TRUSTED_AGAIN, CONFIRM = "clock.untrusted", "clock.trusted", "clock.confirm"
"""The audit actions of an outage: its start, its end by itself, its end by a person."""


@dataclass(frozen=True)
class ClockStatus:
    """What the trusted clock says now. ``ahead_us`` = wall - bound (negative: the wall clock is behind, which is
    always trusted: retention then keeps longer). ``anchor``: ``checkpoint``, ``database`` (no checkpoint: the
    newest rows) or ``none`` (nothing witnessed yet)."""

    trusted: bool
    wall_us: int
    bound_us: int
    ahead_us: int
    tolerance_us: int
    anchor: str
    anchor_us: int | None
    checkpoint_id: int | None
    checkpoint_seq: int | None
    detail: str | None = None

    @property
    def ahead_seconds(self) -> float:
        return self.ahead_us / 1e6

    def message(self) -> str:
        """One line for logs, reports and the CLI."""
        where = (
            f"checkpoint {self.checkpoint_id} (seq {self.checkpoint_seq}) of {iso(self.anchor_us)}"
            if self.anchor == "checkpoint"
            else ("the newest database rows" if self.anchor == "database" else "nothing witnessed yet")
        )
        head = "trusted" if self.trusted else "clock_untrusted"
        text = (
            f"{head}: the wall clock {iso(self.wall_us)} is {span(self.ahead_us)} "
            f"{'ahead of' if self.ahead_us >= 0 else 'behind'} the trusted time {iso(self.bound_us)} "
            f"(tolerance {span(self.tolerance_us)}; anchored on {where})"
        )
        return text + (f"; {self.detail}" if self.detail else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "trusted": self.trusted,
            "wall": iso(self.wall_us),
            "trusted_bound": iso(self.bound_us),
            "ahead_seconds": round(self.ahead_seconds, 3),
            "tolerance_seconds": self.tolerance_us / 1e6,
            "anchor": self.anchor,
            "anchor_time": iso(self.anchor_us),
            "checkpoint_id": self.checkpoint_id,
            "checkpoint_seq": self.checkpoint_seq,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class _Anchor:
    kind: str
    us: int | None
    checkpoint_id: int | None = None
    checkpoint_seq: int | None = None
    audit_seq: int | None = None
    unverified: str | None = None
    """Why no checkpoint could be the anchor although checkpoints exist (the clock is then untrusted)."""
    skipped: int = 0
    """Newer checkpoints that did not verify."""


class TrustedClock:
    """The trusted time of one process (see the module docstring). Thread-safe. It is also a :class:`Clock`:
    ``now_us`` is the trusted time, ``monotonic_us`` the wrapped clock's, so code deciding retention can take it
    where it took a clock."""

    def __init__(self, clock: Clock, db: Database, settings: Settings) -> None:
        self.clock, self.db, self.settings = clock, db, settings
        self._lock = threading.RLock()
        self._anchor: _Anchor | None = None
        self._base_us = 0
        self._base_mono = 0
        self._newest_seen: int | None = None
        self._untrusted_reason: str | None = None
        self._detail: str | None = None
        self._last_trusted: bool | None = None

    # --- reading the anchor -------------------------------------------------------------------------------------
    @property
    def tolerance_us(self) -> int:
        return int(self.settings.clock_tolerance_minutes * 60_000_000)

    def refresh(self) -> None:
        """Read the anchor (the first time: with the start-up rule) or look for a newer one."""
        with self._lock:
            if self._anchor is None:
                self._first_read()
                return
            with self.db.session() as s:
                newest = _newest_id(s)
                if newest is not None and newest == self._newest_seen:
                    return
                found = self._read_anchor(s)
                confirmed = found.kind == "checkpoint" and _confirmed(s, found)
            self._newest_seen = newest
            self._adopt(found, confirmed)

    def _first_read(self) -> None:
        with self.db.session() as s:
            newest = _newest_id(s)
            found = self._read_anchor(s)
        wall, mono = self.clock.now_us(), self.clock.monotonic_us()
        self._newest_seen = newest
        self._anchor = found
        self._untrusted_reason = found.unverified
        self._detail = _skipped_note(found)
        if found.us is None:
            base = wall  # nothing witnessed yet: nothing to protect either
        elif found.unverified is None and found.us < wall <= found.us + self.tolerance_us:
            base = wall  # the downtime before this start, which nothing witnessed, within the tolerance
        else:
            base = found.us
        self._base_us, self._base_mono = base, mono

    def _adopt(self, found: _Anchor, confirmed: bool) -> None:
        if found.kind == "checkpoint":
            if self._raise_to(found, within_tolerance_only=not confirmed):
                self._untrusted_reason = None
                self._detail = _skipped_note(found)
            return
        if self._anchor is not None and self._anchor.kind == "checkpoint":
            # The bound comes from a verified checkpoint: unsigned rows, or newer checkpoints that do not verify,
            # change nothing about it.
            return
        self._untrusted_reason = found.unverified
        if found.us is not None:
            self._raise_to(found, within_tolerance_only=True)

    def _raise_to(self, found: _Anchor, *, within_tolerance_only: bool) -> bool:
        """Move the bound forward to ``found`` when allowed; True when ``found`` is now the anchor."""
        assert found.us is not None
        bound = self.bound_us()
        if found.us > bound + self.tolerance_us and within_tolerance_only:
            self._detail = (
                f"{_describe(found)} is {span(found.us - bound)} ahead of the trusted time and no clock.confirm "
                "precedes it: not taken as witnessed"
            )
            log.error("trusted time: %s", self._detail)
            return False
        if found.us > bound:
            self._base_us, self._base_mono = found.us, self.clock.monotonic_us()
        self._anchor = found
        return True

    def _read_anchor(self, s: Session) -> _Anchor:
        ids = list(
            s.scalars(
                select(Checkpoint.id).order_by(Checkpoint.created_us.desc(), Checkpoint.id.desc()).limit(WALK_BACK)
            )
        )
        if ids:
            first_problem: str | None = None
            try:
                trusted = keys.trusted_keys(s, self.settings)
            except NvrError as exc:  # the key log cannot be read or is refused: nothing verifies
                trusted, first_problem = {}, f"{exc.code}: {exc.message}"
            database_id = s.scalar(select(Meta.value).where(Meta.key == "database_id"))
            for n, cid in enumerate(ids):
                row = s.get(Checkpoint, cid)
                if row is None:
                    continue
                why = checkpoints.verify_checkpoint(row, trusted)
                body: dict[str, Any] = {}
                if why is None:
                    try:
                        body = checkpoints.parse_body(row.body)
                    except NvrError as exc:
                        why = exc.message
                if why is None and body.get("database_id") != database_id:
                    why = f"checkpoint {row.id} was signed for database {body.get('database_id')}"
                if why is None:
                    return _Anchor(
                        "checkpoint", int(row.created_us), int(row.id), row.seq, int(body["audit"]["seq"]), skipped=n
                    )
                first_problem = first_problem or why
            fallback = _database_anchor(s)
            return _Anchor(
                "database",
                fallback,
                unverified=f"none of the newest {len(ids)} checkpoint(s) verifies with a pinned key ({first_problem})",
            )
        us = _database_anchor(s)
        return _Anchor("none" if us is None else "database", us)

    # --- the time -------------------------------------------------------------------------------------------
    def _ensure(self) -> None:
        if self._anchor is None:
            self.refresh()

    def bound_us(self) -> int:
        """The newest time the system has witnessed: the anchor plus the monotonic time since it was read."""
        with self._lock:
            self._ensure()
            return self._base_us + (self.clock.monotonic_us() - self._base_mono)

    def status(self) -> ClockStatus:
        """Trusted or not, now (no database access after the first read; :meth:`refresh` looks for news)."""
        with self._lock:
            self._ensure()
            wall = self.clock.now_us()
            bound = self.bound_us()
            tol = self.tolerance_us
            ahead = wall - bound
            trusted = ahead <= tol and self._untrusted_reason is None
            a = self._anchor
            assert a is not None
            detail = "; ".join(x for x in (self._untrusted_reason, self._detail) if x) or None
            st = ClockStatus(trusted, wall, bound, ahead, tol, a.kind, a.us, a.checkpoint_id, a.checkpoint_seq, detail)
            if st.trusted != self._last_trusted:
                if not st.trusted:
                    log.error("%s: retention deletes nothing until it is consistent again", st.message())
                elif self._last_trusted is False:
                    log.warning("the wall clock is consistent with the trusted time again: %s", st.message())
                self._last_trusted = st.trusted
            return st

    def now_us(self) -> int:
        """The time retention decides by: ``min(wall, bound + tolerance)``. Check :meth:`status` first: while it is
        not trusted, no deletion may be decided at all (this is then only good for bookkeeping stamps)."""
        with self._lock:
            return min(self.clock.now_us(), self.bound_us() + self.tolerance_us)

    def access_now_us(self) -> int:
        """The time access decisions use (grant validity, token, ticket and approval expiry): ``max(wall, bound)``.
        A wall clock set back cannot revive an expired grant or session (the bound runs on); a wall clock set ahead
        only ends access early, the safe direction for access as ``now_us`` is for retention."""
        with self._lock:
            return max(self.clock.now_us(), self.bound_us())

    def checkpoint_time_us(self) -> int:
        """The time to stamp a new checkpoint with: ``min(wall, bound)``, so a wall clock set ahead never becomes
        witnessed time (not even by the tolerance: that would let repeated stamps creep forward)."""
        with self._lock:
            return min(self.clock.now_us(), self.bound_us())

    def monotonic_us(self) -> int:
        return self.clock.monotonic_us()

    # --- outages in the audit trail ---------------------------------------------------------------------------
    def record_state(
        self,
        status: ClockStatus | None = None,
        *,
        actor: audit_log.Actor = audit_log.SYSTEM,
        meta: audit_log.RequestMeta = audit_log.INTERNAL,
    ) -> str | None:
        """Write ``clock.untrusted`` when an outage starts and ``clock.trusted`` when it ends by itself, once each
        across processes (the ``meta`` row); returns the action written, if any. One primary-key read otherwise."""
        st = status or self.status()
        try:
            with self.db.session() as s:
                row = s.get(Meta, META_KEY)
                if not st.trusted and row is None:
                    s.add(Meta(key=META_KEY, value=json.dumps(st.as_dict(), sort_keys=True)))
                    s.flush()  # a second process recording the same outage stops here (primary key)
                    audit_log.record(
                        s,
                        st.wall_us,
                        actor,
                        meta,
                        audit_log.Event(
                            UNTRUSTED, "failed", reason=st.message() + "; retention deletes nothing meanwhile"
                        ),
                    )
                    return UNTRUSTED
                if st.trusted and row is not None:
                    s.delete(row)
                    audit_log.record(
                        s, st.wall_us, actor, meta, audit_log.Event(TRUSTED_AGAIN, "ok", reason=st.message())
                    )
                    return TRUSTED_AGAIN
        except IntegrityError:
            return None  # another process recorded it first
        return None


@dataclass(frozen=True)
class Confirmation:
    before: ClockStatus
    after: ClockStatus
    checkpoint_id: int
    checkpoint_seq: int | None
    audit_seq: int


def confirm(
    db: Database,
    settings: Settings,
    clock: Clock,
    reason: str,
    *,
    actor: audit_log.Actor,
    meta: audit_log.RequestMeta = audit_log.CLI,
) -> Confirmation:
    """A person states that the wall clock is right (after a real outage longer than the tolerance): one
    ``clock.confirm`` audit event (with the reason and the times), then a checkpoint signed at the wall clock,
    which every process takes as its new anchor. ``reason_required`` without a reason."""
    reason = (reason or "").strip()
    if not reason:
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "reason_required",
            "say why the wall clock is right (--reason): the confirmation is kept in the audit trail",
        )
    tc = TrustedClock(clock, db, settings)
    before = tc.status()
    with db.session() as s:
        s.execute(delete(Meta).where(Meta.key == META_KEY))
        seq = audit_log.record(
            s,
            clock.now_us(),
            actor,
            meta,
            audit_log.Event(
                CONFIRM,
                "ok",
                reason=f"{reason}; confirmed the wall clock {iso(before.wall_us)} as right; before: {before.message()}",
            ),
        )
    row = checkpoints.sign_checkpoint(db, settings, clock)
    tc.refresh()
    after = tc.status()
    if not after.trusted:
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "clock_confirm_ineffective",
            f"checkpoint {row.id} was signed but the clock is still not trusted: {after.message()}",
        )
    log.warning("wall clock confirmed by %s: %s", actor.name, after.message())
    return Confirmation(before, after, int(row.id), row.seq, int(seq))


# --- one per process --------------------------------------------------------------------------------------------
_SHARED: weakref.WeakKeyDictionary[Database, dict[int, TrustedClock]] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def shared(db: Database, settings: Settings, clock: Clock) -> TrustedClock:
    """The process's trusted clock over ``db`` and ``clock`` (made at first use), so the sweeper's schedule, the
    export runner and the health endpoints share one anchor and one monotonic reading. A TrustedClock passed as
    ``clock`` is returned as it is."""
    if isinstance(clock, TrustedClock):
        return clock
    with _SHARED_LOCK:
        per_db = _SHARED.setdefault(db, {})
        tc = per_db.get(id(clock))
        if tc is None or tc.clock is not clock:
            tc = per_db[id(clock)] = TrustedClock(clock, db, settings)
        else:
            tc.settings = settings
        return tc


# --- helpers ----------------------------------------------------------------------------------------------------
def _newest_id(s: Session) -> int | None:
    return s.scalar(select(Checkpoint.id).order_by(Checkpoint.created_us.desc(), Checkpoint.id.desc()).limit(1))


def _database_anchor(s: Session) -> int | None:
    """The newest instant the database witnessed without a signature: the newest segment row's creation and the
    newest audit event (both cheap: the primary key and the ``at_us`` index)."""
    seg = s.scalar(select(Segment.created_us).order_by(Segment.id.desc()).limit(1))
    event = s.scalar(select(func.max(AuditEvent.at_us)))
    found = [int(x) for x in (seg, event) if x is not None]
    return max(found) if found else None


def _confirmed(s: Session, a: _Anchor) -> bool:
    """A ``clock.confirm`` event shortly before the checkpoint, and covered by its signed audit head."""
    assert a.us is not None and a.audit_seq is not None
    return (
        s.scalar(
            select(AuditEvent.seq)
            .where(
                AuditEvent.at_us >= a.us - CONFIRM_WINDOW_US,
                AuditEvent.at_us <= a.us,
                AuditEvent.seq <= a.audit_seq,
                AuditEvent.action == CONFIRM,
            )
            .limit(1)
        )
        is not None
    )


def _describe(a: _Anchor) -> str:
    return f"checkpoint {a.checkpoint_id} of {iso(a.us)}" if a.kind == "checkpoint" else f"a row of {iso(a.us)}"


def _skipped_note(a: _Anchor) -> str | None:
    if a.skipped:
        return f"the {a.skipped} newer checkpoint(s) do not verify with a pinned key"
    return None


def span(us: int) -> str:
    """A duration for people: ``40 d 2 h``, ``59 min``, ``12 s``."""
    s = abs(us) // 1_000_000
    if s >= 86_400:
        return f"{s // 86_400} d {s % 86_400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min"
    return f"{abs(us) / 1e6:.0f} s"
