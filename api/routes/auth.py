"""Login, logout, who am I, personal API tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from sqlalchemy import select

from api import audit, people
from api.context import Ctx, anonymous, requires
from api.routes.schemas import LoginBody, PasswordBody, TokenBody
from nvr.clock import iso
from nvr.errors import Kind, NvrError
from nvr.models import Token

router = APIRouter(tags=["auth"])


def user_view(u: Any) -> dict[str, Any]:
    return {
        "id": u.id,
        "username": u.username,
        "full_name": u.full_name,
        "staff_number": u.staff_number,
        "unit": u.unit,
        "roles": u.roles.split(","),
        "state": u.state,
        "created": iso(u.created_us),
        "updated": iso(u.updated_us),
    }


def token_view(t: Token) -> dict[str, Any]:
    return {
        "id": t.id,
        "kind": t.kind,
        "name": t.name,
        "created": iso(t.created_us),
        "expires": iso(t.expires_us),
        "revoked": iso(t.revoked_us),
    }


@router.post("/auth/login", status_code=201)
def login(body: LoginBody, ctx: Annotated[Ctx, Depends(anonymous("auth.login"))]) -> dict[str, Any]:
    """Exchange a user name and password for a session token (``Authorization: Bearer <token>``)."""
    ctx.hint(object_id=f"username:{body.username[:64]}")
    now = ctx.now_us
    with ctx.db.session() as s:
        u, t, secret = people.login(
            s, body.username, body.password, now_us=now, session_us=int(ctx.settings.session_hours * 3600e6)
        )
        audit.record(
            s, now, people.user_actor(u), ctx.meta, audit.Event("auth.login", "allowed", object_id=f"token:{t.id}")
        )
    return {"token": secret, "token_type": "bearer", "expires": iso(t.expires_us), "user": user_view(u)}


@router.post("/auth/logout", status_code=204)
def logout(ctx: Annotated[Ctx, Depends(requires("auth.logout"))]) -> Response:
    """Revoke the token this request carries."""
    with ctx.db.session() as s:
        t = s.get(Token, ctx.me.token_id)
        assert t is not None
        people.revoke_token(s, t, ctx.now_us)
        ctx.record(s, audit.Event("auth.logout", "ok", object_id=f"token:{t.id}"))
    return Response(status_code=204)


@router.get("/me")
def me(ctx: Annotated[Ctx, Depends(requires("auth.me"))]) -> dict[str, Any]:
    with ctx.db.session() as s:
        u = people.get_user(s, ctx.me.user_id)
        return {**user_view(u), "capabilities": sorted(ctx.me.caps)}


@router.post("/me/password", status_code=204)
def change_password(body: PasswordBody, ctx: Annotated[Ctx, Depends(requires("user.password"))]) -> Response:
    with ctx.db.session() as s:
        u = people.get_user(s, ctx.me.user_id)
        if not people.password_matches(u, body.current_password):
            raise NvrError(Kind.PERMISSION_DENIED, "password_wrong", "the current password is wrong")
        people.set_password(s, u, body.new_password, ctx.now_us)
        ctx.record(s, audit.Event("user.password", "ok", object_id=f"user:{u.id}"))
    return Response(status_code=204)


@router.get("/tokens")
def list_tokens(ctx: Annotated[Ctx, Depends(requires("token.list"))]) -> dict[str, Any]:
    with ctx.db.session() as s:
        return {"tokens": [token_view(t) for t in people.list_tokens(s, ctx.me.user_id)]}


@router.post("/tokens", status_code=201)
def create_token(body: TokenBody, ctx: Annotated[Ctx, Depends(requires("token.create"))]) -> dict[str, Any]:
    """A personal API token for scripts. The secret is shown once, here."""
    days = min(body.expires_in_days, ctx.settings.personal_token_max_days)
    if body.expires_in_days > ctx.settings.personal_token_max_days:
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "token_lifetime_too_long",
            f"personal tokens live at most {ctx.settings.personal_token_max_days} days",
        )
    now = ctx.now_us
    with ctx.db.session() as s:
        u = people.get_user(s, ctx.me.user_id)
        t, secret = people.issue_token(
            s, u, "personal", body.name, now_us=now, expires_us=now + days * people.US_PER_DAY
        )
        ctx.record(s, audit.Event("token.create", "ok", object_id=f"token:{t.id}"))
    return {**token_view(t), "token": secret}


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: int, ctx: Annotated[Ctx, Depends(requires("token.revoke"))]) -> Response:
    """Revoke one of your tokens (an admin may revoke anyone's)."""
    ctx.hint(object_id=f"token:{token_id}")
    with ctx.db.session() as s:
        t = s.scalar(select(Token).where(Token.id == token_id)) if 0 < token_id < 2**62 else None
        if t is None or (t.user_id != ctx.me.user_id and not ctx.me.can("users.manage")):
            raise NvrError(Kind.NOT_FOUND, "token_not_found", f"no token {token_id}")
        people.revoke_token(s, t, ctx.now_us)
        ctx.record(s, audit.Event("token.revoke", "ok", object_id=f"token:{t.id}"))
    return Response(status_code=204)
