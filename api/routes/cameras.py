"""Cameras over HTTP. Base information is protected: stream URLs (never with credentials), exact location and
installation details go to admins only; everyone else sees only the cameras a grant of theirs covers, and any
other camera answers 404 as if it did not exist. Who sees what, every read's audit event and every change are the
service functions of :mod:`api.cameras` (the changes are the ones the CLI calls); this module parses and shapes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import Field

from api import cameras as service
from api.cameras import visible_camera  # noqa: F401  (re-exported: api.routes.holds checks cameras with it)
from api.context import Ctx, requires
from api.routes.models import CameraList, CameraRecord, CameraSaved, CameraSummary, WarningView
from api.routes.policies import Acknowledge, change
from api.routes.schemas import CameraBody, CameraPatch, StateBody
from nvr import registry
from nvr.clock import iso
from nvr.models import Camera
from retention import policies
from retention.capacity import CapacityWarning

router = APIRouter(tags=["cameras"])
PolicyName = Annotated[str, Field(max_length=200, description="A retention policy; the default one when left out.")]


class CameraCreateBody(CameraBody):
    policy: PolicyName | None = None
    acknowledge_capacity_warning: Acknowledge = False


class CameraUpdateBody(CameraPatch):
    policy: Annotated[str, Field(max_length=200)] | None = None
    acknowledge_capacity_warning: Acknowledge = False


NOT_FIELDS = {"id", "policy", "acknowledge_capacity_warning"}


def full_record(cam: Camera, policy: str | None) -> CameraRecord:
    """The whole record (admins), ``policy`` being its retention policy's name."""
    v = registry.public_view(cam)
    for k in ("state_changed_us", "created_us", "updated_us"):
        v[k.removesuffix("_us")] = iso(v.pop(k))
    return CameraRecord(**v, policy=policy)


def summary(cam: Camera) -> CameraSummary:
    return CameraSummary(
        id=cam.id, name=cam.name, managing_unit=cam.managing_unit, share_class=cam.share_class, state=cam.state
    )


def shown(seen: service.Seen) -> CameraRecord | CameraSummary:
    if seen.full:
        return full_record(seen.camera, seen.policy)
    return summary(seen.camera)


def saved(cam: Camera, policy: str, warnings: list[CapacityWarning]) -> CameraSaved:
    return CameraSaved(
        **full_record(cam, policy).model_dump(), capacity_warnings=[WarningView(**w.as_dict()) for w in warnings]
    )


@router.get("/cameras")
def list_cameras(ctx: Annotated[Ctx, Depends(requires("camera.list"))]) -> CameraList:
    with ctx.db.session() as s:
        return CameraList(cameras=[shown(c) for c in service.list_visible(s, ctx.me, ctx.meta, ctx.now_us)])


@router.get("/cameras/{camera_id}")
def get_camera(camera_id: str, ctx: Annotated[Ctx, Depends(requires("camera.read"))]) -> CameraRecord | CameraSummary:
    """The full record for admins, the basic record for everyone else who may see the camera."""
    with ctx.db.session() as s:
        return shown(service.read_camera(s, ctx.me, ctx.meta, camera_id, ctx.now_us))


@router.post("/cameras", status_code=201)
def add_camera(
    body: CameraCreateBody, ctx: Annotated[Ctx, Depends(requires("camera.create", "cameras.manage"))]
) -> CameraSaved:
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
        return saved(made.camera, made.placed.policy.name, made.placed.warnings)


@router.patch("/cameras/{camera_id}")
def update_camera(
    camera_id: str,
    body: CameraUpdateBody,
    ctx: Annotated[Ctx, Depends(requires("camera.update", "cameras.manage"))],
) -> CameraSaved:
    """Change the record; ``policy`` moves the camera to another retention policy exactly as
    ``PUT /cameras/{id}/policy`` does (its own audit event, the same capacity check)."""
    if body.policy is not None:
        ctx.hint(object_id=f"policy:{body.policy[:64]}")
    fields = registry.CameraFields(**body.model_dump(exclude=NOT_FIELDS))
    with ctx.db.session() as s:
        edited = service.edit_camera(
            s, change(ctx, body.acknowledge_capacity_warning), camera_id, fields, policy=body.policy
        )
        return saved(edited.camera, edited.policy.name, edited.warnings)


@router.post("/cameras/{camera_id}/state")
def camera_state(
    camera_id: str, body: StateBody, ctx: Annotated[Ctx, Depends(requires("camera.state", "cameras.manage"))]
) -> CameraRecord:
    """Activate, suspend or decommission a camera (the recorder follows within a few seconds)."""
    with ctx.db.session() as s:
        cam = service.change_state(s, change(ctx), camera_id, body.state, body.reason)
        return full_record(cam, policies.policy_of(s, cam.id).name)
