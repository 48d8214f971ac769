"""Cameras over HTTP. Base information is protected: stream URLs (never with credentials), exact location and
installation details go to admins only; everyone else sees only the cameras a grant of theirs covers, and any
other camera answers 404 as if it did not exist. Every listing and read is audited here; every change is made and
audited by the service functions of :mod:`api.cameras` (the same ones the CLI calls)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import audit, grants
from api import cameras as service
from api.context import Ctx, requires
from api.people import Principal
from api.routes.policies import Acknowledge, change
from api.routes.schemas import CameraBody, CameraPatch, StateBody
from nvr import registry
from nvr.clock import iso
from nvr.errors import Kind, NvrError
from nvr.models import Camera, RetentionPolicy
from retention import policies

router = APIRouter(tags=["cameras"])
PolicyName = Annotated[str, Field(max_length=200, description="A retention policy; the default one when left out.")]


class CameraCreateBody(CameraBody):
    policy: PolicyName | None = None
    acknowledge_capacity_warning: Acknowledge = False


class CameraUpdateBody(CameraPatch):
    policy: Annotated[str, Field(max_length=200)] | None = None
    acknowledge_capacity_warning: Acknowledge = False


NOT_FIELDS = {"id", "policy", "acknowledge_capacity_warning"}


def policy_names(s: Session) -> dict[str, str]:
    return {cid: name for cid, name in s.execute(select(Camera.id, RetentionPolicy.name).join(RetentionPolicy))}


def camera_view(cam: Camera, protected: bool, policy: str | None = None) -> dict[str, Any]:
    """The record as this person may see it; ``policy`` (its retention policy) goes with the full record."""
    if protected:
        v = registry.public_view(cam)
        for k in ("state_changed_us", "created_us", "updated_us"):
            v[k.removesuffix("_us")] = iso(v.pop(k))
        v["policy"] = policy
        return v
    return {
        "id": cam.id,
        "name": cam.name,
        "managing_unit": cam.managing_unit,
        "share_class": cam.share_class,
        "state": cam.state,
    }


def visible_camera(s: Any, p: Principal, camera_id: str, now_us: int) -> Camera:
    """The camera if this person may see its record: admins and approvers (who issue grants) see every camera,
    others those a grant of theirs names (404 otherwise, 403 when their grant is not in force)."""
    registry.validate_id(camera_id)
    if not (p.can("cameras.protected") or p.can("cameras.catalog")):
        grants.check_camera_visible(s, p, camera_id, now_us)
    cam = s.get(Camera, camera_id)
    if cam is None:
        raise NvrError(Kind.NOT_FOUND, "camera_not_found", f"no camera {camera_id!r}")
    return cam


@router.get("/cameras")
def list_cameras(ctx: Annotated[Ctx, Depends(requires("camera.list"))]) -> dict[str, Any]:
    p, now = ctx.me, ctx.now_us
    with ctx.db.session() as s:
        if p.can("cameras.protected") or p.can("cameras.catalog"):
            cams = registry.list_cameras(s)
        else:
            ids = grants.visible_camera_ids(s, p, now)
            cams = [c for c in registry.list_cameras(s) if c.id in ids]
        names = policy_names(s) if p.can("cameras.protected") else {}
        out = [camera_view(c, p.can("cameras.protected"), names.get(c.id)) for c in cams]
        ctx.record(s, audit.Event("camera.list", "allowed", reason=f"{len(out)} camera(s)"))
        return {"cameras": out}


@router.get("/cameras/{camera_id}")
def get_camera(camera_id: str, ctx: Annotated[Ctx, Depends(requires("camera.read"))]) -> dict[str, Any]:
    with ctx.db.session() as s:
        cam = visible_camera(s, ctx.me, camera_id, ctx.now_us)
        view = camera_view(cam, ctx.me.can("cameras.protected"), policies.policy_of(s, cam.id).name)
        ctx.record(s, audit.Event("camera.read", "allowed", camera_id=cam.id))
        return view


@router.post("/cameras", status_code=201)
def add_camera(
    body: CameraCreateBody, ctx: Annotated[Ctx, Depends(requires("camera.create", "cameras.manage"))]
) -> dict[str, Any]:
    """Register a camera on a retention policy (the default one unless ``policy`` names another). When the
    capacity forecast says the volumes could then not keep some camera's footage as long as its policy requires
    (the new camera's rate estimated as the median of the measured ones), the answer is 409
    ``capacity_insufficient`` unless ``acknowledge_capacity_warning`` is true; ``capacity_warnings`` lists them."""
    ctx.hint(camera_id=body.id[:64])
    fields = registry.CameraFields(**body.model_dump(exclude=NOT_FIELDS))
    with ctx.db.session() as s:
        made = service.create_camera(
            s, change(ctx, body.acknowledge_capacity_warning), body.id, fields, policy=body.policy
        )
        return {
            **camera_view(made.camera, True, made.placed.policy.name),
            "capacity_warnings": [w.as_dict() for w in made.placed.warnings],
        }


@router.patch("/cameras/{camera_id}")
def update_camera(
    camera_id: str,
    body: CameraUpdateBody,
    ctx: Annotated[Ctx, Depends(requires("camera.update", "cameras.manage"))],
) -> dict[str, Any]:
    """Change the record; ``policy`` moves the camera to another retention policy exactly as
    ``PUT /cameras/{id}/policy`` does (its own audit event, the same capacity check)."""
    registry.validate_id(camera_id)
    values = body.model_dump(exclude=NOT_FIELDS)
    changed = sorted(k for k, v in values.items() if v is not None)
    warnings = []
    ch = change(ctx, body.acknowledge_capacity_warning)
    with ctx.db.session() as s:
        if changed or body.policy is None:
            service.update_camera(s, ch, camera_id, registry.CameraFields(**values))
        if body.policy is not None:
            ctx.hint(object_id=f"policy:{body.policy[:64]}")
            warnings = [w.as_dict() for w in policies.assign(s, ch, camera_id, body.policy).warnings]
        cam = registry.get(s, camera_id)
        return {
            **camera_view(cam, True, policies.policy_of(s, camera_id).name),
            "capacity_warnings": warnings,
        }


@router.post("/cameras/{camera_id}/state")
def camera_state(
    camera_id: str, body: StateBody, ctx: Annotated[Ctx, Depends(requires("camera.state", "cameras.manage"))]
) -> dict[str, Any]:
    """Activate, suspend or decommission a camera (the recorder follows within a few seconds)."""
    registry.validate_id(camera_id)
    if body.state not in registry.STATES:
        raise NvrError(Kind.INVALID_ARGUMENT, "camera_state_invalid", f"state must be one of {registry.STATES}")
    with ctx.db.session() as s:
        cam = service.change_state(s, change(ctx), camera_id, body.state, body.reason)
        return camera_view(cam, True, policies.policy_of(s, cam.id).name)
