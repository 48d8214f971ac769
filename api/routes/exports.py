"""Export requests, their jobs and bundle downloads. The rules are in :mod:`api.exports` and :mod:`api.export_jobs`;
this module maps them to HTTP and writes one audit event per step, in the step's own transaction."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse
from pydantic import Field
from sqlalchemy import select
from starlette.types import Receive, Scope, Send

from api import audit, exports
from api.context import Ctx, requires
from api.export_jobs import bundle_path
from api.routes.schemas import Body
from nvr.clock import parse_iso
from nvr.errors import Kind, NvrError
from nvr.models import ExportJob, ExportRequest

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


class DecisionBody(Body):
    reason: Annotated[str, Field(max_length=2000)]


class _WholeFile(FileResponse):
    """A bundle is sent whole, never a byte range: each request is one counted, audited copy, so a Range request
    (a download manager resuming) gets the full file rather than a part that would use up a download."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]
        await super().__call__({**scope, "headers": headers}, receive, send)


def _event(r: ExportRequest, action: str, reason: str | None = None, **kw: Any) -> audit.Event:
    return audit.Event(
        action,
        kw.pop("outcome", "ok"),
        window_start_us=r.window_start_us,
        window_end_us=r.window_end_us,
        object_id=f"export:{r.id}",
        purpose=r.purpose,
        case_ref=r.case_ref,
        destination=kw.pop("destination", r.destination),
        reason=reason,
        **kw,
    )


