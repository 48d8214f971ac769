"""Grants: issued by approvers, suspended or revoked by approvers and admins, read by their holder."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from api import audit, grants
from api.context import Ctx, requires
from api.routes.schemas import AccessRequestBody, GrantBody, ReasonBody
from nvr.clock import parse_iso
from nvr.errors import Kind, NvrError

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


@router.post("/grants", status_code=201)
def create_grant(body: GrantBody, ctx: Annotated[Ctx, Depends(requires("grant.create"))]) -> dict[str, Any]:
    ctx.hint(object_id=f"user:{body.user_id}", purpose=body.purpose, case_ref=body.case_ref)
    spec = spec_from(body, body.user_id, _opt_time(body.valid_from))
    now = ctx.now_us
    with ctx.db.session() as s:
        g = grants.create(s, ctx.me, spec, now)
        view = grants.view(s, g, now)
        ctx.record(
            s,
            audit.Event(
                "grant.create",
                "ok",
                object_id=f"grant:{g.id}",
                purpose=g.purpose,
                case_ref=g.case_ref,
                window_start_us=g.window_start_us,
                window_end_us=g.window_end_us,
                reason=f"user:{g.user_id} cameras={','.join(view['cameras'])} actions={g.actions}",
            ),
        )
        return view


@router.get("/grants")
def list_grants(
    ctx: Annotated[Ctx, Depends(requires("grant.list"))],
    user_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    state: Annotated[str | None, Query(max_length=20)] = None,
) -> dict[str, Any]:
    """Your own grants; approvers and admins see everyone's."""
    now = ctx.now_us
    with ctx.db.session() as s:
        return {"grants": [grants.view(s, g, now) for g in grants.list_grants(s, ctx.me, user_id, state)]}


def _grant_id(grant_id: int) -> int:
    if not 0 < grant_id < 2**62:
        raise NvrError(Kind.NOT_FOUND, "grant_not_found", f"no grant {grant_id}")
    return grant_id


@router.get("/grants/{grant_id}")
def get_grant(grant_id: int, ctx: Annotated[Ctx, Depends(requires("grant.read"))]) -> dict[str, Any]:
    with ctx.db.session() as s:
        return grants.view(s, grants.get_visible(s, ctx.me, _grant_id(grant_id)), ctx.now_us)


def _change(ctx: Ctx, grant_id: int, to_state: str, action: str, body: ReasonBody | None) -> dict[str, Any]:
    ctx.hint(object_id=f"grant:{grant_id}")
    reason = body.reason if body is not None else None
    now = ctx.now_us
    with ctx.db.session() as s:
        g = grants.get_visible(s, ctx.me, _grant_id(grant_id))
        grants.change_state(s, ctx.me, g, to_state, reason, now)
        ctx.record(s, audit.Event(action, "ok", object_id=f"grant:{g.id}", reason=reason))
        return grants.view(s, g, now)


@router.post("/grants/{grant_id}/suspend")
def suspend_grant(
    grant_id: int, ctx: Annotated[Ctx, Depends(requires("grant.suspend"))], body: ReasonBody | None = None
) -> dict[str, Any]:
    """Suspend: access stops at the next request, and running streams end within a second or two."""
    return _change(ctx, grant_id, "suspended", "grant.suspend", body)


@router.post("/grants/{grant_id}/resume")
def resume_grant(
    grant_id: int, ctx: Annotated[Ctx, Depends(requires("grant.resume"))], body: ReasonBody | None = None
) -> dict[str, Any]:
    return _change(ctx, grant_id, "active", "grant.resume", body)


@router.post("/grants/{grant_id}/revoke")
def revoke_grant(
    grant_id: int, ctx: Annotated[Ctx, Depends(requires("grant.revoke"))], body: ReasonBody | None = None
) -> dict[str, Any]:
    """Revoke for good: running streams end too."""
    return _change(ctx, grant_id, "revoked", "grant.revoke", body)
