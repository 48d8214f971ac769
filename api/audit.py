"""Reading the audit trail over HTTP (filters, JSON, CSV); the writer lives in :mod:`integrity.audit_log`.

Every decision about footage, camera base information or administration writes one event through :func:`record`
in the same transaction as the decision, so either both are stored or neither is. A denial's transaction holds
nothing else: the request's work is rolled back and the denial is recorded on its own (api.app's error handler).
Nothing in this package updates or deletes an event.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from integrity import audit_chain
from integrity.audit_log import (  # noqa: F401  (the writer, re-exported for the routers)
    ANONYMOUS,
    CLI,
    INTERNAL,
    OUTCOMES,
    SYSTEM,
    Actor,
    Event,
    RequestMeta,
    record,
    verify,
)
from nvr.clock import iso
from nvr.models import AuditEvent


@dataclass(frozen=True)
class AuditFilter:
    since_us: int | None = None
    until_us: int | None = None
    actor_id: int | None = None
    action: str | None = None
    camera_id: str | None = None
    outcome: str | None = None
    after_seq: int | None = None
    limit: int = 1000


def query(session: Session, f: AuditFilter) -> list[AuditEvent]:
    q = select(AuditEvent).order_by(AuditEvent.seq).limit(f.limit)
    if f.since_us is not None:
        q = q.where(AuditEvent.at_us >= f.since_us)
    if f.until_us is not None:
        q = q.where(AuditEvent.at_us < f.until_us)
    if f.actor_id is not None:
        q = q.where(AuditEvent.actor_id == f.actor_id)
    if f.action is not None:
        q = q.where(AuditEvent.action == f.action)
    if f.camera_id is not None:
        q = q.where(AuditEvent.camera_id == f.camera_id)
    if f.outcome is not None:
        q = q.where(AuditEvent.outcome == f.outcome)
    if f.after_seq is not None:
        q = q.where(AuditEvent.seq > f.after_seq)
    return list(session.scalars(q))


COLUMNS = ("seq", "at", *audit_chain.HASHED_FIELDS[2:], "prev_hash", "hash")


def as_dict(ev: AuditEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"seq": ev.seq, "at": iso(ev.at_us), "at_us": ev.at_us}
    for name in audit_chain.HASHED_FIELDS[2:]:
        out[name] = getattr(ev, name)
    out["window_start"] = iso(ev.window_start_us)
    out["window_end"] = iso(ev.window_end_us)
    out["prev_hash"] = ev.prev_hash
    out["hash"] = ev.hash
    return out


def to_csv(events: list[AuditEvent]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for ev in events:
        d = as_dict(ev)
        w.writerow([_csv_safe(d[c]) for c in COLUMNS])
    return buf.getvalue()


def _csv_safe(value: Any) -> Any:
    # A cell starting with = + - @ is a formula to spreadsheet programs; a user agent or purpose is attacker text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value
