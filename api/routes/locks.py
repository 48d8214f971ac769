"""Login throttle keys for admins: list them, unlock one (api.throttle)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api import throttle
from api.context import Ctx, requires
from api.routes.schemas import Body

router = APIRouter(tags=["auth"])


class LoginLockView(BaseModel):
    key: str = Field(description="`user:<name as given>` or `addr:<client address>` (IPv6: its /64).")
    kind: str = Field(description="`account` or `address`.")
    name: str
    failures: int = Field(description="Attempts since the last success, unlock or quiet period that did not succeed.")
    last_attempt: str | None
    locked: bool
    locked_until: str | None
    retry_after_seconds: int


class LoginLockList(BaseModel):
    locks: list[LoginLockView]


class UnlockBody(Body):
    key: Annotated[str, Field(min_length=1, max_length=200)]


@router.get("/auth/login-locks", response_model=LoginLockList)
def list_login_locks(
    ctx: Annotated[Ctx, Depends(requires("auth.login.locks", "users.manage"))],
    everything: Annotated[
        bool, Query(alias="all", description="Every key with a count, not only the locked ones.")
    ] = False,
) -> LoginLockList:
    """Locked login keys (``?all=true``: every account and address with failed logins counted)."""
    with ctx.db.session() as s:
        rows = throttle.list_locks(s, ctx.now_us, everything=everything)
    return LoginLockList(locks=[LoginLockView(**r) for r in rows])


@router.post("/auth/login-locks/unlock", response_model=LoginLockView)
def unlock_login(
    body: UnlockBody, ctx: Annotated[Ctx, Depends(requires("auth.login.unlock", "users.manage"))]
) -> LoginLockView:
    """Clear one key's failed logins and lock; answers what it held. Audited ``auth.login.unlock``."""
    ctx.hint(object_id=body.key)
    with ctx.db.session() as s:
        view = throttle.unlock(s, ctx.actor, ctx.meta, ctx.now_us, body.key)
    return LoginLockView(**view)
