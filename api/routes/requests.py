"""Access requests: officers ask for footage for a case, approvers approve (issuing a grant) or reject. The rules
and the audit events are :mod:`api.requests`'s; this module parses and shapes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api import requests
from api.context import Ctx, requires
from api.routes.grants import grant_view, spec_from
from api.routes.models import AccessRequestList, AccessRequestView, Approved
from api.routes.schemas import AccessRequestBody, ReasonBody
from nvr.models import AccessRequest

router = APIRouter(tags=["access requests"])


def request_view(r: AccessRequest) -> AccessRequestView:
    return AccessRequestView(**requests.view(r))


@router.post("/access-requests", status_code=201)
def create_request(
    body: AccessRequestBody, ctx: Annotated[Ctx, Depends(requires("request.create"))]
) -> AccessRequestView:
    """Ask for access (officers). Nothing is granted until an approver entitled to every camera approves."""
    ctx.hint(purpose=body.purpose, case_ref=body.case_ref)
    spec = spec_from(body, ctx.me.user_id, None)
    now = ctx.now_us
    with ctx.db.session() as s:
        return request_view(requests.create(s, ctx.me, ctx.meta, spec, now))


@router.get("/access-requests")
def list_requests(
    ctx: Annotated[Ctx, Depends(requires("request.list"))],
    state: Annotated[str | None, Query(max_length=20)] = None,
) -> AccessRequestList:
    """Your own requests; approvers and admins see everyone's (``state=pending`` for the queue)."""
    with ctx.db.session() as s:
        return AccessRequestList(requests=[request_view(r) for r in requests.list_requests(s, ctx.me, state)])


@router.get("/access-requests/{request_id}")
def get_request(request_id: int, ctx: Annotated[Ctx, Depends(requires("request.read"))]) -> AccessRequestView:
    with ctx.db.session() as s:
        return request_view(requests.get_visible(s, ctx.me, request_id))


def _reason(body: ReasonBody | None) -> str | None:
    return body.reason if body is not None else None


@router.post("/access-requests/{request_id}/approve")
def approve_request(
    request_id: int, ctx: Annotated[Ctx, Depends(requires("request.approve"))], body: ReasonBody | None = None
) -> Approved:
    """Approve: issues the grant to the requester under the same rules as ``POST /grants``."""
    ctx.hint(object_id=f"request:{request_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        r, g = requests.approve(s, ctx.me, ctx.meta, request_id, _reason(body), now)
        return Approved(request=request_view(r), grant=grant_view(s, g, now))


@router.post("/access-requests/{request_id}/reject")
def reject_request(
    request_id: int, ctx: Annotated[Ctx, Depends(requires("request.reject"))], body: ReasonBody | None = None
) -> AccessRequestView:
    ctx.hint(object_id=f"request:{request_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        return request_view(requests.reject(s, ctx.me, ctx.meta, request_id, _reason(body), now))


@router.post("/access-requests/{request_id}/withdraw")
def withdraw_request(request_id: int, ctx: Annotated[Ctx, Depends(requires("request.withdraw"))]) -> AccessRequestView:
    ctx.hint(object_id=f"request:{request_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        return request_view(requests.withdraw(s, ctx.me, ctx.meta, request_id, now))
