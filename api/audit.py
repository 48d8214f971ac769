"""Reading the audit trail over HTTP (filters, JSON, CSV); the writer lives in :mod:`integrity.audit_log`.

Every decision about footage, camera base information or administration writes one event through :func:`record`
in the same transaction as the decision, so either both are stored or neither is. A denial's transaction holds
nothing else: the request's work is rolled back and the denial is recorded on its own (api.app's error handler).
Nothing in this package updates or deletes an event.
"""

from __future__ import annotations

import csv
import io
import math
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from integrity import audit_chain, audit_log
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
)
from integrity.audit_log import verify as _verify_chain
from nvr.clock import iso
from nvr.models import AuditEvent, AuditHead


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


def verify(session: Session, batch: int = 5000) -> tuple[int, audit_chain.AuditProblem | None]:
    """Recompute the whole chain (integrity.audit_log.verify). A stored value of a type the writer never writes
    (bytes in a text column of a hand-edited SQLite row) cannot be hashed as it is; then the chain is recomputed
    with every such value as its text, which can never match the hash, so the edited row is named, not a crash."""
    try:
        return _verify_chain(session, batch)
    except (TypeError, ValueError):
        pass
    head_seq, head_hash = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    return audit_chain.verify(_plain_rows(session, batch), int(head_seq), head_hash)


def _plain_rows(session: Session, batch: int) -> Iterator[dict[str, Any]]:
    names = audit_log.VERIFIED_FIELDS
    cols = [getattr(AuditEvent, f) for f in names]
    last = 0
    while True:
        rows = session.execute(select(*cols).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)).all()
        if not rows:
            return
        for r in rows:
            yield audit_log.checkable({n: _plain(v) for n, v in zip(names, r, strict=True)})
        last = rows[-1][0]


COLUMNS = ("seq", "at", *audit_chain.HASHED_FIELDS[2:], "prev_hash", "hash")


def as_dict(ev: AuditEvent) -> dict[str, Any]:
    """The event as shown, for any stored row: every value is plain JSON (a hand-edited SQLite row can hold a
    value of another type than its column's, see :func:`_plain`), and every time has a text form (nvr.clock.iso is
    total)."""
    out: dict[str, Any] = {"seq": _plain(ev.seq), "at": iso(ev.at_us), "at_us": _plain(ev.at_us)}
    for name in audit_chain.HASHED_FIELDS[2:]:
        out[name] = _plain(getattr(ev, name))
    out["window_start"] = iso(ev.window_start_us)
    out["window_end"] = iso(ev.window_end_us)
    out["prev_hash"] = _plain(ev.prev_hash)
    out["hash"] = _plain(ev.hash)
    return out


def _plain(value: Any) -> Any:
    """None, integers and text as stored; anything else (a float that JSON cannot hold, bytes) as text."""
    if value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)


def to_csv(events: list[AuditEvent]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for ev in events:
        d = as_dict(ev)
        w.writerow([_csv_safe(d[c]) for c in COLUMNS])
    return buf.getvalue()


# What a spreadsheet program may take as the start of a formula (= + - @, their full-width and small forms, the
# minus sign), after whatever it skips or trims first: any whitespace or control or format character. A cell that
# starts with a tab, CR or LF is neutralised whatever follows (some programs split or trim on them).
_FORMULA_START = frozenset("=+-@\uff1d\uff0b\uff0d\uff20\ufe66\ufe62\ufe63\ufe6b\u2212")
_ALWAYS = ("\t", "\r", "\n")


def _skipped(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp")


def formula_like(text: str) -> bool:
    """Whether a spreadsheet could read ``text`` as a formula (or as more than one cell)."""
    if text.startswith(_ALWAYS):
        return True
    for ch in text:
        if not _skipped(ch):
            return ch in _FORMULA_START or unicodedata.normalize("NFKC", ch)[:1] in _FORMULA_START
    return False


def _csv_safe(value: Any) -> Any:
    # A user agent, purpose or reason is attacker text: a cell a spreadsheet would run as a formula gets a leading
    # apostrophe (the spreadsheet convention for "this is text"); the text after it is exactly as stored.
    if value is None:
        return ""
    if isinstance(value, str) and formula_like(value):
        return "'" + value
    return value
