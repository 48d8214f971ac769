"""Export requests, their jobs and bundle downloads over HTTP. The rules, and the audit event of each step, are in
:mod:`api.exports` and :mod:`api.export_jobs`; this module parses the requests and shapes the answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import Field

from api import export_jobs, exports
from api.context import Ctx, requires
from api.routes.schemas import Body
from integrity.envelope import SUFFIX as ENVELOPE_SUFFIX
from nvr.clock import parse_iso

router = APIRouter(tags=["exports"])
Long = Annotated[str, Field(min_length=1, max_length=2000)]


class ExportBody(Body):
    cameras: Annotated[list[Annotated[str, Field(max_length=64)]], Field(min_length=1, max_length=64)]
    start: Annotated[str, Field(max_length=64)]
    end: Annotated[str, Field(max_length=64)]
    purpose: Long
    case_ref: Annotated[str, Field(min_length=1, max_length=200)]
    legal_basis: Annotated[str, Field(min_length=1, max_length=2000, description="e.g. the unit's letter number")]
    recipient: Long
    destination: Annotated[str, Field(min_length=1, max_length=2000, description="where the copy will go")]
    grant_id: Annotated[int, Field(ge=1, le=2**62)] | None = None
    recipient_public_key: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=16384,
                description="PEM public key (X25519 or SM2) the bundle is encrypted to; the download is then an "
                "envelope only that key's private half opens (docs/exports/encrypted-copies.md)",
            ),
        ]
        | None
    ) = None


class DecisionBody(Body):
    reason: Annotated[str, Field(max_length=2000)]


def _chunks(f: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    try:
        while chunk := f.read(size):
            yield chunk
    finally:
        f.close()


@router.post("/exports", status_code=201)
def create_export(body: ExportBody, ctx: Annotated[Ctx, Depends(requires("export.request"))]) -> dict[str, Any]:
    """File an export request (officers; never a viewer, whatever other roles they hold). It needs a co-signature by
    a second officer of your unit, then the approval of an approver of each camera's owning unit (unless a grant
    covers it; see docs/exports)."""
    ctx.hint(purpose=body.purpose, case_ref=body.case_ref, destination=body.destination)
    spec = exports.ExportSpec(
        cameras=body.cameras,
        start_us=parse_iso(body.start),
        end_us=parse_iso(body.end),
        purpose=body.purpose,
        case_ref=body.case_ref,
        legal_basis=body.legal_basis,
        recipient=body.recipient,
        destination=body.destination,
        grant_id=body.grant_id,
        recipient_public_key=body.recipient_public_key,
    )
    ctx.hint(window_start_us=spec.start_us, window_end_us=spec.end_us)
    now = ctx.now_us
    with ctx.db.session() as s:
        r = exports.create(
            s, ctx.me, ctx.meta, spec, ctx.settings.export_max_window_hours, now, ctx.settings.crypto_suite
        )
        return exports.view(s, r, now)


@router.get("/exports")
def list_exports(
    ctx: Annotated[Ctx, Depends(requires("export.list"))],
    state: Annotated[str | None, Query(max_length=20)] = None,
) -> dict[str, Any]:
    """Requests you filed or co-signed, and (officers) those of your unit waiting for a co-signature; approvers and
    auditors see all (``state=pending_approval`` is an approver's queue)."""
    now = ctx.now_us
    with ctx.db.session() as s:
        return {"exports": [exports.view(s, r, now) for r in exports.list_requests(s, ctx.me, state, now)]}


@router.get("/exports/{request_id}")
def get_export(request_id: int, ctx: Annotated[Ctx, Depends(requires("export.read"))]) -> dict[str, Any]:
    """The request, its decisions and its job's progress (percent, bytes)."""
    with ctx.db.session() as s:
        return exports.view(s, exports.get_visible(s, ctx.me, request_id), ctx.now_us)


@router.post("/exports/{request_id}/cosign")
def cosign_export(request_id: int, ctx: Annotated[Ctx, Depends(requires("export.cosign"))]) -> dict[str, Any]:
    """A second officer of the requester's unit co-signs (never a viewer, whatever other roles they hold)."""
    ctx.hint(object_id=f"export:{request_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        r = exports.cosign(s, ctx.me, ctx.meta, request_id, now, ctx.settings.export_approval_valid_days)
        return exports.view(s, r, now)


def _decide(request_id: int, ctx: Ctx, approve: bool, reason: str) -> dict[str, Any]:
    ctx.hint(object_id=f"export:{request_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        r = exports.decide(
            s, ctx.me, ctx.meta, request_id, approve, reason, now, ctx.settings.export_approval_valid_days
        )
        return exports.view(s, r, now)


@router.post("/exports/{request_id}/approve")
def approve_export(
    request_id: int, body: DecisionBody, ctx: Annotated[Ctx, Depends(requires("export.approve"))]
) -> dict[str, Any]:
    """An approver of a camera's owning unit approves for that unit, with a reason."""
    return _decide(request_id, ctx, True, body.reason)


@router.post("/exports/{request_id}/reject")
def reject_export(
    request_id: int, body: DecisionBody, ctx: Annotated[Ctx, Depends(requires("export.reject"))]
) -> dict[str, Any]:
    return _decide(request_id, ctx, False, body.reason)


@router.post("/exports/{request_id}/withdraw")
def withdraw_export(request_id: int, ctx: Annotated[Ctx, Depends(requires("export.withdraw"))]) -> dict[str, Any]:
    ctx.hint(object_id=f"export:{request_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        return exports.view(s, exports.withdraw(s, ctx.me, ctx.meta, request_id, now), now)


@router.post("/exports/{request_id}/job", status_code=202)
def start_job(request_id: int, ctx: Annotated[Ctx, Depends(requires("export.job.start"))]) -> dict[str, Any]:
    """Start making the bundle (requester or co-signer, once approved; never a viewer). Poll ``GET /exports/{id}``
    for progress. Parallel starts make one job; the others answer 409 ``export_job_exists``."""
    ctx.hint(object_id=f"export:{request_id}")
    with ctx.db.session() as s:
        view = exports.job_view(export_jobs.start_job(s, ctx.me, ctx.meta, request_id, ctx.now_us))
    runner = getattr(ctx.request.app.state, "export_runner", None)
    if runner is not None:
        runner.wake()
    assert view is not None
    return view


@router.post("/exports/{request_id}/job/cancel")
def cancel_job(request_id: int, ctx: Annotated[Ctx, Depends(requires("export.job.cancel"))]) -> dict[str, Any]:
    """Cancel a queued job, or ask a running one to stop; it removes what it wrote and ends ``cancelled`` within
    about a second."""
    ctx.hint(object_id=f"export:{request_id}")
    with ctx.db.session() as s:
        view = exports.job_view(export_jobs.cancel_job(s, ctx.me, ctx.meta, request_id, ctx.now_us))
    assert view is not None
    return view


@router.get(
    "/exports/{request_id}/bundle",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/zip": {}, "application/octet-stream": {}},
            "description": "The signed bundle, whole; an envelope (application/octet-stream, ``.zip.nvrenc``) when "
            "the request named a recipient key.",
        }
    },
)
def download_bundle(
    request_id: int,
    ctx: Annotated[Ctx, Depends(requires("export.download"))],
    destination: Annotated[str, Query(min_length=1, max_length=2000, description="where this copy goes")],
) -> StreamingResponse:
    """Download the bundle (requester or co-signer only; never a viewer), declaring where this copy goes. Each
    download is counted (at most ``export_max_downloads``, however many ask at once) and audited per camera with
    its destination. A bundle is sent whole, never a byte range: each request is one counted, audited copy, so a
    Range request (a download manager resuming) gets the full file rather than a part that would use up a
    download."""
    ctx.hint(object_id=f"export:{request_id}", destination=destination)
    d: export_jobs.Download | None = None
    try:
        with ctx.db.session() as s:
            d = export_jobs.count_download(s, ctx.me, ctx.meta, ctx.settings, request_id, destination, ctx.now_us)
    except BaseException:
        if d is not None:  # counted, but the commit failed: nothing is sent, nothing was counted
            d.file.close()
        raise
    sealed = (d.job.bundle_name or "").endswith(ENVELOPE_SUFFIX)  # encrypted to the request's recipient key
    filename = d.filename + ENVELOPE_SUFFIX if sealed else d.filename
    return StreamingResponse(
        _chunks(d.file),
        media_type="application/octet-stream" if sealed else "application/zip",
        headers={
            "Content-Length": str(d.size),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Bundle-SHA256": d.job.bundle_sha256 or "",
            "Accept-Ranges": "none",
        },
    )
