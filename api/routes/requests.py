"""Access requests: officers ask for footage for a case, approvers approve (issuing a grant) or reject."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from api import audit, grants, requests
from api.context import Ctx, requires
from api.routes.grants import spec_from
from api.routes.schemas import AccessRequestBody, ReasonBody

router = APIRouter(tags=["access requests"])


@router.post("/access-requests", status_code=201)
def create_request(body: AccessRequestBody, ctx: Annotated[Ctx, Depends(requires("request.create"))]) -> dict[str, Any]:
    """Ask for access (officers). Nothing is granted until an approver entitled to every camera approves."""
    ctx.hint(purpose=body.purpose, case_ref=body.case_ref)
    now = ctx.now_us
    with ctx.db.session() as s:
        r = requests.create(s, ctx.me, spec_from(body, ctx.me.user_id, None), now)
        ctx.record(
            s,
            audit.Event(
                "request.create",
                "ok",
                object_id=f"request:{r.id}",
                purpose=r.purpose,
                case_ref=r.case_ref,
                reason=f"cameras={r.cameras} actions={r.actions}",
            ),
        )
        return requests.view(r)


@router.get("/access-requests")
def list_requests(
    ctx: Annotated[Ctx, Depends(requires("request.list"))],
    state: Annotated[str | None, Query(max_length=20)] = None,
) -> dict[str, Any]:
    """Your own requests; approvers and admins see everyone's (``state=pending`` for the queue)."""
    with ctx.db.session() as s:
        return {"requests": [requests.view(r) for r in requests.list_requests(s, ctx.me, state)]}


@router.get("/access-requests/{request_id}")
def get_request(request_id: int, ctx: Annotated[Ctx, Depends(requires("request.read"))]) -> dict[str, Any]:
    with ctx.db.session() as s:
        return requests.view(requests.get_visible(s, ctx.me, request_id))


@router.post("/access-requests/{request_id}/approve")
def approve_request(
    request_id: int, ctx: Annotated[Ctx, Depends(requires("request.approve"))], body: ReasonBody | None = None
) -> dict[str, Any]:
    """Approve: issues the grant to the requester under the same rules as ``POST /grants``."""
    ctx.hint(object_id=f"request:{request_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        r = requests.get_visible(s, ctx.me, request_id)
        g = requests.approve(s, ctx.me, r, body.reason if body else None, now)
        ctx.record(
            s,
            audit.Event(
                "request.approve", "ok", object_id=f"request:{r.id}", purpose=r.purpose, case_ref=r.case_ref,
                reason=f"grant:{g.id}",
            ),
        )  # fmt: skip
        return {"request": requests.view(r), "grant": grants.view(s, g, now)}


@router.post("/access-requests/{request_id}/reject")
def reject_request(
    request_id: int, ctx: Annotated[Ctx, Depends(requires("request.reject"))], body: ReasonBody | None = None
) -> dict[str, Any]:
    ctx.hint(object_id=f"request:{request_id}")
    with ctx.db.session() as s:
        r = requests.get_visible(s, ctx.me, request_id)
        requests.reject(s, ctx.me, r, body.reason if body else None, ctx.now_us)
        ctx.record(s, audit.Event("request.reject", "ok", object_id=f"request:{r.id}", reason=r.decision_reason))
        return requests.view(r)


@router.post("/access-requests/{request_id}/withdraw")
def withdraw_request(request_id: int, ctx: Annotated[Ctx, Depends(requires("request.withdraw"))]) -> dict[str, Any]:
    ctx.hint(object_id=f"request:{request_id}")
    with ctx.db.session() as s:
        r = requests.get_visible(s, ctx.me, request_id)
        requests.withdraw(s, ctx.me, r, ctx.now_us)
        ctx.record(s, audit.Event("request.withdraw", "ok", object_id=f"request:{r.id}"))
        return requests.view(r)
