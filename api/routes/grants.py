"""Grants: issued by approvers, suspended or revoked by approvers and admins, read by their holder. The rules and
the audit events are :mod:`api.grants`'s; this module parses and shapes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from api import grants
from api.context import Ctx, requires
from api.routes.models import GrantList, GrantView
from api.routes.schemas import AccessRequestBody, GrantBody, ReasonBody
from nvr.clock import parse_iso
from nvr.models import Grant

router = APIRouter(tags=["grants"])


def _opt_time(text: str | None) -> int | None:
    return None if text is None else parse_iso(text)


def spec_from(body: AccessRequestBody, user_id: int, valid_from_us: int | None) -> grants.GrantSpec:
    return grants.GrantSpec(
        user_id=user_id,
        cameras=body.cameras,
        actions=body.actions,
        purpose=body.purpose,
        case_ref=body.case_ref,
        valid_until_us=parse_iso(body.valid_until),
        valid_from_us=valid_from_us,
        window_start_us=_opt_time(body.window.start),
        window_end_us=_opt_time(body.window.end),
        window_last_days=body.window.last_days,
        max_streams=body.max_streams,
    )


def grant_view(s: Session, g: Grant, now_us: int) -> GrantView:
    return GrantView(**grants.view(s, g, now_us))


@router.post("/grants", status_code=201)
def create_grant(body: GrantBody, ctx: Annotated[Ctx, Depends(requires("grant.create"))]) -> GrantView:
    ctx.hint(object_id=f"user:{body.user_id}", purpose=body.purpose, case_ref=body.case_ref)
    spec = spec_from(body, body.user_id, _opt_time(body.valid_from))
    now = ctx.now_us
    with ctx.db.session() as s:
        return grant_view(s, grants.issue(s, ctx.me, ctx.meta, spec, now), now)


@router.get("/grants")
def list_grants(
    ctx: Annotated[Ctx, Depends(requires("grant.list"))],
    user_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    state: Annotated[str | None, Query(max_length=20)] = None,
) -> GrantList:
    """Your own grants; approvers and admins see everyone's."""
    now = ctx.now_us
    with ctx.db.session() as s:
        return GrantList(grants=[grant_view(s, g, now) for g in grants.list_grants(s, ctx.me, user_id, state)])


@router.get("/grants/{grant_id}")
def get_grant(grant_id: int, ctx: Annotated[Ctx, Depends(requires("grant.read"))]) -> GrantView:
    now = ctx.now_us
    with ctx.db.session() as s:
        return grant_view(s, grants.get_visible(s, ctx.me, grant_id), now)


def _change(ctx: Ctx, grant_id: int, to_state: str, body: ReasonBody | None) -> GrantView:
    ctx.hint(object_id=f"grant:{grant_id}")
    reason = body.reason if body is not None else None
    now = ctx.now_us
    with ctx.db.session() as s:
        return grant_view(s, grants.set_state(s, ctx.me, ctx.meta, grant_id, to_state, reason, now), now)


@router.post("/grants/{grant_id}/suspend")
def suspend_grant(
    grant_id: int, ctx: Annotated[Ctx, Depends(requires("grant.suspend"))], body: ReasonBody | None = None
) -> GrantView:
    """Suspend: access stops at the next request, and running streams end within a second or two."""
    return _change(ctx, grant_id, "suspended", body)


@router.post("/grants/{grant_id}/resume")
def resume_grant(
    grant_id: int, ctx: Annotated[Ctx, Depends(requires("grant.resume"))], body: ReasonBody | None = None
) -> GrantView:
    return _change(ctx, grant_id, "active", body)


@router.post("/grants/{grant_id}/revoke")
def revoke_grant(
    grant_id: int, ctx: Annotated[Ctx, Depends(requires("grant.revoke"))], body: ReasonBody | None = None
) -> GrantView:
    """Revoke for good: running streams end too."""
    return _change(ctx, grant_id, "revoked", body)
