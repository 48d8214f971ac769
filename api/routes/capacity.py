"""The capacity forecast over HTTP: per volume and per camera, the days of footage the free space plus the footage
that will become deletable can hold, and warnings where a camera's policy cannot be met (:mod:`retention.capacity`).
For the people who keep retention and the system running: ``retention.read`` (admins, approvers, auditors) or
``system.monitor`` (admins, operators). Every read is audited.

Camera ids follow the camera listing's visibility (:func:`camera_scope`): admins and approvers see every camera,
everyone else only the cameras a grant of theirs covers now. The volumes' totals count every camera's footage; the
per-camera rows, the volumes' camera lists and the warnings name visible cameras only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from api import audit, grants
from api.context import Ctx, requires
from api.people import Principal
from nvr.errors import Kind, NvrError
from retention import capacity

router = APIRouter(tags=["capacity"])
READ_CAPABILITIES = ("retention.read", "system.monitor")


def camera_scope(s: Session, p: Principal, now_us: int) -> set[str] | None:
    """The camera ids this person may see named, as ``GET /cameras`` lists them; None: every camera. Admins
    (``cameras.protected``) and approvers (``cameras.catalog``, who issue grants) see all; others the cameras a grant
    of theirs covers now (api.grants.visible_camera_ids)."""
    if p.can("cameras.protected") or p.can("cameras.catalog"):
        return None
    return grants.visible_camera_ids(s, p, now_us)


def visible_view(view: dict[str, Any], scope: set[str] | None) -> dict[str, Any]:
    """The forecast as this person may see it: camera rows, volume camera lists and warnings of visible cameras."""
    if scope is None:
        return view
    return {
        **view,
        "volumes": [{**v, "cameras": [c for c in v["cameras"] if c in scope]} for v in view["volumes"]],
        "cameras": [c for c in view["cameras"] if c["camera"] in scope],
        "warnings": [w for w in view["warnings"] if w["camera"] in scope],
    }


@router.get("/capacity")
def get_capacity(ctx: Annotated[Ctx, Depends(requires("capacity.read"))]) -> dict[str, Any]:
    """Measured bytes per day (last 7 days), usable, held and deletable-now bytes per volume, days held per camera,
    and ``warnings`` (``policy_unmeetable``: camera, needs_days, holds_days, volume). See
    docs/retention/policies.md for the model. Admins and approvers see every camera; others only the cameras a
    grant of theirs covers (the volumes' totals still count all footage)."""
    if not any(ctx.me.can(c) for c in READ_CAPABILITIES):
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "your roles do not allow reading the capacity")
    with ctx.db.session() as s:
        found = capacity.forecast(s, ctx.settings, ctx.now_us, ctx.settings.effective_volumes)
        scope = camera_scope(s, ctx.me, ctx.now_us)
        view = visible_view(found.as_dict(), scope)
        shown = "all cameras" if scope is None else f"{len(view['cameras'])} visible camera(s)"
        ctx.record(s, audit.Event("capacity.read", "allowed", reason=f"{len(view['warnings'])} warning(s), {shown}"))
    return view
