"""Footage services: recordings listings, playback planning, read pins, playback tickets and the checks made while a
stream runs.

Playback tickets (:func:`issue_ticket`, :func:`ticket_principal`, :func:`claim_ticket`) are single-use: the one stream
a ticket opens claims it with one conditional UPDATE (``used_us IS NULL``), in the same transaction as the stream's
read pin, so parallel uses of one ticket give exactly one stream, and a refused start (``stream_limit``, a grant no
longer in force) leaves it unused. A ticket never combines with another user's bearer token (403
``ticket_not_yours``). See docs/api.md, "Playback", and docs/design/concurrency.md.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from api import audit, grants, people
from api.people import Principal
from integrity import chain
from integrity.verify_archive import Problem, open_finding, segment_subject
from nvr.clock import iso
from nvr.errors import Kind, NvrError
from nvr.models import Gap, Grant, PlaybackTicket, ReadPin, Segment, Volume
from retention import holds
from storage import pins

if TYPE_CHECKING:
    from storage.reader import PlaybackPlan, SegmentDamaged, SegmentRef

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
    *(getattr(Segment, f) for f in chain.LINKED_FIELDS),
    Segment.prev_link,
    Segment.link,
    Volume.path,
    Segment.rel_path,
)


def playback_refs(s: Session, camera_id: str, start_us: int, end_us: int) -> list[SegmentRef]:
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
        if chain.link(r.prev_link, r._mapping) != r.link:
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


def find_ticket(s: Session, secret: str, now_us: int) -> PlaybackTicket:
    """The ticket behind a secret; ``ticket_invalid`` (401) when it is unknown or has expired."""
    t = s.scalar(select(PlaybackTicket).where(PlaybackTicket.secret_hash == people.hash_secret(secret[:200])))
    if t is None or t.expires_us <= now_us:
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
    t: PlaybackTicket, camera_id: str, start_us: int | None, end_us: int | None, purpose: str | None
) -> None:
    """The ticket must be for this very request (``ticket_mismatch``) and not used yet (``ticket_used``; the claim in
    :func:`claim_ticket` is what decides, this only answers early)."""
    if (t.camera_id, t.start_us, t.end_us, t.purpose) != (camera_id, start_us, end_us, purpose):
        raise NvrError(Kind.UNAUTHENTICATED, "ticket_mismatch", "the playback ticket is for another request")
    if t.used_us is not None:
        raise NvrError(Kind.UNAUTHENTICATED, "ticket_used", "the playback ticket has been used; ask for a new one")


def claim_ticket(s: Session, ticket_id: int, client_addr: str | None, now_us: int) -> None:
    """Use the ticket up: one conditional UPDATE (``used_us IS NULL`` and not expired, rowcount checked). Call it in
    the transaction that pins the stream, so a refused start leaves the ticket unused; of parallel uses exactly one
    gets here first, the others answer 401 ``ticket_used``."""
    claimed = s.execute(
        update(PlaybackTicket)
        .where(PlaybackTicket.id == ticket_id, PlaybackTicket.used_us.is_(None), PlaybackTicket.expires_us > now_us)
        .values(used_us=now_us, used_addr=(client_addr or "")[:100] or None),
        execution_options={"synchronize_session": False},
    )
    if cast(CursorResult[Any], claimed).rowcount != 1:
        raise NvrError(Kind.UNAUTHENTICATED, "ticket_used", "the playback ticket has been used; ask for a new one")
