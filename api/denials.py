"""Refusals of requests without a valid credential: counted, rate-limited, and summarised in the audit trail.

A request refused (4xx) while no valid credential came with it (no token; an unknown, expired or revoked token; a
bad playback ticket; a locked login; any other anonymous 4xx) costs one UPSERT into ``denial_tally``, keyed by
bucket (``denial_bucket_seconds``), client address (:func:`api.throttle.client_key`) and code. Then:

- **the first refusal of its (bucket, address, code)** is also written as its own audit event, exactly as every
  refusal was before (action, request id, user agent, window…): a single attempt is fully recorded;
- **the others** only increment the count;
- **once the bucket is over** it is summarised into one audit event, ``auth.denied.summary`` (outcome ``denied``,
  client address the counted one, object ``denials:<code>``, reason naming the count, code, address, first and
  last time). A bucket of a single refusal needs no summary: its own event is the whole record.

Summaries are written (a) by the next refusal from the same address after its bucket ended, (b) by the API's
background loop (:class:`Housekeeping`, every few seconds), and (c) when the API shuts down, then including the
bucket still running, so the trail is complete when the server stops. Marking a row summarised is one conditional
UPDATE (``summarised`` false → true), in the same transaction as its summary event: of any number of writers at
once, exactly one summarises a row. A refusal counted into a row already summarised would be lost from the
trail, so the count is conditional too (``WHERE NOT summarised``): such a refusal counts into the bucket's next
slot (key ``bucket start + 1 µs``, up to :data:`SLOTS`), whose first refusal is again its own event; past the last
slot it is its own event. No refusal is both in a summary and lost, or in two summaries.

**Rate limit.** Each refusal also increments the address's total for the bucket (a row with code ``*``, never
summarised). Past ``anonymous_denials_per_minute`` (scaled to the bucket's length) the refusal is answered
429 ``rate_limited`` with ``Retry-After`` (the end of the bucket) instead of its own code; it is still counted,
under its own code. Refusals of a request made with a valid credential (a real user's 403, 404, 409…) are not
handled here: each stays one audit event, as before.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, Table, case, delete, or_, select, update
from sqlalchemy.orm import Session

from api import audit, throttle
from nvr.background import BackgroundLoop
from nvr.clock import iso
from nvr.config import Settings
from nvr.models import DenialTally

if TYPE_CHECKING:
    from api.context import Services

log = logging.getLogger(__name__)
SUMMARY_ACTION = "auth.denied.summary"
TOTAL = "*"
"""The code of an address's per-bucket total (the rate limit's counter); never a refusal's code."""
SLOTS = 8
"""Rows one (bucket, address, code) may use: the bucket's own, then continuations after an early summary."""
US = 1_000_000
_T = cast(Table, DenialTally.__table__)


@dataclass(frozen=True)
class Verdict:
    """What became of one refusal: answered 429 ``rate_limited`` (and when to retry), written as its own event."""

    rate_limited: bool
    retry_after_s: int
    own_event: bool


def bucket_len_us(settings: Settings) -> int:
    return settings.denial_bucket_seconds * US


def bucket_start(settings: Settings, now_us: int) -> int:
    return now_us - now_us % bucket_len_us(settings)


def limit_per_bucket(settings: Settings) -> int:
    """``anonymous_denials_per_minute`` over one bucket (equal to it with the default 60 s bucket)."""
    return max(1, math.ceil(settings.anonymous_denials_per_minute * settings.denial_bucket_seconds / 60))


def refused(s: Session, settings: Settings, now_us: int, meta: audit.RequestMeta, ev: audit.Event) -> Verdict:
    """Count one refusal of a request without a valid credential (``ev`` is its denial event, reason its code);
    write ``ev`` if it is the first of its bucket; summarise the address's finished buckets when a new one starts."""
    start = bucket_start(settings, now_us)
    addr = throttle.client_key(meta.client_addr)
    code = (ev.reason or "unknown")[:64]
    count = None
    for slot in range(start, start + SLOTS):
        count = _count(s, slot, addr, code, now_us, conditional=True)
        if count is not None:
            break
    total = _count(s, start, addr, TOTAL, now_us, conditional=False)
    assert total is not None
    limited = total > limit_per_bucket(settings)
    retry = max(1, math.ceil((start + bucket_len_us(settings) - now_us) / US))
    own = count is None or count == 1
    if count == 1:
        # A new bucket for this address and code: the address's finished buckets are summarised first.
        summarise(s, settings, now_us, before_us=start, addr=addr)
    if own:
        audit.record(
            s,
            now_us,
            audit.ANONYMOUS,
            meta,
            replace(ev, reason=code + ("; answered 429 rate_limited" if limited else "")),
        )
    return Verdict(limited, retry, own)


