"""The capacity forecast over HTTP: per volume and per camera, the days of footage the free space plus the footage
that will become deletable can hold, and warnings where a camera's policy cannot be met (:mod:`retention.capacity`).
For the people who keep retention and the system running: ``retention.read`` (admins, approvers, auditors) or
``system.monitor`` (admins, operators). Every read is audited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from api import audit
from api.context import Ctx, requires
from nvr.errors import Kind, NvrError
from retention import capacity

router = APIRouter(tags=["capacity"])
READ_CAPABILITIES = ("retention.read", "system.monitor")


@router.get("/capacity")
def get_capacity(ctx: Annotated[Ctx, Depends(requires("capacity.read"))]) -> dict[str, Any]:
    """Measured bytes per day (last 7 days), usable, held and deletable-now bytes per volume, days held per camera,
    and ``warnings`` (``policy_unmeetable``: camera, needs_days, holds_days, volume). See
    docs/retention/policies.md for the model."""
    if not any(ctx.me.can(c) for c in READ_CAPABILITIES):
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "your roles do not allow reading the capacity")
    with ctx.db.session() as s:
        found = capacity.forecast(s, ctx.settings, ctx.now_us, ctx.settings.effective_volumes)
        ctx.record(s, audit.Event("capacity.read", "allowed", reason=f"{len(found.warnings)} warning(s)"))
    return found.as_dict()
