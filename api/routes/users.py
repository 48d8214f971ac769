"""Users (admins only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy import select

from api import audit, people
from api.context import Ctx, requires
from api.roles import validate_roles
from api.routes.auth import user_view
from api.routes.schemas import UserBody, UserPatch
from nvr.errors import Kind, NvrError
from nvr.models import User

router = APIRouter(tags=["users"])


@router.get("/users")
def list_users(ctx: Annotated[Ctx, Depends(requires("user.list", "users.manage"))]) -> dict[str, Any]:
    with ctx.db.session() as s:
        users = list(s.scalars(select(User).order_by(User.id)))
        return {"users": [user_view(u) for u in users]}


@router.post("/users", status_code=201)
def create_user(
    body: UserBody, ctx: Annotated[Ctx, Depends(requires("user.create", "users.manage"))]
) -> dict[str, Any]:
    ctx.hint(object_id=f"username:{body.username}")
    with ctx.db.session() as s:
        u = people.create_user(
            s,
            username=body.username,
            full_name=body.full_name,
            staff_number=body.staff_number,
            unit=body.unit,
            roles=body.roles,
            password=body.password,
            now_us=ctx.now_us,
        )
        ctx.record(s, audit.Event("user.create", "ok", object_id=f"user:{u.id}", reason=f"roles={u.roles}"))
        return user_view(u)


def _user(s: Any, user_id: int) -> User:
    if not 0 < user_id < 2**62:
        raise NvrError(Kind.NOT_FOUND, "user_not_found", f"no user {user_id}")
    return people.get_user(s, user_id)


@router.get("/users/{user_id}")
def get_user(user_id: int, ctx: Annotated[Ctx, Depends(requires("user.read", "users.manage"))]) -> dict[str, Any]:
    with ctx.db.session() as s:
        return user_view(_user(s, user_id))


@router.patch("/users/{user_id}")
def update_user(
    user_id: int, body: UserPatch, ctx: Annotated[Ctx, Depends(requires("user.update", "users.manage"))]
) -> dict[str, Any]:
    """Change a user's name, unit, roles, state (``active``/``disabled``) or password. Disabling takes effect at the
    user's next request, streams included."""
    ctx.hint(object_id=f"user:{user_id}")
    now = ctx.now_us
    with ctx.db.session() as s:
        u = _user(s, user_id)
        changes = []
        if body.full_name is not None:
            u.full_name = people.require_text(body.full_name, "full_name_invalid", "full name")
            changes.append("full_name")
        if body.unit is not None:
            u.unit = people.require_text(body.unit, "unit_invalid", "unit")
            changes.append("unit")
        if body.roles is not None:
            u.roles = validate_roles(body.roles)
            changes.append(f"roles={u.roles}")
        if body.state is not None:
            people.set_state(s, u, body.state, now)
            changes.append(f"state={body.state}")
        if body.password is not None:
            people.set_password(s, u, body.password, now)
            changes.append("password")
        _keep_an_admin(s)
        u.updated_us = now
        ctx.record(s, audit.Event("user.update", "ok", object_id=f"user:{u.id}", reason=", ".join(changes) or None))
        return user_view(u)


def _keep_an_admin(s: Any) -> None:
    s.flush()
    admins = [u for u in s.scalars(select(User).where(User.state == "active")) if "admin" in u.roles.split(",")]
    if not admins:
        raise NvrError(
            Kind.FAILED_PRECONDITION, "last_admin", "this would leave no active admin; make another admin first"
        )