@router.post("/exports", status_code=201)
def create_export(body: ExportBody, ctx: Annotated[Ctx, Depends(requires("export.request"))]) -> dict[str, Any]:
    """File an export request (officers). It needs a co-signature by a second officer of your unit, then the
    approval of an approver of each camera's owning unit (unless a grant covers it; see docs/exports)."""
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
    )
    ctx.hint(window_start_us=spec.start_us, window_end_us=spec.end_us)
    now = ctx.now_us
    with ctx.db.session() as s:
        r = exports.create(s, ctx.me, spec, ctx.settings.export_max_window_hours, now)
        ctx.record(
            s,
            _event(
                r,
                "export.request",
                f"cameras={r.cameras}; legal basis: {r.legal_basis}; recipient: {r.recipient}; route={r.route}",
            ),
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
    ctx.hint(object_id=f"export:{request_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        r = exports.get_visible(s, ctx.me, request_id)
        exports.cosign(s, ctx.me, r, now, ctx.settings.export_approval_valid_days)
        ctx.record(s, _event(r, "export.cosign", f"state={r.state}"))
        return exports.view(s, r, now)


def _decide(request_id: int, ctx: Ctx, approve: bool, reason: str) -> dict[str, Any]:
    ctx.hint(object_id=f"export:{request_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        r = exports.get_visible(s, ctx.me, request_id)
        d = exports.decide(s, ctx.me, r, approve, reason, now, ctx.settings.export_approval_valid_days)
        action = "export.approve" if approve else "export.reject"
        ctx.record(s, _event(r, action, f"unit {d.unit}: {d.reason}; state={r.state}"))
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
        r = exports.get_visible(s, ctx.me, request_id)
        exports.withdraw(s, ctx.me, r, now)
        ctx.record(s, _event(r, "export.withdraw"))
        return exports.view(s, r, now)


def _party(ctx: Ctx, r: ExportRequest, what: str) -> None:
    if ctx.me.user_id not in (r.requester_id, r.cosigner_id):
        raise NvrError(
            Kind.PERMISSION_DENIED, "export_not_party", f"only the requester and the co-signer may {what} this export"
        )


@router.post("/exports/{request_id}/job", status_code=202)
def start_job(request_id: int, ctx: Annotated[Ctx, Depends(requires("export.job.start"))]) -> dict[str, Any]:
    """Start making the bundle (requester or co-signer, once approved). Poll ``GET /exports/{id}`` for progress."""
    ctx.hint(object_id=f"export:{request_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        r = exports.get_visible(s, ctx.me, request_id)
        _party(ctx, r, "start")
        state = exports.effective_state(r, now, exports.has_bundle(s, r.id))
        if state == "expired":
            raise NvrError(
                Kind.FAILED_PRECONDITION, "export_request_expired", f"the approval of request {r.id} has expired"
            )
        if state != "approved":
            raise NvrError(Kind.FAILED_PRECONDITION, "export_state_invalid", f"export request {r.id} is {state}")
        if exports.active_job(s, r.id) is not None:
            raise NvrError(Kind.CONFLICT, "export_job_exists", f"request {r.id} already has a bundle or one is running")
        job = ExportJob(
            request_id=r.id,
            state="queued",
            started_by=ctx.me.user_id,
            created_us=now,
            cancel_requested=False,
            bytes_total=0,
            bytes_done=0,
            downloads=0,
        )
        s.add(job)
        s.flush()
        ctx.record(s, _event(r, "export.job.start", f"job {job.id}; cameras={r.cameras}"))
        view = exports.job_view(job)
    runner = getattr(ctx.request.app.state, "export_runner", None)
    if runner is not None:
        runner.wake()
    assert view is not None
    return view


@router.post("/exports/{request_id}/job/cancel")
def cancel_job(request_id: int, ctx: Annotated[Ctx, Depends(requires("export.job.cancel"))]) -> dict[str, Any]:
    """Ask the running job to stop; it removes what it wrote and ends ``cancelled`` within about a second."""
    ctx.hint(object_id=f"export:{request_id}")
    with ctx.db.session() as s:
        r = exports.get_visible(s, ctx.me, request_id)
        _party(ctx, r, "cancel")
        job = exports.latest_job(s, r.id)
        if job is None or job.state not in ("queued", "running"):
            raise NvrError(Kind.FAILED_PRECONDITION, "export_job_not_running", "no export job is running")
        if job.state == "queued":
            job.state, job.finished_us = "cancelled", ctx.now_us
        job.cancel_requested = True
        ctx.record(s, _event(r, "export.job.cancel", f"job {job.id}"))
        view = exports.job_view(job)
    assert view is not None
    return view


@router.get("/exports/{request_id}/bundle")
def download_bundle(
    request_id: int,
    ctx: Annotated[Ctx, Depends(requires("export.download"))],
    destination: Annotated[str, Query(min_length=1, max_length=2000, description="where this copy goes")],
) -> _WholeFile:
    """Download the bundle (requester or co-signer only), declaring where this copy goes. Each download is
    counted (at most ``export_max_downloads``) and audited per camera with its destination."""
    ctx.hint(object_id=f"export:{request_id}", destination=destination)
    now = ctx.now_us
    with ctx.db.session() as s:
        r = exports.get_visible(s, ctx.me, request_id)
        ctx.hint(case_ref=r.case_ref, purpose=r.purpose)
        _party(ctx, r, "download")
        job = s.scalar(
            select(ExportJob)
            .where(ExportJob.request_id == r.id, ExportJob.state.in_(("done", "deleted")))
            .order_by(ExportJob.id.desc())
            .limit(1)
        )
        if job is None:
            raise NvrError(Kind.FAILED_PRECONDITION, "bundle_not_ready", "no bundle has been made for this request")
        if job.state == "deleted" or (job.expires_us is not None and now >= job.expires_us):
            raise NvrError(Kind.GONE, "bundle_expired", "the bundle's lifetime has ended and it is deleted")
        if job.downloads >= ctx.settings.export_max_downloads:
            raise NvrError(
                Kind.RESOURCE_EXHAUSTED,
                "download_limit_reached",
                f"the bundle has been downloaded {job.downloads} time(s), the most allowed",
            )
        path = bundle_path(ctx.services, job)
        if path is None or not path.is_file():
            raise NvrError(Kind.DATA_LOSS, "bundle_missing", "the bundle file is missing on the server")
        job.downloads += 1
        for camera_id in exports.cameras_of(r):
            ctx.record(
                s,
                _event(
                    r,
                    "export.download",
                    f"job {job.id}; download {job.downloads} of {ctx.settings.export_max_downloads}; "
                    f"bundle sha256 {job.bundle_sha256}",
                    camera_id=camera_id,
                    destination=destination,
                    bytes=job.bundle_bytes,
                ),
            )
        name = f"export-{r.id}-{r.case_ref}.zip"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return _WholeFile(
        path,
        media_type="application/zip",
        filename=safe,
        headers={"X-Bundle-SHA256": job.bundle_sha256 or "", "Accept-Ranges": "none"},
    )
