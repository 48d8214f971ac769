"""Appending to the audit trail and checking it: the writer every layer above ``integrity`` uses.

Every decision about footage, camera base information, retention or administration writes one event through
:func:`record` in the same transaction as the decision, so either both are stored or neither is.

Appending first bumps the single ``audit_head`` row (``UPDATE … RETURNING`` the new seq and the previous hash):
that row lock (PostgreSQL) or the write lock (SQLite; its driver opens the transaction at that first write) makes
concurrent writers take turns, so sequence numbers have no holes and every event links to exactly one predecessor.
Nothing here updates or deletes an event; the chain itself is :mod:`integrity.audit_chain`.

Each event is hashed with the active suite's algorithm (the active signing key's suite, :func:`active_suite`)
and says so in ``hash_alg``: ``sm3`` under ``sm2-sm3``, None for SHA-256 (as every event made before suites could
change), so a log that crosses a suite change verifies event by event. The suite is cached per database for
:data:`SUITE_TTL_S` seconds (a key rotation in this process forgets it at once), for the recorder too; a stale
value only means a few more records of the old algorithm, each still naming its own.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from integrity import audit_chain, suites
from nvr.models import AuditEvent, AuditHead, SigningKey

_HEAD = cast(Table, AuditHead.__table__)
_EVENTS = cast(Table, AuditEvent.__table__)
OUTCOMES = ("allowed", "denied", "ok", "terminated", "failed")
VERIFIED_FIELDS = (*audit_chain.HASHED_FIELDS, "hash_alg", "prev_hash", "hash")
"""What a stored event gives the chain check (integrity.audit_chain.verify): every hashed field, its algorithm, and
the two links."""
SUITE_TTL_S = 5.0
"""How long the active suite's hash algorithm is reused before it is read from the database again."""
_suite_cache: weakref.WeakKeyDictionary[Engine, tuple[float, str]] = weakref.WeakKeyDictionary()
_suite_lock = threading.Lock()


@dataclass(frozen=True)
class Actor:
    """Who acts, as the event records it (copied, so a later rename does not rewrite history)."""

    id: int | None
    name: str | None
    unit: str | None
    roles: str | None


ANONYMOUS = Actor(None, None, None, None)


@dataclass(frozen=True)
class RequestMeta:
    client_addr: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


CLI = RequestMeta(client_addr="local", user_agent="nvr-cli", request_id=None)
SYSTEM = Actor(None, "system", None, None)
"""The server acting on its own: the sweeper, the recorder."""
INTERNAL = RequestMeta(client_addr="local", user_agent="nvr-server", request_id=None)


@dataclass
class Event:
    action: str
    outcome: str
    camera_id: str | None = None
    window_start_us: int | None = None
    window_end_us: int | None = None
    object_id: str | None = None
    purpose: str | None = None
    case_ref: str | None = None
    destination: str | None = None
    reason: str | None = None
    bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def record(session: Session, now_us: int, actor: Actor, meta: RequestMeta, ev: Event) -> int:
    """Append one event; returns its sequence number. Call it last in the transaction: it serialises writers."""
    # Core statements on the connection: the ORM's bulk paths add nothing here and cost a third of the time.
    conn = session.connection()
    seq, prev_hash = conn.execute(
        update(_HEAD).where(_HEAD.c.id == 1).values(seq=_HEAD.c.seq + 1).returning(_HEAD.c.seq, _HEAD.c.hash)
    ).one()
    alg = active_hash_alg(session)
    hash_alg = None if alg == suites.DEFAULT_HASH else alg  # None: SHA-256, as events before suites could change
    if seq == 1 and hash_alg is not None:
        prev_hash = audit_chain.genesis(hash_alg)  # the head row starts at SHA-256's genesis
    row: dict[str, Any] = {
        "seq": seq,
        "at_us": now_us,
        "actor_id": actor.id,
        "actor_name": actor.name,
        "actor_unit": actor.unit,
        "actor_roles": actor.roles,
        "action": ev.action,
        "camera_id": ev.camera_id,
        "window_start_us": ev.window_start_us,
        "window_end_us": ev.window_end_us,
        "object_id": ev.object_id,
        "purpose": _clip(ev.purpose, 2000),
        "case_ref": _clip(ev.case_ref, 200),
        "destination": _clip(ev.destination, 2000),
        "outcome": ev.outcome,
        "reason": _clip(ev.reason, 2000),
        "client_addr": _clip(meta.client_addr, 64),
        "user_agent": _clip(meta.user_agent, 500),
        "request_id": _clip(meta.request_id, 64),
        "bytes": ev.bytes,
        "hash_alg": hash_alg,
    }
    digest = audit_chain.link(prev_hash, row)
    add_event = insert(_EVENTS).values(**row, prev_hash=prev_hash, hash=digest)
    move_head = update(_HEAD).where(_HEAD.c.id == 1).values(hash=digest)
    if conn.dialect.name == "postgresql":
        # One round trip for both: a data-modifying CTE. (SQLite has none; it runs in-process anyway.)
        conn.execute(add_event.add_cte(move_head.returning(_HEAD.c.id).cte("move_head")))
    else:
        conn.execute(add_event)
        conn.execute(move_head)
    return int(seq)