def _count(s: Session, bucket_us: int, addr: str, code: str, now_us: int, *, conditional: bool) -> int | None:
    """One UPSERT: the row's count after this refusal, or None if it is summarised already (``conditional``)."""
    t = _T.c
    stmt = throttle.upsert(s, _T).values(
        bucket_us=bucket_us, client_addr=addr, code=code, count=1, first_us=now_us, last_us=now_us, summarised=False
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[t.bucket_us, t.client_addr, t.code],
        set_={"count": t.count + 1, "last_us": _greatest(t.last_us, now_us), "first_us": _least(t.first_us, now_us)},
        where=t.summarised.is_(False) if conditional else None,
    ).returning(t.count)
    value = s.execute(stmt).scalar()
    return None if value is None else int(value)


def _greatest(column: Any, value: int) -> Any:
    return case((column < value, value), else_=column)


def _least(column: Any, value: int) -> Any:
    return case((column > value, value), else_=column)


def summarise(
    s: Session,
    settings: Settings,
    now_us: int,
    *,
    before_us: int | None,
    addr: str | None = None,
    batch: int = 500,
) -> tuple[int, int]:
    """Summarise the rows not yet summarised whose bucket starts before ``before_us`` (None: every row, the running
    bucket's too), of one address or all; returns (rows looked at, summary events written). Every row is marked
    first (conditional UPDATE, in key order), then the events are written: the audit head's lock is taken last."""
    t = _T.c
    q = select(t.bucket_us, t.client_addr, t.code).where(t.summarised.is_(False), t.code != TOTAL)
    if before_us is not None:
        q = q.where(t.bucket_us < before_us)
    if addr is not None:
        q = q.where(t.client_addr == addr)
    keys = s.execute(q.order_by(t.bucket_us, t.client_addr, t.code).limit(batch)).all()
    closed = []
    for bucket_us, client_addr, code in keys:
        got = s.execute(
            update(_T)
            .where(t.bucket_us == bucket_us, t.client_addr == client_addr, t.code == code, t.summarised.is_(False))
            .values(summarised=True)
            .returning(t.count, t.first_us, t.last_us)
        ).first()
        if got is not None and int(got[0]) > 1:  # one refusal alone is recorded by its own event already
            closed.append((bucket_us, client_addr, code, int(got[0]), int(got[1]), int(got[2])))
    length = bucket_len_us(settings)
    limit = limit_per_bucket(settings)
    for bucket_us, client_addr, code, count, first_us, last_us in closed:
        start = bucket_us - bucket_us % length
        total = s.scalar(select(t.count).where(t.bucket_us == start, t.client_addr == client_addr, t.code == TOTAL))
        reason = (
            f"{count} refusals {code} from {client_addr} between {iso(first_us)} and {iso(last_us)} "
            f"(bucket of {settings.denial_bucket_seconds} s from {iso(start)}; the first is its own event); "
            f"{total if total is not None else 'unknown'} refusals from this address in the bucket, "
            f"those past {limit} answered 429 rate_limited"
        )
        audit.record(
            s,
            now_us,
            audit.ANONYMOUS,
            audit.RequestMeta(client_addr=client_addr, user_agent=None, request_id=None),
            audit.Event(SUMMARY_ACTION, "denied", object_id=f"denials:{code}", reason=reason),
        )
    return len(keys), len(closed)


def prune(s: Session, settings: Settings, now_us: int) -> int:
    """Delete rows no refusal can count into any more: summarised ones and totals, a bucket plus ten minutes
    after their bucket ended (a refusal decided just before a bucket ended may still be on its way)."""
    t = _T.c
    before = bucket_start(settings, now_us) - bucket_len_us(settings) - 600 * US
    gone = cast(
        CursorResult[Any],
        s.execute(delete(_T).where(t.bucket_us < before, or_(t.summarised.is_(True), t.code == TOTAL))),
    )
    return int(gone.rowcount or 0)


def flush(services: Services, *, closing: bool = False) -> int:
    """Summarise every finished bucket (``closing``: every bucket), in batches of one transaction each; then prune
    the tally and the login throttle. Returns the summary events written."""
    now = services.now_us()
    settings = services.settings
    written = 0
    for _ in range(1000):
        with services.db.session() as s:
            looked, wrote = summarise(s, settings, now, before_us=None if closing else bucket_start(settings, now))
        written += wrote
        if looked < 500:
            break
    with services.db.session() as s:
        prune(s, settings, now)
        throttle.prune(s, now, settings)
    return written


class Housekeeping(BackgroundLoop):
    """The API's loop for abuse bookkeeping: summaries of finished denial buckets, pruning of both tables."""

    thread_name = "denial-summaries"
    retry_seconds = 30.0

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services

    @property
    def interval_seconds(self) -> float:
        return max(1.0, min(15.0, self.services.settings.denial_bucket_seconds / 4))

    def step(self) -> float:
        flush(self.services)
        return self.interval_seconds

    def close(self) -> None:
        """Stop the loop, then summarise everything counted, the running bucket too (at shutdown)."""
        self.stop()
        try:
            flush(self.services, closing=True)
        except Exception:
            log.exception("could not summarise the denial counts at shutdown; the next start will")
