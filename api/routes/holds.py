"""Evidence holds over HTTP: place (approver, or officer on cameras their grants name), list and read per camera,
two-person release (approvers). The rules live in :mod:`retention.holds`; this module knows roles and grants.

Who sees which hold: admins, approvers and auditors (``retention.read``) every hold; everyone else holds naming a
camera a grant of theirs covers now, and holds they placed themselves, always showing only the cameras they may see
now (the camera visibility of ``GET /cameras``: api.grants.visible_camera_ids). Any other hold answers 404
``hold_not_found``; filtering by a camera they may not see answers as ``GET /cameras/{id}`` does (404
``camera_not_found``, or 403 when their grant for it is not in force), so a listing never tells which holds name a
camera hidden from them. Every listing and read is audited.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import Field
from sqlalchemy.orm import Session

from api import audit, grants
from api.context import Ctx, requires
from api.routes.cameras import visible_camera
from api.routes.schemas import Body, ReasonBody
from nvr import registry
from nvr.clock import parse_iso
from nvr.errors import Kind, NvrError
from nvr.models import EvidenceHold
from retention import holds

router = APIRouter(tags=["holds"])
# Any of these lets a person look at holds (each role has one today; the check keeps it so for new roles).
READ_CAPABILITIES = ("holds.place", "holds.release", "retention.read", "footage")


class HoldBody(Body):
    """Lengths here only bound the request (the body size limit bounds the camera list); the service's own checks
    give each refusal its code."""

    case_ref: Annotated[str, Field(max_length=2000)] | None = None
    title: Annotated[str, Field(max_length=2000)] | None = None
    reason: Annotated[str, Field(max_length=4000)] | None = None
    cameras: list[Annotated[str, Field(max_length=64)]] | None = None
    start: Annotated[str, Field(max_length=64)] | None = None
    end: Annotated[str, Field(max_length=64, description="Leave out for 'until released'.")] | None = None


class ReleaseRequestBody(Body):
    reason: Annotated[str, Field(max_length=4000)] | None = None


def _person(ctx: Ctx) -> holds.Person:
    actor = ctx.actor
    return holds.Person(ctx.me.user_id, actor.name or "", ctx.me.can("holds.release"), actor, ctx.meta)


def _sees_all(ctx: Ctx) -> bool:
    return ctx.me.can("retention.read")


def _visible(ctx: Ctx, s: Session) -> set[str] | None:
    """Cameras whose holds this person sees; None: all of them."""
    return None if _sees_all(ctx) else grants.visible_camera_ids(s, ctx.me, ctx.now_us)


def _check_camera(ctx: Ctx, s: Session, camera_id: str) -> None:
    """A camera named in a holds query must be one this person may see, exactly as on ``GET /cameras/{id}``
    (those who see every hold: any camera that exists)."""
    if _sees_all(ctx):
        registry.get(s, registry.validate_id(camera_id))
    else:
        visible_camera(s, ctx.me, camera_id, ctx.now_us)


def _require_reader(ctx: Ctx) -> None:
    if not any(ctx.me.can(c) for c in READ_CAPABILITIES):
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "your roles do not allow reading holds")


def _visible_hold(ctx: Ctx, s: Session, hold_id: int) -> tuple[EvidenceHold, set[str] | None]:
    ctx.hint(object_id=f"hold:{hold_id}")
    h = holds.get(s, hold_id)
    visible = _visible(ctx, s)
    if not holds.may_see(s, h, visible, ctx.me.user_id):
        raise NvrError(Kind.NOT_FOUND, "hold_not_found", f"no hold {hold_id}")
    ctx.hint(case_ref=h.case_ref)
    return h, visible


def _opt_time(text: str | None) -> int | None:
    return None if text is None else parse_iso(text)


@router.post("/holds", status_code=201)
def place_hold(body: HoldBody, ctx: Annotated[Ctx, Depends(requires("hold.place", "holds.place"))]) -> dict[str, Any]:
    """Place an evidence hold. Approvers may name any camera; officers only cameras a grant of theirs names (others
    answer 404 ``camera_not_found``). The covered files become read-only; ``missing_files`` lists any that could
    not be (the hold still protects them)."""
    ctx.hint(case_ref=(body.case_ref or "")[:200] or None, purpose=body.reason)
    if body.cameras and len(body.cameras) == 1:
        ctx.hint(camera_id=body.cameras[0])
    spec = holds.HoldSpec(
        body.case_ref, body.title, body.reason, body.cameras, _opt_time(body.start), _opt_time(body.end)
    )
    ctx.hint(window_start_us=spec.start_us, window_end_us=spec.end_us)
    p, now = ctx.me, ctx.now_us
    sees_all = p.can("cameras.catalog") or p.can("cameras.protected")
    may_see = None if sees_all else (lambda s, cid: grants.check_camera_visible(s, p, cid, now))
    with ctx.db.session() as s:
        placed = holds.place(s, spec, _person(ctx), now, may_see)
        out = holds.view(s, placed.hold)
    out["missing_files"] = [asdict(f) for f in placed.problems]
    return out


@router.get("/holds")
def list_holds(
    ctx: Annotated[Ctx, Depends(requires("hold.list"))],
    camera: Annotated[str | None, Query(max_length=64)] = None,
    state: Annotated[str | None, Query(max_length=20)] = None,
    case_ref: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Holds you may see, oldest first, optionally for one camera, in one state or for one case."""
    _require_reader(ctx)
    if camera is not None:
        ctx.hint(camera_id=camera)
    with ctx.db.session() as s:
        if camera is not None:
            _check_camera(ctx, s, camera)
        visible = _visible(ctx, s)
        found = holds.list_holds(
            s, camera_id=camera, state=state, case_ref=case_ref, visible=visible, user_id=ctx.me.user_id
        )
        out = [holds.view(s, h, visible) for h in found]
        ctx.record(
            s, audit.Event("hold.list", "allowed", camera_id=camera, case_ref=case_ref, reason=f"{len(out)} hold(s)")
        )
    return {"holds": out}


