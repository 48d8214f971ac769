"""Recordings listings and playback. Each needs a grant covering the camera, the action and the whole window."""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request

from api import audit, footage, grants
from api.context import Ctx, authenticated, request_hint, requires, services
from api.routes.schemas import TicketBody
from api.stream import PlaybackStream, StreamJob
from nvr import registry
from nvr.clock import iso, parse_iso
from nvr.errors import NvrError
from storage import pins
from storage.keyring import Keyring
from storage.reader import SegmentDamaged, fingerprint, start_playback, start_range

log = logging.getLogger(__name__)
router = APIRouter(tags=["footage"])
Time = Annotated[str, Query(max_length=64, description="ISO 8601 with a zone, e.g. 2026-11-21T08:00:00Z")]
Purpose = Annotated[str, Query(min_length=1, max_length=2000, description="Why you need this footage (audited).")]


def _window(ctx: Ctx, start: str, end: str, max_us: int, what: str) -> tuple[int, int]:
    start_us, end_us = parse_iso(start), parse_iso(end)
    ctx.hint(window_start_us=start_us, window_end_us=end_us)
    footage.check_window(start_us, end_us, max_us, what)
    return start_us, end_us


@router.get("/cameras/{camera_id}/recordings")
def recordings(
    camera_id: str, start: Time, end: Time, ctx: Annotated[Ctx, Depends(requires("recordings.list"))]
) -> dict[str, Any]:
    """What exists in a window: continuous runs of segments, and the gaps between them with their reasons.
    Needs a grant with ``playback`` covering the camera and the window."""
    registry.validate_id(camera_id)
    start_us, end_us = _window(ctx, start, end, ctx.settings.listing_max_days * 86_400_000_000, "listing")
    now = ctx.now_us
    with ctx.db.session() as s:
        g = grants.authorize(s, ctx.me, camera_id, "playback", start_us, end_us, now)
        out = footage.recordings(s, camera_id, start_us, end_us)
        ctx.record(
            s,
            audit.Event(
                "recordings.list",
                "allowed",
                camera_id=camera_id,
                window_start_us=start_us,
                window_end_us=end_us,
                object_id=f"grant:{g.id}",
                purpose=g.purpose,
                case_ref=g.case_ref,
            ),
        )
    return out


@router.post("/cameras/{camera_id}/playback-tickets", status_code=201)
def playback_ticket(
    camera_id: str, body: TicketBody, ctx: Annotated[Ctx, Depends(requires("playback.ticket"))]
) -> dict[str, Any]:
    """A short-lived, single-use URL for a ``<video src>`` (which cannot send an Authorization header). The grant is
    checked now and again when the URL is used; the ticket is bound to you, this camera, window and purpose, and
    opens one stream: a second use answers 401 ``ticket_used``."""
    registry.validate_id(camera_id)
    ctx.hint(purpose=body.purpose)
    start_us, end_us = _window(ctx, body.start, body.end, ctx.settings.playback_max_seconds * 1_000_000, "playback")
    now = ctx.now_us
    with ctx.db.session() as s:
        t, secret = footage.issue_ticket(
            s, ctx.me, ctx.meta, camera_id, start_us, end_us, body.purpose, now, ctx.settings.playback_ticket_seconds
        )
    query = urllib.parse.urlencode(
        {"start": iso(start_us), "end": iso(end_us), "purpose": body.purpose, "ticket": secret}
    )
    return {"url": f"/api/v1/cameras/{camera_id}/playback?{query}", "expires": iso(t.expires_us)}


def _query_time(text: str | None) -> int | None:
    try:
        return parse_iso(text or "")
    except NvrError:
        return None


def _playback_ctx(request: Request) -> Ctx:
    """Bearer token, or a playback ticket matching the URL's camera, window and purpose (or both, for one user).

    The ticket is checked here and claimed in the request's pin transaction (``request.state.ticket_id``); a Range
    request with a used ticket is let through to join the session it opened (api.footage.enter_session). Refusals
    are audited under the bearer's user when a token came, else under the ticket's owner once the ticket is known
    (an unknown or expired ticket: anonymous)."""
    ticket = request.query_params.get("ticket")
    if not ticket:
        return authenticated(request, "playback.start")
    camera_id = str(request.path_params.get("camera_id"))[:64]
    request_hint(request).update(action="playback.start", camera_id=camera_id)
    bearer = authenticated(request, "playback.start").principal if request.headers.get("authorization") else None
    svc = services(request)
    now = svc.now_us()
    q = request.query_params
    joining = "range" in request.headers  # a player's range request may join the session the ticket opened
    with svc.db.session() as s:
        t = footage.find_ticket(s, ticket, now, joining)
        request_hint(request).update(object_id=f"ticket:{t.id}")
        principal = footage.ticket_principal(s, t, bearer, now)
    # Refusals from here on name this person: the bearer's user, or the owner of the ticket that came alone.
    request.state.principal = principal
    addr = request.client.host if request.client else None
    footage.check_ticket_use(
        t, camera_id, _query_time(q.get("start")), _query_time(q.get("end")), q.get("purpose"), joining, addr
    )
    request.state.ticket_id = t.id
    return Ctx(svc, request, principal)