def active_suite(session: Session) -> str:
    """The crypto suite of the active signing key (what new segments, audit events and checkpoints are hashed
    with), or the default suite before the first key is made. Read from the database each call."""
    suite = session.scalar(
        select(SigningKey.suite)
        .where(SigningKey.retired_us.is_(None))
        .order_by(SigningKey.created_us.desc(), SigningKey.key_id)
        .limit(1)
    )
    return str(suite) if suite is not None else suites.DEFAULT_SUITE


def active_hash_alg(session: Session) -> str:
    """The active suite's hash algorithm, cached per database for :data:`SUITE_TTL_S` seconds: what the audit log
    and the recorder hash new records with."""
    engine = session.get_bind()
    now = time.monotonic()
    key = engine if isinstance(engine, Engine) else None
    if key is not None:
        with _suite_lock:
            cached = _suite_cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
    alg = suites.get(active_suite(session)).hash_alg
    if key is not None:
        with _suite_lock:
            _suite_cache[key] = (now + SUITE_TTL_S, alg)
    return alg


def forget_suite(session: Session) -> None:
    """Drop the cached suite of ``session``'s database: the next event reads it again (after a key is made)."""
    engine = session.get_bind()
    if isinstance(engine, Engine):
        with _suite_lock:
            _suite_cache.pop(engine, None)


def _clip(text: str | None, n: int) -> str | None:
    return text if text is None or len(text) <= n else text[: n - 1] + "…"


def verify(session: Session, batch: int = 5000) -> tuple[int, audit_chain.AuditProblem | None]:
    """Recompute the whole chain from the stored rows, in batches so memory stays flat."""
    head_seq, head_hash = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    return audit_chain.verify(_all_rows(session, batch), int(head_seq), head_hash)


def _all_rows(session: Session, batch: int) -> Iterator[dict[str, Any]]:
    cols = [getattr(AuditEvent, f) for f in VERIFIED_FIELDS]
    names = VERIFIED_FIELDS
    last = 0
    while True:
        rows = session.execute(select(*cols).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)).all()
        if not rows:
            return
        for r in rows:
            yield checkable(dict(zip(names, r, strict=True)))
        last = rows[-1][0]


def checkable(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` as audit_chain.verify can take it: a ``hash_alg`` the writer never writes (an edited row) cannot be
    hashed, so the event is given SHA-256 and a hash no digest equals, and the check names it as edited."""
    alg = event.get("hash_alg")
    if alg is not None and alg not in suites.HASH_ALGS:
        return {**event, "hash_alg": None, "hash": f"unknown hash_alg {str(alg)[:40]!r}"}
    return event
