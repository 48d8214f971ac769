"""Retention policies over HTTP: admins (``retention.manage``) change them and assign cameras; admins, approvers
and auditors (``retention.read``) read them. The rules live in :mod:`retention.policies` (the CLI calls the same
functions); every change is one audit event written there, naming the changed record's digest, every read one
written there too (:func:`retention.policies.read_all`, :func:`retention.policies.read`), and every refusal one
through the error handler.

A change that makes the capacity forecast worse for any camera answers 409 ``capacity_insufficient`` naming the
cameras, unless the body says ``"acknowledge_capacity_warning": true``: then it is saved, the answer lists the
warnings under ``capacity_warnings`` and the audit event's reason names them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import Field
from sqlalchemy.orm import Session

from api.context import Ctx, requires
from api.routes.models import CameraPolicy, PolicyList, PolicySaved, PolicyView, WarningView
from api.routes.schemas import Body
from nvr.models import RetentionPolicy
from retention import policies
from retention.capacity import CapacityWarning

router = APIRouter(tags=["retention"])
# Lengths and numbers here only bound the request; the service's own checks give each refusal its code.
Name = Annotated[str, Field(max_length=200)]
Days = Annotated[int, Field(ge=-(2**31), le=2**31)]
Description = Annotated[str, Field(max_length=4000)]
Acknowledge = Annotated[
    bool, Field(description="Save even if the capacity forecast says a camera's policy can then not be met.")
]


class PolicyBody(Body):
    name: Name
    min_days: Days
    max_days: Days | None = None
    description: Description | None = None


class PolicyPatch(Body):
    min_days: Days | None = None
    max_days: Days | None = Field(default=None, description="null clears it; leave the field out to keep it.")
    description: Description | None = Field(default=None, description="An empty string clears it.")
    acknowledge_capacity_warning: Acknowledge = False


class AssignBody(Body):
    policy: Name
    acknowledge_capacity_warning: Acknowledge = False


def warnings_view(found: list[CapacityWarning]) -> list[WarningView]:
    return [WarningView(**w.as_dict()) for w in found]


def change(ctx: Ctx, acknowledge: bool = False) -> policies.Change:
    return policies.Change(ctx.settings, ctx.now_us, ctx.actor, ctx.meta, acknowledge)


def _view(ctx: Ctx, s: Session, p: RetentionPolicy) -> PolicyView:
    return PolicyView(**policies.view(s, p, ctx.settings.retention_floor_days))


def _saved(ctx: Ctx, s: Session, saved: policies.Saved) -> PolicySaved:
    return PolicySaved(
        **_view(ctx, s, saved.policy).model_dump(),
        extended_segments=saved.extended_segments,
        capacity_warnings=warnings_view(saved.warnings),
    )


@router.get("/retention/policies")
def list_policies(ctx: Annotated[Ctx, Depends(requires("retention.policy.list", "retention.read"))]) -> PolicyList:
    floor = ctx.settings.retention_floor_days
    with ctx.db.session() as s:
        return PolicyList(
            policies=[PolicyView(**v) for v in policies.read_all(s, ctx.actor, ctx.meta, ctx.now_us, floor)]
        )


@router.get("/retention/policies/{name}")
def get_policy(
    name: str, ctx: Annotated[Ctx, Depends(requires("retention.policy.read", "retention.read"))]
) -> PolicyView:
    ctx.hint(object_id=f"policy:{name[:64]}")
    floor = ctx.settings.retention_floor_days
    with ctx.db.session() as s:
        return PolicyView(**policies.read(s, ctx.actor, ctx.meta, ctx.now_us, floor, name))


@router.post("/retention/policies", status_code=201)
def create_policy(
    body: PolicyBody, ctx: Annotated[Ctx, Depends(requires("retention.policy.create", "retention.manage"))]
) -> PolicySaved:
    """A new policy (used by no camera until one is assigned). ``min_days`` may not be below the system floor."""
    ctx.hint(object_id=f"policy:{body.name[:64]}")
    with ctx.db.session() as s:
        saved = policies.create(s, change(ctx), body.name, body.min_days, body.max_days, body.description)
        return _saved(ctx, s, saved)


@router.patch("/retention/policies/{name}")
def update_policy(
    name: str,
    body: PolicyPatch,
    ctx: Annotated[Ctx, Depends(requires("retention.policy.update", "retention.manage"))],
) -> PolicySaved:
    """Change ``min_days``, ``max_days`` or the description. Raising ``min_days`` extends ``retain_until`` of the
    existing segments of every camera on the policy; lowering it affects only segments finished afterwards."""
    ctx.hint(object_id=f"policy:{name[:64]}")
    clears = "max_days" in body.model_fields_set
    with ctx.db.session() as s:
        saved = policies.update(
            s,
            change(ctx, body.acknowledge_capacity_warning),
            name,
            min_days=body.min_days,
            max_days=body.max_days if clears else policies.KEEP,
            description=body.description,
        )
        return _saved(ctx, s, saved)


@router.delete("/retention/policies/{name}", status_code=204)
def delete_policy(
    name: str, ctx: Annotated[Ctx, Depends(requires("retention.policy.delete", "retention.manage"))]
) -> Response:
    """Only a policy no camera uses and that is not the default (``policy_in_use`` otherwise)."""
    ctx.hint(object_id=f"policy:{name[:64]}")
    with ctx.db.session() as s:
        policies.delete(s, change(ctx), name)
    return Response(status_code=204)


@router.post("/retention/policies/{name}/default")
def set_default_policy(
    name: str, ctx: Annotated[Ctx, Depends(requires("retention.policy.default", "retention.manage"))]
) -> PolicyView:
    """Make this the policy new cameras get; cameras already added keep theirs."""
    ctx.hint(object_id=f"policy:{name[:64]}")
    with ctx.db.session() as s:
        return _view(ctx, s, policies.set_default(s, change(ctx), name))


@router.put("/cameras/{camera_id}/policy")
def assign_policy(
    camera_id: str,
    body: AssignBody,
    ctx: Annotated[Ctx, Depends(requires("retention.policy.assign", "retention.manage"))],
) -> CameraPolicy:
    """Put the camera on a policy. One keeping footage longer extends ``retain_until`` of its existing segments."""
    ctx.hint(object_id=f"policy:{body.policy[:64]}")
    with ctx.db.session() as s:
        saved = policies.assign(s, change(ctx, body.acknowledge_capacity_warning), camera_id, body.policy)
        return CameraPolicy(
            camera=camera_id,
            policy=_view(ctx, s, saved.policy),
            extended_segments=saved.extended_segments,
            capacity_warnings=warnings_view(saved.warnings),
        )