_RANGE_DOC = (
    "range_invalid: a malformed Range header; range_unsupported: several ranges in one request; "
    "range_not_satisfiable: the range starts past the end (Content-Range: bytes */<total>)."
)


@router.get(
    "/cameras/{camera_id}/playback",
    response_class=PlaybackStream,
    status_code=200,  # PlaybackStream.__init__ has no status_code for FastAPI to infer it from (openapi.json 500s)
    responses={
        200: {"content": {"video/mp4": {}}, "description": "Fragmented MP4 of the window."},
        206: {
            "content": {"video/mp4": {}},
            "description": "One byte range of that same stream (Range: bytes=a-b, a- or -n), with Content-Range.",
        },
        416: {"content": {"application/json": {}}, "description": _RANGE_DOC},
        500: {
            "content": {"application/json": {}},
            "description": "segment_damaged: the first segment to send (or a row) failed its integrity check.",
        },
    },
)
def playback(
    camera_id: str,
    start: Time,
    end: Time,
    purpose: Purpose,
    ctx: Annotated[Ctx, Depends(_playback_ctx)],
    ticket: Annotated[str | None, Query(max_length=200, description="From POST playback-tickets.")] = None,
    range_header: Annotated[
        str | None,
        Header(
            alias="range",
            max_length=200,
            description="One byte range (bytes=a-b, a- or -n): 206 with that slice; joins the playback session.",
        ),
    ] = None,
    if_range: Annotated[
        str | None, Header(max_length=200, description="An ETag: the Range applies only if it still matches.")
    ] = None,
) -> PlaybackStream:
    """Stream the window as fragmented MP4, from the keyframe at or before ``start``, across segment boundaries
    and gaps (collapsed; listed in the ``X-Nvr-Gaps`` header). Needs a grant with ``playback`` covering the camera
    and the window; counts against the grant's concurrent streams (429 ``stream_limit``).

    Seekable: ``Accept-Ranges: bytes`` and a strong ``ETag``; a ``Range`` request gets 206 with exactly that slice
    of the same stream (416 ``range_invalid``, ``range_unsupported``, ``range_not_satisfiable``). Range requests of
    one viewing are one audited playback session: one read pin, one stream of the grant, one ``playback.start``
    and one ``playback.end`` with the bytes of them all (docs/api.md, "Playback").

    Every segment is hashed against its catalogue row, and the row's chain link recomputed, before any of its bytes
    is sent: 500 ``segment_damaged`` when that fails before the first byte; a later segment that fails ends the
    stream before it, short of ``Content-Length`` (the audit trail and an integrity finding say why)."""
    registry.validate_id(camera_id)
    ctx.hint(purpose=purpose)
    start_us, end_us = _window(ctx, start, end, ctx.settings.playback_max_seconds * 1_000_000, "playback")
    wanted = footage.parse_range(range_header) if range_header is not None else None  # 416 before anything is done
    in_session = range_header is not None
    now = ctx.now_us
    meta = ctx.meta
    # The pin is committed before the segments are read: the sweeper marks rows, commits, then re-checks pins,
    # so either it sees this pin and spares the segments, or this read sees its marks and skips them
    # (docs/retention/sweeper.md). Planning first could hand the stream a file being unlinked.
    ticket_id: int | None = getattr(ctx.request.state, "ticket_id", None)
    with ctx.db.session() as s:
        g = grants.authorize(s, ctx.me, camera_id, "playback", start_us, end_us, now)
        ctx.hint(case_ref=g.case_ref, object_id=f"grant:{g.id}" if ticket_id is None else f"ticket:{ticket_id}")
        fields: dict[str, Any] = dict(
            camera_id=camera_id,
            window_start_us=start_us,
            window_end_us=end_us,
            object_id=f"grant:{g.id}",
            purpose=purpose,
            case_ref=g.case_ref,
        )
        if in_session:  # a player's range request: joins its viewing's session, or opens it (claiming the ticket)
            context = footage.SessionContext(ctx.actor, meta, **fields)
            pin = footage.enter_session(s, ctx.me, g, ticket_id, context, now, meta.request_id or "").pin
        else:
            if ticket_id is not None:  # in the pin's transaction: a start refused below leaves the ticket unused
                footage.claim_ticket(s, ticket_id, meta.client_addr, now)
            pin = footage.pin(s, ctx.me, g, camera_id, start_us, end_us, now, meta.request_id or "")
    # Rows (and their chain links) in a short transaction; files are read outside one: the headers of every file
    # (the plan), then the first segment to send whole, hashed against its row, all before a byte is sent.
    try:
        with ctx.db.session() as s:
            refs = footage.playback_refs(s, camera_id, start_us, end_us, Keyring(ctx.settings.master_keys_dir))
        plan = footage.plan(refs, start_us, end_us)
        tag = footage.etag(start_us, end_us, fingerprint(plan))
        span = None
        if wanted is not None and (if_range is None or if_range.strip() == tag):  # If-Range not matching: all
            span = footage.resolve_range(wanted, plan.total_bytes)
        stop = threading.Event()
        if span is None:
            chunks = start_playback(plan, stop=stop.is_set)
        else:
            chunks = start_range(plan, span[0], span[1], stop=stop.is_set)
        with ctx.db.session() as s:
            if not in_session or footage.mark_started(s, pin.id):  # a session: its first request to stream
                seq = ctx.record(
                    s,
                    audit.Event(
                        "playback.start",
                        "allowed",
                        **fields,
                        reason=f"segments {plan.segments[0]}..{plan.segments[-1]}"
                        + ("; session" if in_session else "")
                        + ("" if ticket_id is None else f"; ticket {ticket_id}"),
                    ),
                )
                if in_session:
                    footage.set_start_seq(s, pin.id, seq)
    except SegmentDamaged as exc:
        # Nothing was sent: 500 segment_damaged (the error handler adds the refused playback.start event). The
        # finding and playback.damaged go in one transaction with the pin's release.
        log.error("playback of %s refused: %s", camera_id, exc)
        with ctx.db.session() as s:
            _release(ctx, s, pin.id, in_session, ("failed", footage.damage_reason(camera_id, exc)))
            footage.record_damage(s, ctx.now_us, ctx.actor, meta, camera_id, exc, purpose, g.case_ref)
        raise
    except BaseException:
        with ctx.db.session() as s:
            _release(ctx, s, pin.id, in_session, None)
        raise
    headers = {
        "X-Nvr-Start": iso(plan.first_us) or "",
        "X-Nvr-End": iso(plan.end_us) or "",
        "X-Nvr-Gaps": json.dumps(
            [{"start": iso(gp.start_us), "end": iso(gp.end_us), "at_media_us": gp.media_offset_us} for gp in plan.gaps],
            separators=(",", ":"),
        ),
        "Accept-Ranges": "bytes",
        "ETag": tag,
        # Every segment is hashed against its catalogue row before its first byte is sent; one that fails ends
        # the stream before it, short of Content-Length (docs/api.md, "Playback").
        "X-Nvr-Integrity": "verified-per-segment",
    }
    if plan.truncated_at_us is not None:
        headers["X-Nvr-Truncated-At"] = iso(plan.truncated_at_us) or ""
    if span is not None:
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{plan.total_bytes}"
    job = StreamJob(
        services=ctx.services,
        chunks=chunks,
        pin_id=pin.id,
        grant_id=g.id,
        token_id=pin.token_id,
        actor=ctx.actor,
        meta=meta,
        end_event=audit.Event("playback.end", "ok", **fields),
        stop=stop,
        session=in_session,
    )
    if span is None:
        return PlaybackStream(job, headers, plan.total_bytes)
    return PlaybackStream(job, headers, span[1] - span[0] + 1, status_code=206)


def _release(ctx: Ctx, s: Any, pin_id: int, in_session: bool, end: tuple[str, str] | None) -> None:
    """A request refused after its pin was taken gives it back: a plain stream's pin goes; a session request leaves
    the session (nothing sent, not counted), which closes at once when ``end`` says it must and no request runs."""
    if not in_session:
        pins.unpin(s, pin_id)
        return
    now = ctx.now_us
    if footage.leave_session(s, pin_id, 0, False, end, now, ctx.settings.playback_session_idle_seconds):
        footage.close_session(s, pin_id, footage.closing_now(), now)
