"""Footage services: recordings listings, playback planning, read pins, playback tickets and the checks made while a
stream runs.

Playback tickets (:func:`issue_ticket`, :func:`ticket_principal`, :func:`claim_ticket`) are single-use: the one stream
a ticket opens claims it with one conditional UPDATE (``used_us IS NULL``), in the same transaction as the stream's
read pin, so parallel uses of one ticket give exactly one stream, and a refused start (``stream_limit``, a grant no
longer in force) leaves it unused. A ticket never combines with another user's bearer token (403
``ticket_not_yours``). See docs/api.md, "Playback", and docs/design/concurrency.md.

Playback sessions (:func:`enter_session`, :func:`leave_session`, :func:`close_sessions`): a player seeks with HTTP
Range requests, each a new request for the same URL. Requests that carry a ``Range`` header are one viewing: the
first opens a session (a ``read_pins`` row of kind ``session``: one read pin, one of the grant's ``max_streams``),
later ones from the same client address join it while it is open, and the session writes one ``playback.start``
(the first request to stream, :func:`mark_started`) and one ``playback.end`` with the bytes of all its requests and
their number. A ticket's first range request claims the ticket and opens the session; its later ones join, from
the claiming address only (another address: 401 ``ticket_used``). A bearer token's range requests join the open
session of the same token, camera, window, purpose and address. Every state change is one conditional UPDATE or
DELETE on the session's row (counts added in the statement, never read and written back), so parallel requests
of several API processes neither open two sessions nor lose bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from api import audit, grants, people
from api.people import Principal
from integrity import chain
from integrity.verify_archive import Problem, open_finding, segment_subject
from nvr.background import BackgroundLoop
from nvr.clock import iso
from nvr.errors import Kind, NvrError
from nvr.models import Gap, Grant, PlaybackTicket, ReadPin, Segment, Volume
from retention import holds
from storage import pins
from storage.keyring import Keyring
from storage.segment_io import segment_name

if TYPE_CHECKING:
    from api.context import Services
    from storage.reader import PlaybackPlan, SegmentDamaged, SegmentRef

log = logging.getLogger(__name__)
# Segments within this of each other are one continuous run (the recorder makes them touch exactly).
TOUCH_US = 1_000
TICKET_PREFIX = "nvrt_"


def check_window(start_us: int, end_us: int, max_us: int, what: str) -> None:
    if end_us <= start_us:
        raise NvrError(Kind.INVALID_ARGUMENT, "window_invalid", "end must be after start")
    if end_us - start_us > max_us:
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "window_too_long",
            f"one {what} covers at most {max_us // 1_000_000} s; split the request",
        )


def segments_in(s: Session, camera_id: str, start_us: int, end_us: int) -> list[tuple[Any, ...]]:
    """Rows overlapping [start_us, end_us), oldest first, as (seq, start_us, end_us, bytes, volume path, rel_path).

    Two index range scans on (camera_id, start_us): the one segment that starts at or before ``start_us`` (it may
    reach into the window) and those starting inside it. A single ``end_us > start`` condition could not use
    the index and would read every earlier segment of the camera. Rows on the sweeper's garbage list are no
    longer footage and are skipped.
    """
    cols = (Segment.seq, Segment.start_us, Segment.end_us, Segment.bytes, Volume.path, Segment.rel_path)
    return [tuple(r) for r in _overlapping(s, cols, camera_id, start_us, end_us)]


def _overlapping(s: Session, cols: tuple[Any, ...], camera_id: str, start_us: int, end_us: int) -> list[Any]:
    """The rows of :func:`segments_in` with the columns ``cols`` (which must include ``Segment.end_us``)."""
    before = s.execute(
        select(*cols)
        .join(Volume, Segment.volume_id == Volume.id)
        .where(Segment.camera_id == camera_id, Segment.start_us <= start_us, Segment.sweep_batch_id.is_(None))
        .order_by(Segment.start_us.desc())
        .limit(1)
    ).all()
    inside = s.execute(
        select(*cols)
        .join(Volume, Segment.volume_id == Volume.id)
        .where(
            Segment.camera_id == camera_id,
            Segment.start_us > start_us,
            Segment.start_us < end_us,
            Segment.sweep_batch_id.is_(None),
        )
        .order_by(Segment.start_us)
    ).all()
    return [r for r in before if r.end_us > start_us] + list(inside)


_PLAYBACK_COLS = (
    *(getattr(Segment, f) for f in (*chain.LINKED_FIELDS, *chain.OPTIONAL_FIELDS)),
    Segment.prev_link,
    Segment.link,
    Volume.path,
    Segment.rel_path,
    Segment.volume_id,
)


def playback_refs(
    s: Session, camera_id: str, start_us: int, end_us: int, keyring: Keyring | None = None
) -> list[SegmentRef]:
    """The segments of :func:`segments_in` as the reader takes them for playback: each with its recorded sha256
    (the reader hashes the file before sending any of it) and, when the row itself does not hold up, why.

    A row holds up when its ``link`` recomputes from its linked fields and its ``prev_link`` (integrity.chain: so a
    ``sha256``, size or time edited in the database is caught, even with the file forged to match), and, when the
    row before it in the chain (seq - 1) is in the window too, its ``prev_link`` is that row's ``link`` (a row
    rewritten with a recomputed link no longer joins its successor). The whole chain, across tombstones and against
    signed checkpoints, is ``nvr verify``'s job; this is the per-request part, a hash of ~250 bytes per row.
    """
    from storage.reader import SegmentRef

    rows = _overlapping(s, _PLAYBACK_COLS, camera_id, start_us, end_us)
    links = {r.seq: r.link for r in rows}
    refs = []
    for r in rows:
        problem = None
        try:
            relinked = chain.link(r.prev_link, r._mapping)
        except NvrError:  # a hash_alg the server never writes: the row was edited
            relinked = None
        if relinked != r.link:
            problem = "the catalogue row does not match its chain link (its sha256, size or times were changed)"
        elif links.get(r.seq - 1, r.prev_link) != r.prev_link:
            problem = f"the catalogue row's prev_link is not the link of seq {r.seq - 1} (the chain was rewritten)"
        refs.append(
            SegmentRef(
                path=Path(r.path) / r.rel_path,
                seq=r.seq,
                start_us=r.start_us,
                end_us=r.end_us,
                bytes=r.bytes,
                sha256=r.sha256,
                row_problem=problem,
                hash_alg=chain.row_hash_alg(r._mapping) if relinked is not None else "sha256",
                encryption=r.encryption,
                keyring=keyring,
                name=segment_name(r.volume_id, r.rel_path),
            )
        )
    return refs


def recordings(s: Session, camera_id: str, start_us: int, end_us: int) -> dict[str, Any]:
    """What exists in the window: segments merged into continuous runs, the holes between them (with the
    recorder's reason where it recorded one), and the unreleased evidence holds overlapping it."""
    runs: list[list[int]] = []
    count = 0
    for _seq, a, b, _n, _vp, _rp in segments_in(s, camera_id, start_us, end_us):
        count += 1
        if runs and a - runs[-1][1] <= TOUCH_US:
            runs[-1][1] = max(runs[-1][1], b)
            runs[-1][2] += 1
        else:
            runs.append([a, b, 1])
    holes: list[tuple[int, int]] = []
    cursor = start_us
    for a, b, _ in runs:
        if a > cursor:
            holes.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < end_us:
        holes.append((cursor, end_us))
    recorded_gaps = list(
        s.execute(
            select(Gap.start_us, Gap.end_us, Gap.reason)
            .where(Gap.camera_id == camera_id, Gap.start_us < end_us)
            .where((Gap.end_us.is_(None)) | (Gap.end_us > start_us))
            .order_by(Gap.start_us)
        )
    )

    def reason(a: int, b: int) -> str:
        for gs, ge, r in recorded_gaps:
            if gs < b and (ge is None or ge > a):
                return str(r)
        return "not_recorded"

    return {
        "camera_id": camera_id,
        "start": iso(start_us),
        "end": iso(end_us),
        "segments": count,
        "runs": [
            {"start": iso(max(a, start_us)), "end": iso(min(b, end_us)), "start_us": a, "end_us": b, "segments": n}
            for a, b, n in runs
        ],
        "gaps": [
            {"start": iso(a), "end": iso(b), "start_us": a, "end_us": b, "reason": reason(a, b)} for a, b in holes
        ],
        "holds": holds.overlapping(s, camera_id, start_us, end_us),
    }


def plan(refs: list[SegmentRef], start_us: int, end_us: int) -> PlaybackPlan:
    """Plan a playback from :func:`playback_refs` (reads the files' headers: call it outside a transaction)."""
    from storage.reader import plan_playback

    if not refs:
        raise NvrError(Kind.NOT_FOUND, "no_footage", "nothing was recorded in that window")
    return plan_playback(refs, start_us, end_us)


def damage_reason(camera_id: str, exc: SegmentDamaged) -> str:
    """The audit reason for a segment playback refused: the error code first, then which segment and why."""
    kind = f"{exc.problem}: " if exc.problem else ""
    return f"segment_damaged camera {camera_id} seq {exc.segment.seq}: {kind}{exc.what}"


def record_damage(
    s: Session,
    now_us: int,
    actor: audit.Actor,
    meta: audit.RequestMeta,
    camera_id: str,
    exc: SegmentDamaged,
    purpose: str | None,
    case_ref: str | None,
) -> str:
    """A segment failed its check during a playback: open an integrity finding (source ``playback``, unless the same
    problem is open already; /health then carries ``integrity_mismatch``) and write ``playback.damaged`` (outcome
    ``failed``) with the segment's footage time. Returns the audit reason. Call it inside the transaction that
    also records the request's end, before any other :func:`audit.record` (the audit write goes last)."""
    seg = exc.segment
    subject = segment_subject(camera_id, seg.seq)
    if exc.problem is not None:
        problem = Problem(exc.problem, camera_id, seg.seq, seg.start_us, subject, f"{seg.path}: {exc.what}")
        open_finding(s, problem, "playback", now_us)
    reason = damage_reason(camera_id, exc)
    audit.record(
        s,
        now_us,
        actor,
        meta,
        audit.Event(
            "playback.damaged",
            "failed",
            camera_id=camera_id,
            window_start_us=seg.start_us,
            window_end_us=seg.end_us,
            object_id=subject,
            purpose=purpose,
            case_ref=case_ref,
            reason=reason,
        ),
    )
    return reason


@dataclass(frozen=True)
class PinInfo:
    id: int
    grant_id: int
    token_id: int | None


def pin(
    s: Session, p: Principal, g: Grant, camera_id: str, start_us: int, end_us: int, now_us: int, request_id: str
) -> PinInfo:
    """Count the stream against its grant's limit and pin its segments; ``stream_limit`` (429) when full."""
    grants.lock(s, g.id)
    if pins.live_count(s, g.id, now_us) >= g.max_streams:
        raise NvrError(
            Kind.RESOURCE_EXHAUSTED,
            "stream_limit",
            f"your grant allows {g.max_streams} concurrent stream(s) and that many are running; end one first",
        )
    row = ReadPin(
        grant_id=g.id,
        user_id=p.user_id,
        token_id=p.token_id,
        camera_id=camera_id,
        start_us=start_us,
        end_us=end_us,
        started_us=now_us,
        heartbeat_us=now_us,
        request_id=request_id,
    )
    s.add(row)
    s.flush()
    return PinInfo(row.id, g.id, p.token_id)


# --- playback tickets ---------------------------------------------------------------------------------------
def issue_ticket(
    s: Session,
    p: Principal,
    meta: audit.RequestMeta,
    camera_id: str,
    start_us: int,
    end_us: int,
    purpose: str,
    now_us: int,
    lifetime_s: int,
) -> tuple[PlaybackTicket, str]:
    """A single-use credential for one playback URL (``playback.ticket``): bound to the user, the session that asked,
    the camera, the window and the purpose; only the SHA-256 of the secret is stored. The grant is checked now and
    again when the URL is used."""
    g = grants.authorize(s, p, camera_id, "playback", start_us, end_us, now_us)
    secret = TICKET_PREFIX + secrets.token_urlsafe(32)
    t = PlaybackTicket(
        secret_hash=people.hash_secret(secret),
        user_id=p.user_id,
        token_id=p.token_id,
        camera_id=camera_id,
        start_us=start_us,
        end_us=end_us,
        purpose=purpose,
        created_us=now_us,
        expires_us=now_us + lifetime_s * 1_000_000,
    )
    s.add(t)
    s.flush()
    audit.record(
        s,
        now_us,
        p.actor,
        meta,
        audit.Event(
            "playback.ticket",
            "allowed",
            camera_id=camera_id,
            window_start_us=start_us,
            window_end_us=end_us,
            object_id=f"ticket:{t.id}",
            purpose=purpose,
            case_ref=g.case_ref,
        ),
    )
    return t, secret


def find_ticket(s: Session, secret: str, now_us: int, joining: bool = False) -> PlaybackTicket:
    """The ticket behind a secret; ``ticket_invalid`` (401) when it is unknown or has expired. ``joining`` (a Range
    request): a ticket already used may be past its lifetime, since the session it opened may still be open (its
    lifetime bounds when a session may begin; :func:`enter_session` decides whether this request joins one)."""
    t = s.scalar(select(PlaybackTicket).where(PlaybackTicket.secret_hash == people.hash_secret(secret[:200])))
    if t is None or (t.expires_us <= now_us and not (joining and t.used_us is not None)):
        raise NvrError(Kind.UNAUTHENTICATED, "ticket_invalid", "the playback ticket is unknown or has expired")
    return t


def ticket_principal(s: Session, t: PlaybackTicket, bearer: Principal | None, now_us: int) -> Principal:
    """Who a ticket lets play. With a bearer token as well (``bearer``): another user's token is refused, 403
    ``ticket_not_yours`` (the request is never served or audited as the ticket's owner); the same user's token makes
    the request that token's (it authenticates the stream and is re-checked while it runs), and the ticket is still
    checked and used up. Without one, the session that made the ticket must still be valid."""
    if bearer is not None:
        if bearer.user_id != t.user_id:
            raise NvrError(
                Kind.PERMISSION_DENIED,
                "ticket_not_yours",
                "this playback ticket belongs to another user; it cannot be used with your token",
            )
        return bearer
    token = s.get(people.Token, t.token_id)
    if token is None:
        raise NvrError(Kind.UNAUTHENTICATED, "ticket_invalid", "the session that made this ticket has ended")
    return people.principal_for(s, token, now_us)


def check_ticket_use(
    t: PlaybackTicket,
    camera_id: str,
    start_us: int | None,
    end_us: int | None,
    purpose: str | None,
    joining: bool = False,
    client_addr: str | None = None,
) -> None:
    """The ticket must be for this very request (``ticket_mismatch``) and not used yet (``ticket_used``; the claim in
    :func:`claim_ticket` is what decides, this only answers early). ``joining`` (a Range request): a used ticket is
    fine from the address that claimed it (:func:`enter_session` decides whether its session is still open)."""
    if (t.camera_id, t.start_us, t.end_us, t.purpose) != (camera_id, start_us, end_us, purpose):
        raise NvrError(Kind.UNAUTHENTICATED, "ticket_mismatch", "the playback ticket is for another request")
    if t.used_us is not None and not (joining and t.used_addr == _addr(client_addr)):
        raise NvrError(Kind.UNAUTHENTICATED, "ticket_used", "the playback ticket has been used; ask for a new one")


def _addr(client_addr: str | None) -> str | None:
    return (client_addr or "")[:100] or None


def claim_ticket(s: Session, ticket_id: int, client_addr: str | None, now_us: int) -> None:
    """Use the ticket up: one conditional UPDATE (``used_us IS NULL`` and not expired, rowcount checked). Call it in
    the transaction that pins the stream, so a refused start leaves the ticket unused; of parallel uses exactly one
    gets here first, the others answer 401 ``ticket_used``."""
    claimed = s.execute(
        update(PlaybackTicket)
        .where(PlaybackTicket.id == ticket_id, PlaybackTicket.used_us.is_(None), PlaybackTicket.expires_us > now_us)
        .values(used_us=now_us, used_addr=_addr(client_addr)),
        execution_options={"synchronize_session": False},
    )
    if cast(CursorResult[Any], claimed).rowcount != 1:
        raise _ticket_used()


def _ticket_used() -> NvrError:
    return NvrError(Kind.UNAUTHENTICATED, "ticket_used", "the playback ticket has been used; ask for a new one")


# --- byte ranges ---------------------------------------------------------------------------------------------------
class RangeRefused(NvrError):
    """416: a Range header this server does not serve, with ``Content-Range: bytes */<total>`` when the length is
    known (api.app sends ``http_status`` and ``http_headers``)."""

    http_status = 416

    def __init__(self, code: str, message: str, total: int | None = None) -> None:
        super().__init__(Kind.INVALID_ARGUMENT, code, message)
        self.http_headers = {} if total is None else {"Content-Range": f"bytes */{total}"}


_RANGE = re.compile(r"(\d{1,19})-(\d{0,19})|-(\d{1,19})")


def parse_range(header: str) -> tuple[int | None, int | None]:
    """One ``bytes=`` range: (first, last) for ``a-b`` and ``a-`` (last None), (None, n) for the suffix ``-n``.
    Anything else is 416 ``range_invalid``; several ranges are 416 ``range_unsupported`` (one range per request)."""
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        raise RangeRefused("range_invalid", "the Range header must be bytes=<first>-<last>, <first>- or -<suffix>")
    parts = [part.strip() for part in spec.split(",") if part.strip()]  # RFC 9110: empty list elements are no range
    if len(parts) > 1:
        raise RangeRefused(
            "range_unsupported", "several ranges in one request are not supported: ask for one range at a time"
        )
    m = _RANGE.fullmatch(parts[0]) if parts else None
    if m is None:
        raise RangeRefused("range_invalid", "the Range header must be bytes=<first>-<last>, <first>- or -<suffix>")
    if m[3] is not None:
        return None, int(m[3])
    first, last = int(m[1]), int(m[2]) if m[2] else None
    if last is not None and last < first:
        raise RangeRefused("range_invalid", f"the range's last byte {last} is before its first {first}")
    return first, last


def resolve_range(wanted: tuple[int | None, int | None], total: int) -> tuple[int, int]:
    """The inclusive byte span of the ``total``-byte stream that ``wanted`` (:func:`parse_range`) names; 416
    ``range_not_satisfiable`` when it starts at or past the end (or is an empty suffix)."""
    first, last = wanted
    if first is None:
        n = last or 0
        if n == 0:
            raise RangeRefused("range_not_satisfiable", "an empty suffix range selects no byte", total)
        return max(0, total - n), total - 1
    if first >= total:
        raise RangeRefused(
            "range_not_satisfiable", f"the range starts at byte {first}; the stream has {total} bytes", total
        )
    return first, total - 1 if last is None else min(last, total - 1)


def etag(start_us: int, end_us: int, fingerprint: str) -> str:
    """A strong ETag for a window's stream: its window and the reader's fingerprint of what determines the bytes
    (the planned segments' seqs and recorded sha256s, the fragments taken, the total length)."""
    return '"' + hashlib.sha256(f"{start_us}:{end_us}:{fingerprint}".encode()).hexdigest()[:40] + '"'


# --- playback sessions (HTTP Range) -------------------------------------------------------------------------------
SESSION = "session"


@dataclass(frozen=True)
class SessionContext:
    """What the session's ``playback.end`` is written with, whoever closes it (a request, or the housekeeping pass
    of any API process): the opener's actor and request facts, and the event's fields."""

    actor: audit.Actor
    meta: audit.RequestMeta
    camera_id: str
    window_start_us: int
    window_end_us: int
    object_id: str
    purpose: str
    case_ref: str | None

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> SessionContext:
        raw = json.loads(text)
        return cls(
            **{**raw, "actor": audit.Actor(**raw["actor"]), "meta": audit.RequestMeta(**raw["meta"])}  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Entered:
    pin: PinInfo
    opened: bool  # this request opened the session (else it joined one)


def session_key(token_id: int | None, camera_id: str, start_us: int, end_us: int, purpose: str) -> str:
    """A bearer session's key: the token, the camera, the window and the purpose (hashed, fixed width)."""
    return hashlib.sha256(json.dumps([token_id, camera_id, start_us, end_us, purpose]).encode()).hexdigest()


def _joinable(now_us: int) -> Any:
    """An open session that takes new requests: not ending, and either running (fresh heartbeat) or idle within its
    idle time. An idle session past it is closed by the next housekeeping pass, never revived."""
    return and_(
        ReadPin.kind == SESSION,
        ReadPin.end_reason.is_(None),
        or_(
            and_(ReadPin.active > 0, ReadPin.heartbeat_us >= now_us - pins.PIN_STALE_US),
            and_(ReadPin.active == 0, ReadPin.idle_until_us > now_us),
        ),
    )


def _join(s: Session, match: Any, client_addr: str | None, now_us: int) -> PinInfo | None:
    """Join the open session ``match`` names from this address: one conditional UPDATE (``active + 1``)."""
    row = s.execute(
        update(ReadPin)
        .where(match, ReadPin.client_addr == _addr(client_addr), _joinable(now_us))
        .values(active=ReadPin.active + 1, heartbeat_us=now_us, idle_until_us=None)
        .returning(ReadPin.id, ReadPin.grant_id, ReadPin.token_id),
        execution_options={"synchronize_session": False},
    ).first()
    return None if row is None else PinInfo(int(row.id), int(row.grant_id), row.token_id)


def enter_session(
    s: Session,
    p: Principal,
    g: Grant,
    ticket_id: int | None,
    ctx: SessionContext,
    now_us: int,
    request_id: str,
) -> Entered:
    """A Range request joins its viewing's open session or opens it, in the request's pin transaction.

    With a ticket: the first use claims it (:func:`claim_ticket`) and opens the session; afterwards the request
    joins the session the ticket opened, from the claiming address while it is open, else 401 ``ticket_used`` (a
    ticket never opens a second session, never serves another address). With a bearer token: the grant's row lock
    first (so parallel first requests take turns), then join the session of the same key and address, or open one.
    Opening counts against ``max_streams`` (``stream_limit``); joining does not: a session is one stream."""
    addr = ctx.meta.client_addr
    if ticket_id is not None:
        try:
            claim_ticket(s, ticket_id, addr, now_us)
        except NvrError:
            joined = _join(s, ReadPin.ticket_id == ticket_id, addr, now_us)
            if joined is None:
                raise _ticket_used() from None
            return Entered(joined, opened=False)
        key = None
    else:
        key = session_key(p.token_id, ctx.camera_id, ctx.window_start_us, ctx.window_end_us, ctx.purpose)
        grants.lock(s, g.id)
        joined = _join(s, ReadPin.session_key == key, addr, now_us)
        if joined is not None:
            return Entered(joined, opened=False)
    info = pin(s, p, g, ctx.camera_id, ctx.window_start_us, ctx.window_end_us, now_us, request_id)
    s.execute(
        update(ReadPin)
        .where(ReadPin.id == info.id)
        .values(
            kind=SESSION,
            ticket_id=ticket_id,
            session_key=key,
            client_addr=_addr(addr),
            active=1,
            audit_context=ctx.dumps(),
        ),
        execution_options={"synchronize_session": False},
    )
    return Entered(info, opened=True)


def mark_started(s: Session, pin_id: int) -> bool:
    """True for the one request of a session that writes its ``playback.start`` (the first to stream): a conditional
    UPDATE of ``start_seq``; the caller then records the event and :func:`set_start_seq`."""
    done = s.execute(
        update(ReadPin).where(ReadPin.id == pin_id, ReadPin.start_seq.is_(None)).values(start_seq=0),
        execution_options={"synchronize_session": False},
    )
    return cast(CursorResult[Any], done).rowcount == 1


def set_start_seq(s: Session, pin_id: int, seq: int) -> None:
    s.execute(
        update(ReadPin).where(ReadPin.id == pin_id).values(start_seq=seq),
        execution_options={"synchronize_session": False},
    )


@dataclass(frozen=True)
class Closed:
    """A session's end, as its row said when it was removed."""

    context: SessionContext
    grant_id: int | None
    bytes_sent: int
    requests: int
    start_seq: int | None
    outcome: str
    reason: str | None


def leave_session(
    s: Session,
    pin_id: int,
    sent: int,
    served: bool,
    end: tuple[str, str] | None,
    now_us: int,
    idle_s: int,
) -> bool:
    """One request of a session is over: add its bytes (and, ``served``, count it) in one UPDATE, and when ``end``
    (outcome, reason) says the session must end (its grant stopped holding, a damaged segment), mark it (the first
    such reason stays). Returns True when the session is now to be closed: no request runs and it must end."""
    values: dict[str, Any] = dict(
        active=ReadPin.active - 1,
        bytes_sent=ReadPin.bytes_sent + sent,
        requests=ReadPin.requests + (1 if served else 0),
        heartbeat_us=now_us,
        idle_until_us=now_us + idle_s * 1_000_000,
    )
    if end is not None:
        values.update(
            end_outcome=func.coalesce(ReadPin.end_outcome, end[0]), end_reason=func.coalesce(ReadPin.end_reason, end[1])
        )
    row = s.execute(
        update(ReadPin).where(ReadPin.id == pin_id).values(**values).returning(ReadPin.active, ReadPin.end_reason),
        execution_options={"synchronize_session": False},
    ).first()
    return row is not None and row.active <= 0 and row.end_reason is not None


def close_session(s: Session, pin_id: int, condition: Any, now_us: int) -> Closed | None:
    """Remove the session's row if ``condition`` still holds (one conditional DELETE … RETURNING: of a request and
    the housekeeping passes of several processes, exactly one closes it) and write its ``playback.end`` in the same
    transaction (the audit write last), unless no request of it ever streamed (each was refused on its own)."""
    row = s.execute(
        delete(ReadPin)
        .where(ReadPin.id == pin_id, ReadPin.kind == SESSION, condition)
        .returning(
            ReadPin.audit_context,
            ReadPin.grant_id,
            ReadPin.bytes_sent,
            ReadPin.requests,
            ReadPin.start_seq,
            ReadPin.end_outcome,
            ReadPin.end_reason,
        ),
        execution_options={"synchronize_session": False},
    ).first()
    if row is None or row.audit_context is None:
        return None
    closed = Closed(
        SessionContext.loads(row.audit_context),
        row.grant_id,
        int(row.bytes_sent),
        int(row.requests),
        row.start_seq,
        row.end_outcome or "ok",
        row.end_reason,
    )
    if closed.start_seq:
        _record_end(s, closed, now_us)
    return closed


def _record_end(s: Session, c: Closed, now_us: int) -> None:
    ctx = c.context
    summary = f"session: {c.requests} range request(s), playback.start #{c.start_seq}"
    audit.record(
        s,
        now_us,
        ctx.actor,
        ctx.meta,
        audit.Event(
            "playback.end",
            c.outcome,
            camera_id=ctx.camera_id,
            window_start_us=ctx.window_start_us,
            window_end_us=ctx.window_end_us,
            object_id=ctx.object_id,
            purpose=ctx.purpose,
            case_ref=ctx.case_ref,
            reason=f"{c.reason}; {summary}" if c.reason else summary,
            bytes=c.bytes_sent,
        ),
    )


def closing_now() -> Any:
    """A session whose requests are all over and that must end (:func:`leave_session` said so)."""
    return and_(ReadPin.active <= 0, ReadPin.end_reason.is_not(None))


def _due(now_us: int) -> Any:
    """Sessions the housekeeping pass closes: idle past their idle time, ending with no request running, or left by
    a process that died (its requests' heartbeat stale, no idle time left)."""
    return or_(
        and_(ReadPin.active <= 0, ReadPin.idle_until_us <= now_us),
        closing_now(),
        and_(
            ReadPin.heartbeat_us < now_us - pins.PIN_STALE_US,
            or_(ReadPin.idle_until_us.is_(None), ReadPin.idle_until_us <= now_us),
        ),
    )


def close_sessions(db: Any, now_us: int, stopping: bool = False) -> list[Closed]:
    """The housekeeping pass: close every session that is due (:func:`_due`), and end idle sessions whose grant,
    token or user no longer holds (``terminated`` with that reason), each in its own transaction. ``stopping`` (the
    server shuts down): every session with no request running is due, so the trail is complete when it stops."""
    with db.session() as s:
        idle = s.execute(
            select(ReadPin.id, ReadPin.grant_id, ReadPin.token_id).where(
                ReadPin.kind == SESSION, ReadPin.active <= 0, ReadPin.end_reason.is_(None)
            )
        ).all()
        ending = []
        for pin_id, grant_id, token_id in idle:
            reason = grants.still_allowed(s, grant_id, token_id, now_us) if grant_id is not None else None
            if reason is not None:
                ending.append((pin_id, reason))
    closed: list[Closed] = []
    for pin_id, reason in ending:
        with db.session() as s:
            s.execute(
                update(ReadPin)
                .where(ReadPin.id == pin_id, ReadPin.end_reason.is_(None))
                .values(end_outcome="terminated", end_reason=reason),
                execution_options={"synchronize_session": False},
            )
    due_now = or_(_due(now_us), ReadPin.active <= 0) if stopping else _due(now_us)
    with db.session() as s:
        due = list(s.scalars(select(ReadPin.id).where(ReadPin.kind == SESSION, due_now)))
    for pin_id in due:
        with db.session() as s:
            c = close_session(s, pin_id, due_now, now_us)
            if c is not None:
                closed.append(c)
    return closed


class SessionHousekeeping(BackgroundLoop):
    """The API's loop that ends idle playback sessions (:func:`close_sessions`). Every API process runs one; the
    conditional DELETE makes exactly one of them close a session."""

    thread_name = "playback-sessions"
    retry_seconds = 10.0

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services

    def step(self) -> float:
        close_sessions(self.services.db, self.services.now_us())
        return max(1.0, min(5.0, self.services.settings.playback_session_idle_seconds / 4))

    def close(self) -> None:
        """Stop the loop, then close the sessions with no request running (at shutdown): a player that seeks later
        starts again with a new ticket. A session whose request is still running is closed by that request's end,
        or, if the process dies first, by a pass of any API process once its heartbeat is stale."""
        self.stop()
        try:
            close_sessions(self.services.db, self.services.now_us(), stopping=True)
        except Exception:
            log.exception("could not close the idle playback sessions at shutdown; the next pass will")