@router.get("/holds/{hold_id}")
def get_hold(hold_id: int, ctx: Annotated[Ctx, Depends(requires("hold.read"))]) -> dict[str, Any]:
    _require_reader(ctx)
    with ctx.db.session() as s:
        h, visible = _visible_hold(ctx, s, hold_id)
        out = holds.view(s, h, visible)
        ctx.record(s, audit.Event("hold.read", "allowed", object_id=f"hold:{h.id}", case_ref=h.case_ref))
    return out


@router.get("/cameras/{camera_id}/holds")
def camera_holds(
    camera_id: str,
    ctx: Annotated[Ctx, Depends(requires("hold.list"))],
    state: Annotated[str | None, Query(max_length=20)] = None,
) -> dict[str, Any]:
    """The holds naming this camera. The camera must be visible to you as on ``GET /cameras/{id}`` (auditors, who
    see every hold, see every camera's holds)."""
    _require_reader(ctx)
    with ctx.db.session() as s:
        _check_camera(ctx, s, camera_id)
        visible = _visible(ctx, s)
        found = holds.list_holds(s, camera_id=camera_id, state=state)
        out = [holds.view(s, h, visible) for h in found]
        ctx.record(s, audit.Event("hold.list", "allowed", camera_id=camera_id, reason=f"{len(out)} hold(s)"))
    return {"camera_id": camera_id, "holds": out}


def _release_step(ctx: Ctx, hold_id: int, step: Any, text: str | None) -> EvidenceHold:
    with ctx.db.session() as s:
        _visible_hold(ctx, s, hold_id)
        return step(s, hold_id, _person(ctx), text, ctx.now_us)


def _answer(ctx: Ctx, hold_id: int) -> dict[str, Any]:
    with ctx.db.session() as s:
        h = holds.get(s, hold_id)
        return holds.view(s, h, _visible(ctx, s))


@router.post("/holds/{hold_id}/release-request")
def request_release(
    hold_id: int, body: ReleaseRequestBody, ctx: Annotated[Ctx, Depends(requires("hold.release.request"))]
) -> dict[str, Any]:
    """First of two steps (approvers): ask for release, with a reason. The hold keeps protecting until a different
    approver confirms."""
    ctx.hint(purpose=body.reason)
    _release_step(ctx, hold_id, holds.request_release, body.reason)
    return _answer(ctx, hold_id)


@router.post("/holds/{hold_id}/release-confirm")
def confirm_release(
    hold_id: int, ctx: Annotated[Ctx, Depends(requires("hold.release.confirm"))], body: ReasonBody | None = None
) -> dict[str, Any]:
    """Second step, by an approver other than the one who asked: the hold is released and its files that no other
    hold covers become writable by their owner again."""
    h = _release_step(ctx, hold_id, holds.confirm_release, body.reason if body else None)
    with ctx.db.session() as s:
        holds.restore_write(s, h)
    return _answer(ctx, hold_id)


@router.post("/holds/{hold_id}/release-cancel")
def cancel_release(
    hold_id: int, ctx: Annotated[Ctx, Depends(requires("hold.release.cancel"))], body: ReasonBody | None = None
) -> dict[str, Any]:
    """Withdraw a pending release request (any approver): the hold is active again."""
    _release_step(ctx, hold_id, holds.cancel_release, body.reason if body else None)
    return _answer(ctx, hold_id)
