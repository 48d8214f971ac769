"""Users and two-admin user changes (admins only), and the typed answers about people that api.routes.auth shares.

The rules are api.users'; these routes parse and shape. A use case that takes effect answers 200/201 with the user;
one that waits for a second admin answers **202** with the pending change (docs/users.md).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api import users
from api.context import Ctx, requires
from api.routes.schemas import ReasonBody, UserBody, UserPatch

router = APIRouter(tags=["users"])


# --- answers ----------------------------------------------------------------------------------------------------
class UserOut(BaseModel):
    id: int
    username: str
    full_name: str
    staff_number: str
    unit: str
    roles: list[str]
    state: str
    """``active`` or ``disabled``."""
    auth_source: str
    """``local`` (password kept here) or ``oidc`` (the identity provider's account; no local password)."""
    created: str | None
    updated: str | None


class UserList(BaseModel):
    users: list[UserOut]


class MeOut(UserOut):
    capabilities: list[str]


class TokenOut(BaseModel):
    id: int
    kind: str
    """``session`` or ``personal``."""
    name: str | None
    created: str | None
    expires: str | None
    revoked: str | None


class TokenCreated(TokenOut):
    token: str
    """The secret, shown this once."""


class TokenList(BaseModel):
    tokens: list[TokenOut]


class LoginOut(BaseModel):
    token: str
    token_type: str
    expires: str | None
    user: UserOut


class UserChangeOut(BaseModel):
    """A change to a user that waits for (or had) a second admin's decision."""

    id: int
    kind: str
    """``create``, ``roles`` (adds ``roles``), ``enable`` or ``password``."""
    state: str
    """``pending``, ``expired`` (pending past its lifetime), ``confirmed``, ``rejected`` or ``cancelled``."""
    summary: str
    user_id: int | None
    """The user it is about (for ``create``: set once confirmed)."""
    username: str
    roles: list[str] | None
    """``create``: the new user's roles; ``roles``: the roles it adds."""
    requested_by: int | None
    """The requesting admin; None when filed on the command line (``requested_by_name`` says who)."""
    requested_by_name: str
    requested: str | None
    expires: str | None
    decided_by: int | None
    decided: str | None
    note: str | None
    user: UserOut | None
    """The user as it is now (None for a user that exists only in this change)."""


class UserChangeList(BaseModel):
    changes: list[UserChangeOut]


PENDING: dict[int | str, dict[str, Any]] = {
    202: {"model": UserChangeOut, "description": "Filed: waits for a second admin's confirmation."}
}


def _pending(s: Any, outcome: users.Outcome, now_us: int) -> JSONResponse | None:
    if outcome.change is None:
        return None
    return JSONResponse(users.change_view(s, outcome.change, now_us), status_code=202)


# --- users ------------------------------------------------------------------------------------------------------
@router.get("/users", response_model=UserList)
def list_users(ctx: Annotated[Ctx, Depends(requires("user.list", "users.manage"))]) -> dict[str, Any]:
    with ctx.db.session() as s:
        return {"users": [users.user_view(u) for u in users.list_users(s)]}


@router.post("/users", status_code=201, response_model=UserOut, responses=PENDING)
def create_user(body: UserBody, ctx: Annotated[Ctx, Depends(requires("user.create", "users.manage"))]) -> Any:
    """Create a local user. With a role that reaches footage, grants, the audit trail or people (admin, approver,
    officer, auditor) it answers 202 with a pending change, and the user exists once a second admin confirms."""
    ctx.hint(object_id=f"username:{body.username}")
    now = ctx.now_us
    with ctx.db.session() as s:
        done = users.create_user(
            s,
            ctx.me,
            ctx.meta,
            now,
            username=body.username,
            full_name=body.full_name,
            staff_number=body.staff_number,
            unit=body.unit,
            roles=body.roles,
            password=body.password,
        )
        if (answer := _pending(s, done, now)) is not None:
            return answer
        assert done.user is not None
        return users.user_view(done.user)


@router.get("/users/{user_id}", response_model=UserOut)
def get_user(user_id: int, ctx: Annotated[Ctx, Depends(requires("user.read", "users.manage"))]) -> dict[str, Any]:
    with ctx.db.session() as s:
        return users.user_view(users.get_user(s, user_id))


@router.patch("/users/{user_id}", response_model=UserOut, responses=PENDING)
def update_user(
    user_id: int, body: UserPatch, ctx: Annotated[Ctx, Depends(requires("user.update", "users.manage"))]
) -> Any:
    """Change a user's name, unit, roles, state or password. Name, unit, removed roles and ``disabled`` take effect
    at once (disabling ends the user's tokens and streams at their next request); added confirmed roles,
    ``active`` (re-enabling) and a password wait for a second admin: 202 with the pending change, after the parts
    that take effect at once were made. At most one part of a request may wait (``user_change_one_at_a_time``)."""
    ctx.hint(object_id=f"user:{user_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        done = users.patch_user(
            s,
            ctx.me,
            ctx.meta,
            now,
            user_id,
            full_name=body.full_name,
            unit=body.unit,
            roles=body.roles,
            state=body.state,
            password=body.password,
        )
        if (answer := _pending(s, done, now)) is not None:
            return answer
        assert done.user is not None
        return users.user_view(done.user)


@router.post("/users/{user_id}/disable", response_model=UserOut)
def disable_user(
    user_id: int,
    ctx: Annotated[Ctx, Depends(requires("user.disable", "users.manage"))],
    body: ReasonBody | None = None,
) -> dict[str, Any]:
    """At once: every token of the user ends; never the last active admin (409 ``last_admin``)."""
    ctx.hint(object_id=f"user:{user_id}")
    with ctx.db.session() as s:
        u = users.disable_user(s, ctx.me, ctx.meta, ctx.now_us, user_id, body.reason if body else None)
        return users.user_view(u)


@router.post("/users/{user_id}/enable", status_code=202, response_model=UserChangeOut)
def enable_user(
    user_id: int,
    ctx: Annotated[Ctx, Depends(requires("user.enable", "users.manage"))],
    body: ReasonBody | None = None,
) -> dict[str, Any]:
    """File re-enabling a disabled user; it takes effect when a second admin confirms, and no token from before
    the user was disabled works again."""
    ctx.hint(object_id=f"user:{user_id}")
    with ctx.db.session() as s:
        done = users.enable_user(s, ctx.me, ctx.meta, ctx.now_us, user_id, body.reason if body else None)
        assert done.change is not None  # the API never re-enables directly
        return users.change_view(s, done.change, ctx.now_us)


# --- changes waiting for a second admin --------------------------------------------------------------------------
@router.get("/user-changes", response_model=UserChangeList)
def list_changes(
    ctx: Annotated[Ctx, Depends(requires("user.change.list", "users.manage"))],
    state: Annotated[str | None, Query(max_length=20)] = None,
) -> dict[str, Any]:
    """Newest first (at most 1000); ``state``: pending, expired, confirmed, rejected, cancelled."""
    now = ctx.now_us
    with ctx.db.session() as s:
        return {"changes": [users.change_view(s, ch, now) for ch in users.list_changes(s, ctx.me, now, state)]}


@router.get("/user-changes/{change_id}", response_model=UserChangeOut)
def get_change(
    change_id: int, ctx: Annotated[Ctx, Depends(requires("user.change.read", "users.manage"))]
) -> dict[str, Any]:
    with ctx.db.session() as s:
        return users.change_view(s, users.get_change(s, change_id), ctx.now_us)


@router.post("/user-changes/{change_id}/confirm", response_model=UserChangeOut)
def confirm_change(
    change_id: int, ctx: Annotated[Ctx, Depends(requires("user.change.confirm", "users.manage"))]
) -> dict[str, Any]:
    """A second admin (neither the requester nor the user it is about) makes the change take effect."""
    ctx.hint(object_id=f"user_change:{change_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        return users.change_view(s, users.confirm_change(s, ctx.me, ctx.meta, now, change_id), now)


@router.post("/user-changes/{change_id}/reject", response_model=UserChangeOut)
def reject_change(
    change_id: int,
    ctx: Annotated[Ctx, Depends(requires("user.change.reject", "users.manage"))],
    body: ReasonBody | None = None,
) -> dict[str, Any]:
    ctx.hint(object_id=f"user_change:{change_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        ch = users.reject_change(s, ctx.me, ctx.meta, now, change_id, body.reason if body else None)
        return users.change_view(s, ch, now)


@router.post("/user-changes/{change_id}/cancel", response_model=UserChangeOut)
def cancel_change(
    change_id: int,
    ctx: Annotated[Ctx, Depends(requires("user.change.cancel", "users.manage"))],
    body: ReasonBody | None = None,
) -> dict[str, Any]:
    """The admin who filed the change withdraws it."""
    ctx.hint(object_id=f"user_change:{change_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        ch = users.cancel_change(s, ctx.me, ctx.meta, now, change_id, body.reason if body else None)
        return users.change_view(s, ch, now)
