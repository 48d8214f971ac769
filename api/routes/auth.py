"""Login, logout, who am I, personal API tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from sqlalchemy import select

from api import audit, people, throttle, users
from api.context import Ctx, anonymous, requires
from api.routes.schemas import LoginBody, PasswordBody, TokenBody
from api.routes.users import MeOut, TokenCreated, TokenList
from api.users import user_view
from nvr.clock import iso
from nvr.errors import Kind, NvrError
from nvr.models import Token

router = APIRouter(tags=["auth"])


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
    """Exchange a user name and password for a session token (``Authorization: Bearer <token>``). Throttled per
    account and per client address (api.throttle): 429 ``login_locked`` with ``Retry-After``."""
    ctx.hint(object_id=f"username:{body.username[:64]}")
    try:
        u, t, secret = throttle.login(
            ctx.db, ctx.settings, body.username, body.password, meta=ctx.meta, now_us=ctx.now_us
        )
    except throttle.LoginLocked:
        raise  # counted and summarised with the other anonymous refusals (api.denials)
    except NvrError:
        ctx.hint(audit_each=True)  # a refused password check: one denial event each (the throttle bounds them)
        raise
    return {"token": secret, "token_type": "bearer", "expires": iso(t.expires_us), "user": user_view(u)}


@router.get("/auth/methods")
def methods(ctx: Annotated[Ctx, Depends(anonymous("auth.methods"))]) -> dict[str, Any]:
    """How one may sign in here, for a sign-in page: ``password`` (local accounts, POST /auth/login) and ``oidc``
    (the unit's identity platform, GET /auth/oidc/login) when a provider is configured. No login, not audited: it
    says nothing about any account."""
    st = ctx.settings
    return {"password": True, "oidc": bool(st.oidc_issuer and st.oidc_client_id and st.oidc_redirect_uri)}


@router.post("/auth/logout", status_code=204)
def logout(ctx: Annotated[Ctx, Depends(requires("auth.logout"))]) -> Response:
    """Revoke the token this request carries."""
    with ctx.db.session() as s:
        t = s.get(Token, ctx.me.token_id)
        assert t is not None
        people.revoke_token(s, t, ctx.now_us)
        ctx.record(s, audit.Event("auth.logout", "ok", object_id=f"token:{t.id}"))
    return Response(status_code=204)


@router.get("/me", response_model=MeOut)
def me(ctx: Annotated[Ctx, Depends(requires("auth.me"))]) -> dict[str, Any]:
    with ctx.db.session() as s:
        u = people.get_user(s, ctx.me.user_id)
        return {**user_view(u), "capabilities": sorted(ctx.me.caps)}


@router.post("/me/password", status_code=204)
def change_password(body: PasswordBody, ctx: Annotated[Ctx, Depends(requires("user.password"))]) -> Response:
    """Change your own password, knowing the current one; refused for identity-provider accounts (409
    ``password_not_local``)."""
    with ctx.db.session() as s:
        users.change_own_password(s, ctx.me, ctx.meta, ctx.now_us, body.current_password, body.new_password)
    return Response(status_code=204)


@router.get("/tokens", response_model=TokenList)
def list_tokens(ctx: Annotated[Ctx, Depends(requires("token.list"))]) -> dict[str, Any]:
    with ctx.db.session() as s:
        return {"tokens": [token_view(t) for t in people.list_tokens(s, ctx.me.user_id)]}


@router.post("/tokens", status_code=201, response_model=TokenCreated)
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
